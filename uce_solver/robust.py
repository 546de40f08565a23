"""Beyond the paper, still in closed form: updates confined to the preserve rows' null space (after
SPEED, Li et al. 2025) and hardening against embeddings that still regenerate an erased concept
(after RECE, Gong et al., ECCV 2024).

Both go through :func:`uce_solver.solve`: the null space as its ``projector``, hardening as repeated
solves with more edit rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .deltas import Delta, LowRankDelta
from .edits import EditRows, GuideTargets
from .solver import PreserveRows, Scales, Solution, _preserve_gram, solve, weight_shapes

# Singular values of the invariant rows' projection below this fraction of the largest one are noise.
INVARIANT_RANK_TOLERANCE = 1e-10


@dataclass(frozen=True)
class NullSpace:
    """An orthogonal projector P ([d, d], float64) onto the directions the update may use.

    ``directions``: rank of P. ``energy``: the fraction of the preserve rows' energy (sum of squared
    norms) that lies in P's range (at most the threshold), so that ||ΔW P_rows||_F^2 <= ||ΔW||_2^2 *
    energy * total energy for any update with ΔW = ΔW P: the preserved outputs' drift is bounded by it.
    """

    projector: torch.Tensor
    directions: int
    energy: float


def null_space(
    preserve_gram: torch.Tensor,
    threshold: float,
    invariant_rows: torch.Tensor | None = None,
    reference_gram: torch.Tensor | None = None,
) -> NullSpace:
    """The approximate null space of the preserve rows: the eigenvectors of their Gram matrix sum p p^T
    with the smallest eigenvalues, as many as together hold at most ``threshold`` (in (0, 1)) of the
    rows' energy (its trace), minus the span of ``invariant_rows`` (e.g. the unconditional prompt's
    rows), whose outputs then stay exactly as they were.

    ``reference_gram`` (default: ``preserve_gram``) sets the energy budget and the reported energy: a
    refined preserve set (:mod:`uce_solver.prior`) is measured against all preserve rows.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"the null-space threshold must be between 0 and 1 (exclusive), got {threshold}")
    gram = _symmetric(preserve_gram)
    reference = gram if reference_gram is None else _symmetric(reference_gram.to(gram.device))
    total = float(reference.diagonal().sum())
    values, vectors = torch.linalg.eigh(gram)
    free = int((values.clamp_min(0).cumsum(0) <= threshold * total).sum())
    basis = vectors[:, :free]
    projector = basis @ basis.T
    if invariant_rows is not None and invariant_rows.numel():
        spanned = projector @ invariant_rows.to(gram.device, torch.float64).T
        left, singular, _ = torch.linalg.svd(spanned, full_matrices=False)
        if singular.numel() and singular[0] > 0:
            kept = left[:, singular > singular[0] * INVARIANT_RANK_TOLERANCE]
            projector = projector - kept @ kept.T
    energy = float((projector * reference).sum() / total) if total > 0 else 0.0
    return NullSpace(projector, round(float(projector.diagonal().sum())), max(0.0, energy))


def _symmetric(gram: torch.Tensor) -> torch.Tensor:
    gram = gram.to(torch.float64)
    return (gram + gram.T) / 2


@dataclass(frozen=True)
class Hardening:
    """RECE-style rounds: ``rounds`` re-solves, adversarial embeddings regularised by ``lamb`` (λ_adv)."""

    rounds: int
    lamb: float

    def check(self) -> None:
        if self.rounds < 0:
            raise ValueError(f"hardening rounds must be 0 or more, got {self.rounds}")
        if not self.lamb > 0:
            raise ValueError(f"the hardening regulariser (lambda_adv) must be above 0, got {self.lamb}")


@dataclass(frozen=True)
class HardenedSolution:
    """The final solution and the attack residual before the first round and after each round."""

    solution: Solution
    residuals: tuple[float, ...]


class WeightSums:
    """Sums over the edited maps of W0^T W0, and for an update of W'^T W0 and W'^T W' (W' = W0 + ΔW), float64."""

    def __init__(self, weights: Mapping[str, torch.Tensor], device):
        self.weights = weights
        self.device = device
        width = next(iter(weight_shapes(weights).values()))[1]
        self.base = torch.zeros(width, width, dtype=torch.float64, device=device)
        for key in weight_shapes(weights):
            w = weights[key].to(device, torch.float64)
            self.base.addmm_(w.T, w)

    def edited(self, deltas: Mapping[str, Delta]) -> EditedSums:
        """Sums of W'^T W0 and W'^T W' for ``deltas``."""
        mixed = torch.zeros_like(self.base)  # sum ΔW^T W0
        for key, delta in deltas.items():
            w = self.weights[key].to(self.device, torch.float64)
            if isinstance(delta, LowRankDelta):
                up, down = delta.up.to(self.device, torch.float64), delta.down.to(self.device, torch.float64)
                mixed.addmm_(down.T, up.T @ w)
            else:
                mixed.addmm_(delta.dense().to(self.device, torch.float64).T, w)
        square = update_gram(deltas, len(self.base), self.device)
        return EditedSums(self.base, self.base + mixed, self.base + mixed + mixed.T + square)


def update_gram(deltas: Mapping[str, Delta], width: int, device) -> torch.Tensor:
    """sum_l ΔW_l^T ΔW_l (float64), so that sum_l ||ΔW_l p||^2 = p^T (this) p."""
    total = torch.zeros(width, width, dtype=torch.float64, device=device)
    for delta in deltas.values():
        if isinstance(delta, LowRankDelta):
            up, down = delta.up.to(device, torch.float64), delta.down.to(device, torch.float64)
            total.addmm_(down.T, (up.T @ up) @ down)
        else:
            d = delta.dense().to(device, torch.float64)
            total.addmm_(d.T, d)
    return total


@dataclass(frozen=True)
class EditedSums:
    """For one update, over the edited maps: ``base`` = sum W0^T W0, ``cross`` = sum W'^T W0, ``square`` = sum W'^T W'."""

    base: torch.Tensor
    cross: torch.Tensor
    square: torch.Tensor


def adversarial_rows(sums: EditedSums, concept: torch.Tensor, lamb: float) -> torch.Tensor:
    """RECE's closed-form embedding per concept row c: c' = (sum W'^T W' + λ_adv I)^-1 sum W'^T W0 c,
    the input that makes the edited maps reproduce the concept's original outputs best."""
    square = sums.square + lamb * torch.eye(len(sums.square), dtype=sums.square.dtype, device=sums.square.device)
    rows = concept.to(square.device, torch.float64)
    return torch.linalg.solve(square, sums.cross @ rows.T).T


def attack_residual(sums: EditedSums, concept: torch.Tensor, adversarial: torch.Tensor) -> float:
    """sqrt(sum_l ||W'_l c' - W0_l c||^2 / sum_l ||W0_l c||^2) over all rows: how far the best adversarial
    embedding stays from the concept's original outputs (larger = more robust)."""
    c = concept.to(sums.base.device, torch.float64)
    a = adversarial.to(sums.base.device, torch.float64)
    original = ((c @ sums.base) * c).sum()
    error = ((a @ sums.square) * a).sum() - 2 * ((a @ sums.cross) * c).sum() + original
    return float((error.clamp_min(0) / original).sqrt()) if original > 0 else 0.0


def harden(
    weights: Mapping[str, torch.Tensor],
    edit: EditRows,
    preserve: PreserveRows,
    scales: Scales,
    hardening: Hardening,
    projector: torch.Tensor | None = None,
    out_device=None,
    out_dtype: torch.dtype | None = None,
    progress=None,
    sums: WeightSums | None = None,
) -> HardenedSolution:
    """Solve ``edit``, then ``hardening.rounds`` times: find each concept row's adversarial embedding
    for the current update, send it to the same guide target, and solve again from the original
    weights with every row so far (and the same preserve rows). Erase edits only. ``sums``: the
    weights' :class:`WeightSums` if already computed.
    """
    hardening.check()
    if not isinstance(edit.targets, GuideTargets):
        raise ValueError("hardening applies to erase and moderate edits (targets given by a guide), not to debias")
    device = edit.inputs.device
    preserved = _preserve_gram(preserve, edit.width, device)
    sums = sums or WeightSums(weights, device)
    current = edit
    residuals = []
    for round_index in range(hardening.rounds + 1):
        last = round_index == hardening.rounds
        solution = solve(
            weights,
            current,
            preserved,
            scales,
            progress=progress if last else None,
            out_device=out_device if last else None,
            out_dtype=out_dtype if last else None,
            projector=projector,
        )
        edited = sums.edited(solution.deltas)
        adversarial = adversarial_rows(edited, edit.inputs, hardening.lamb)
        residuals.append(attack_residual(edited, edit.inputs, adversarial))
        if last:
            return HardenedSolution(solution, tuple(residuals))
        current = EditRows(
            torch.cat([current.inputs, adversarial.to(edit.inputs.dtype)]),
            GuideTargets(torch.cat([current.targets.guide_rows, edit.targets.guide_rows])),
            current.block_texts + tuple(f"{text} (adversarial, round {round_index + 1})" for text in edit.block_texts),
            current.block_sizes + edit.block_sizes,
        )
