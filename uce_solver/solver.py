"""The UCE closed form, computed once per input width for every layer.

For one weight W0 (d_out x d), edit rows C (columns c_i), targets V* and
preserve rows P, the method minimises

    s_e sum_E ||W c_i - v*_i||^2 + s_p sum_P ||W c_j - W0 c_j||^2 + lamb ||W - W0||_F^2

whose solution is W = W0 + ΔW with

    ΔW = s_e (V* - W0 C) C^T M^-1,    M = lamb I + s_e C C^T + s_p P P^T.

M does not depend on W0, so it is accumulated (float64) and factorised
(Cholesky) once; ``down = s_e C^T M^-1`` is shared by every layer and each
layer only needs ``up = V* - W0 C``. For erasing by replacement V* = W0 G, so
ΔW = W0 A with one d x d matrix A = (G - C)^T down for all layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Union

import torch

from .deltas import Delta, DenseDelta, LowRankDelta, prefers_low_rank
from .edits import EditRows, GuideTargets

PreserveRows = Union[torch.Tensor, Iterable[torch.Tensor], "GramAccumulator", None]
Progress = Callable[[int, int], None]

GRAM_CHUNK_ROWS = 8192
# Upper bound on the elements of one stacked-weight product, to keep memory flat.
GROUP_ELEMENTS = 1 << 25


class NonFiniteEditError(ValueError):
    """The solve produced NaN or infinite values."""


@dataclass(frozen=True)
class Scales:
    """Objective weights: s_e (erase), s_p (preserve) and lamb (stay near W0)."""

    erase: float = 1.0
    preserve: float = 1.0
    lamb: float = 0.5

    def check(self) -> None:
        if not all(math.isfinite(value) for value in (self.erase, self.preserve, self.lamb)):
            raise ValueError(f"scales must be finite numbers, got {self}")
        if not self.lamb > 0:
            raise ValueError(f"lamb must be > 0 (it keeps M invertible), got {self.lamb}")
        if self.erase < 0 or self.preserve < 0:
            raise ValueError(f"erase and preserve scales must be >= 0, got {self.erase} and {self.preserve}")


@dataclass(frozen=True)
class Solution:
    """The per-layer updates and what went into them."""

    deltas: dict[str, Delta]
    edit_rows: int
    preserve_rows: int


class GramAccumulator:
    """Streams rows into sum r r^T, accumulated in float64, so memory does not grow with the row count.

    ``chunk_dtype`` is the precision of each chunk's product (float64 by default;
    float32 is faster on most hardware and is measured by the benchmark).
    """

    def __init__(self, width: int, device, chunk_dtype: torch.dtype = torch.float64):
        self.gram = torch.zeros(width, width, dtype=torch.float64, device=device)
        self.chunk_dtype = chunk_dtype
        self.rows = 0

    def add(self, rows: torch.Tensor) -> None:
        if rows.ndim != 2 or rows.shape[1] != self.gram.shape[0]:
            raise ValueError(f"rows of width {self.gram.shape[0]} expected, got shape {tuple(rows.shape)}")
        for start in range(0, rows.shape[0], GRAM_CHUNK_ROWS):
            chunk = rows[start : start + GRAM_CHUNK_ROWS].to(self.gram.device, self.chunk_dtype)
            if not torch.isfinite(chunk).all():
                raise NonFiniteEditError("preserve rows contain NaN or infinite values")
            if self.chunk_dtype == torch.float64:
                self.gram.addmm_(chunk.T, chunk)
            else:
                self.gram += (chunk.T @ chunk).double()
            self.rows += chunk.shape[0]


def _preserve_gram(preserve: PreserveRows, width: int, device) -> GramAccumulator:
    """Sum of p p^T over all preserve rows (a tensor, an iterable of row chunks, or already accumulated)."""
    if isinstance(preserve, GramAccumulator):
        if preserve.gram.shape[0] != width:
            raise ValueError(f"preserve rows have width {preserve.gram.shape[0]}, the edit rows {width}")
        return preserve
    acc = GramAccumulator(width, device)
    if preserve is None:
        return acc
    for chunk in [preserve] if isinstance(preserve, torch.Tensor) else preserve:
        acc.add(chunk)
    return acc


def solve(
    weights: Mapping[str, torch.Tensor],
    edit: EditRows,
    preserve: PreserveRows = None,
    scales: Scales = Scales(),
    progress: Progress | None = None,
    out_device: str | torch.device | None = None,
    out_dtype: torch.dtype | None = None,
    projector: torch.Tensor | None = None,
) -> Solution:
    """Closed-form UCE update for every weight in ``weights`` (key -> W0, [d_out, d]).

    Runs on the device of ``edit.inputs``; weights are moved there one layer
    group at a time. ``weights`` may be a lazy mapping that computes each
    weight on access: give it a ``shapes`` attribute (key -> (d_out, d)) so
    that planning materialises nothing. Deltas come back in float64 if the edit
    rows are float64, else float32 (or ``out_dtype``), low-rank or dense per layer, whichever is
    smaller. ``progress(done, total)`` is called after each layer group (it may
    raise to interrupt). With ``out_device`` / ``out_dtype`` each group's deltas
    are handed there as soon as they are made (e.g. ComfyUI's offload device in
    the patch dtype), so the solving device never holds more than one group of
    them; the finiteness check runs after that cast.

    With ``projector`` (a [d, d] orthogonal projector P, see :mod:`uce_solver.robust`) the same
    objective is minimised over updates whose rows lie in P's range (ΔW = ΔW P):
    ΔW = s_e (V* - W0 C) (C P)^T N^-1 with N = λ I + P (s_e C C^T + s_p P P^T) P.
    """
    scales.check()
    shapes = weight_shapes(weights)
    _check_shapes(shapes, edit.width)
    if not torch.isfinite(edit.inputs).all():
        raise NonFiniteEditError("edit rows contain NaN or infinite values")
    device = edit.inputs.device
    dtype = torch.float64 if edit.inputs.dtype == torch.float64 else torch.float32

    preserved = _preserve_gram(preserve, edit.width, device)
    low_rank = {key: prefers_low_rank(edit.count, *shape) for key, shape in shapes.items()}
    # Dense erase updates by replacement: W0 A (solving for A costs d right-hand sides) when the
    # edit has at least d rows, else (V* - W0 C)^T down (m right-hand sides).
    use_map = isinstance(edit.targets, GuideTargets) and not all(low_rank.values()) and edit.count >= edit.width
    need_down = any(low_rank.values()) or not use_map
    down, direction_map = _shared_factors(
        edit, preserved.gram, scales, need_down=need_down, need_map=use_map, projector=projector
    )
    down_c = None if down is None else down.to(dtype)
    map_c = None if direction_map is None else direction_map.to(dtype)
    out_dtype = out_dtype or dtype
    down_out = None if down_c is None else down_c.to(device=out_device, dtype=out_dtype)  # shared by every low-rank delta

    def hand_off(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=out_device, dtype=out_dtype)

    deltas: dict[str, Delta] = {}
    keys = list(shapes)
    for group in _layer_groups(keys, shapes, edit.count):
        stacked = torch.cat([weights[k].to(device, dtype) for k in group])
        bounds = _bounds([shapes[k][0] for k in group])
        residual = None
        if map_c is None or any(low_rank[k] for k in group):
            residual = edit.targets.residual(edit.inputs, stacked, bounds)
        for key, (start, end) in zip(group, bounds):
            if low_rank[key]:
                delta: Delta = LowRankDelta(hand_off(residual[:, start:end].T.contiguous()), down_out)
            elif map_c is not None:
                delta = DenseDelta(hand_off(stacked[start:end] @ map_c))
            else:
                delta = DenseDelta(hand_off(residual[:, start:end].T @ down_c))
            deltas[key] = delta
        _check_finite(group, deltas)
        if progress is not None:
            progress(len(deltas), len(keys))
    return Solution(
        deltas=deltas,
        edit_rows=edit.count,
        preserve_rows=preserved.rows,
    )


def _shared_factors(
    edit: EditRows,
    preserve_sum: torch.Tensor,
    scales: Scales,
    need_down: bool,
    need_map: bool,
    projector: torch.Tensor | None = None,
):
    """The layer-independent factors, in float64, from one Cholesky factorisation of M.

    ``down = s_e C^T M^-1`` ([m, d]) for low-rank and generic dense updates, and for
    replacement erasing A = (G - C)^T down = s_e ((G - C)^T C) M^-1 ([d, d]),
    computed with d right-hand sides instead of m (cheaper when m > d). The Gram
    products run over chunks of rows, so only ``down`` needs all m rows in float64
    (and it is only asked for when m is small enough for low-rank patches). With a projector P, C is
    replaced by C P in M and ``down``, and A by s_e ((G - C)^T C P) N^-1.
    """
    width = edit.width
    device = edit.inputs.device
    edit_gram = torch.zeros(width, width, dtype=torch.float64, device=device)
    cross = torch.zeros(width, width, dtype=torch.float64, device=device) if need_map else None  # G^T C
    for start in range(0, edit.count, GRAM_CHUNK_ROWS):
        chunk = edit.inputs[start : start + GRAM_CHUNK_ROWS].to(torch.float64)
        edit_gram.addmm_(chunk.T, chunk)
        if cross is not None:
            guide = edit.targets.guide_rows[start : start + GRAM_CHUNK_ROWS].to(device, torch.float64)
            cross.addmm_(guide.T, chunk)
    projected_edit_gram = edit_gram
    preserve_sum = preserve_sum.to(device)
    if projector is not None:
        projector = projector.to(device, torch.float64)
        projected_edit_gram = projector @ edit_gram @ projector
        preserve_sum = projector @ preserve_sum @ projector
    m_matrix = scales.preserve * preserve_sum
    m_matrix.add_(projected_edit_gram, alpha=scales.erase)
    m_matrix.diagonal().add_(scales.lamb)
    factor, info = torch.linalg.cholesky_ex(m_matrix)
    if info.item() != 0:
        raise NonFiniteEditError(
            "the normal matrix M = lamb I + s_e CC^T + s_p PP^T is not positive definite; "
            "check that lamb > 0 and the text rows are finite"
        )
    down = direction_map = None
    if need_down:
        inputs = edit.inputs.to(torch.float64)
        if projector is not None:
            inputs = inputs @ projector
        down = torch.cholesky_solve(inputs.T.contiguous(), factor).T.mul_(scales.erase)
    if need_map:
        cross.sub_(edit_gram)  # (G - C)^T C
        if projector is not None:
            cross = cross @ projector
        direction_map = torch.cholesky_solve(cross.T.contiguous(), factor).T.mul_(scales.erase)
    for name, factor_matrix in (("down", down), ("A", direction_map)):
        if factor_matrix is not None and not torch.isfinite(factor_matrix).all():
            raise NonFiniteEditError(f"solving with M gave NaN or infinite values ({name})")
    return down, direction_map


def weight_shapes(weights: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Shapes of the weights, from a lazy mapping's ``shapes`` if it has one (nothing is computed)."""
    shapes = getattr(weights, "shapes", None)
    if shapes is None:
        shapes = {key: w.shape for key, w in weights.items()}
    return {key: tuple(shape) for key, shape in shapes.items()}


def _check_shapes(shapes: Mapping[str, tuple[int, ...]], width: int) -> None:
    if not shapes:
        raise ValueError("no weights to edit")
    for key, shape in shapes.items():
        if len(shape) != 2:
            raise ValueError(f"{key}: expected a [d_out, d] weight, got shape {shape}")
        if shape[1] != width:
            raise ValueError(f"{key}: input width {shape[1]} does not match the text rows' width {width}")


def _layer_groups(keys: list[str], shapes: Mapping[str, tuple[int, ...]], rank: int) -> list[list[str]]:
    """Consecutive layers whose stacked products stay under GROUP_ELEMENTS elements."""
    groups: list[list[str]] = []
    current: list[str] = []
    columns = 0
    for key in keys:
        d_out, d = shapes[key]
        if current and (columns + d_out) * max(rank, d) > GROUP_ELEMENTS:
            groups.append(current)
            current, columns = [], 0
        current.append(key)
        columns += d_out
    if current:
        groups.append(current)
    return groups


def _bounds(sizes: list[int]) -> list[tuple[int, int]]:
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


def _check_finite(keys: list[str], deltas: Mapping[str, Delta]) -> None:
    for key in keys:
        if not all(torch.isfinite(t).all() for t in deltas[key].tensors()):
            raise NonFiniteEditError(f"the update for {key} has NaN or infinite values")
