"""How an edit acts in attention space: do edited rows reach their targets, do preserved rows stay?"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from .deltas import Delta, LowRankDelta
from .edits import EditRows


@dataclass(frozen=True)
class EditEffect:
    """Norms summed over all edited layers (Frobenius, then root of the sum of squares).

    ``target_gap_*``: ||W C - V*|| before and after the edit for the measured edit rows.
    ``preserve_shift``: ||s ΔW P|| / ||W0 P|| for the measured preserve rows.
    """

    target_gap_before: float
    target_gap_after: float
    preserve_shift: Optional[float]
    edit_rows: int
    preserve_rows: int

    @property
    def target_gap_remaining(self) -> float:
        """Fraction of the distance to the targets that is left (0 = exactly on target)."""
        if self.target_gap_before == 0:
            return 0.0
        return self.target_gap_after / self.target_gap_before


def measure_effect(
    weights: Mapping[str, torch.Tensor],
    deltas: Mapping[str, Delta],
    edit: EditRows,
    preserve_rows: Optional[torch.Tensor] = None,
    strength: float = 1.0,
) -> EditEffect:
    """Measure the edit on the given rows (pass a sample for large edits: the cost is linear in rows)."""
    device = edit.inputs.device
    dtype = torch.float64 if edit.inputs.dtype == torch.float64 else torch.float32
    inputs = edit.inputs.to(dtype)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # before, after, moved, reference
    has_preserve = preserve_rows is not None and preserve_rows.shape[0] > 0
    rows = preserve_rows.to(device, dtype) if has_preserve else None
    for key, delta in deltas.items():
        w0 = weights[key].to(device, dtype)
        residual = edit.targets.residual(inputs, w0, [(0, w0.shape[0])])
        sums[0] += residual.square().sum()
        sums[1] += (residual - strength * _apply(delta, inputs)).square().sum()
        if has_preserve:
            sums[2] += (strength * _apply(delta, rows)).square().sum()
            sums[3] += (rows @ w0.T).square().sum()
    before, after, moved, reference = sums.tolist()  # one device sync for the whole measurement
    shift = None
    if has_preserve:
        shift = math.sqrt(moved / reference) if reference > 0 else 0.0
    return EditEffect(
        target_gap_before=math.sqrt(before),
        target_gap_after=math.sqrt(after),
        preserve_shift=shift,
        edit_rows=edit.count,
        preserve_rows=rows.shape[0] if has_preserve else 0,
    )


def _apply(delta: Delta, rows: torch.Tensor) -> torch.Tensor:
    """rows @ ΔW^T without forming a dense ΔW for low-rank deltas."""
    if isinstance(delta, LowRankDelta):
        return (rows @ delta.down.to(rows.device, rows.dtype).T) @ delta.up.to(rows.device, rows.dtype).T
    return rows @ delta.delta.to(rows.device, rows.dtype).T
