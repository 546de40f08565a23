"""Which preserve rows define the null space (after SPEED, Li et al. 2025): prior filtering and augmentation.

The null-space mode (:func:`uce_solver.null_space`) keeps the update off every direction the
preserve rows use. Two refinements change that row set, never the preserve term of the solve:

- *filtering*: only the preserve prompts that the unconstrained update (the edit solved with no
  preserve term) would move more than the average preserve row are kept, so prompts the edit does
  not touch anyway stop taking directions away from it;
- *augmentation*: each kept row also adds perturbed copies of itself, moved along the edited
  weights' weakest input directions (where the original outputs barely change), so preservation
  covers the neighbourhood of each prompt and not only the prompt itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from .edits import EditRows
from .robust import NullSpace, WeightSums, null_space, update_gram
from .solver import Scales, solve

MAX_AUGMENTATION = 16


@dataclass(frozen=True)
class PriorOptions:
    """``filtering``: keep only the preserve prompts the unconstrained update moves more than average.
    ``augmentation``: perturbed copies per kept row (0 = none), each ``scale`` times the row's norm away."""

    filtering: bool = False
    augmentation: int = 0
    scale: float = 0.1
    seed: int = 0

    @property
    def active(self) -> bool:
        return self.filtering or self.augmentation > 0

    def check(self) -> None:
        if not 0 <= self.augmentation <= MAX_AUGMENTATION:
            raise ValueError(f"prior augmentation must be 0 to {MAX_AUGMENTATION} copies per row, got {self.augmentation}")
        if not self.scale > 0:
            raise ValueError(f"the prior augmentation scale must be above 0, got {self.scale}")


@dataclass(frozen=True)
class PriorSpace:
    """The null space built from the refined preserve set, and what the refinement kept."""

    space: NullSpace
    prompts: int  # preserve prompts seen
    kept: int  # of them, kept by the filter
    augmented_rows: int  # perturbed copies added


def influence(square: torch.Tensor, rows: torch.Tensor) -> float:
    """Mean over ``rows`` of sum_l ||ΔW_l p||^2, with ``square`` = :func:`uce_solver.robust.update_gram`."""
    p = rows.to(square.device, torch.float64)
    return float(((p @ square) * p).sum() / max(1, p.shape[0]))


def weak_directions(weight_gram: torch.Tensor, fraction: float) -> torch.Tensor:
    """[d, k] orthonormal eigenvectors of sum W0^T W0 with the smallest eigenvalues, as many as together
    hold at most ``fraction`` of its trace (at least one): the inputs the weights barely read."""
    values, vectors = torch.linalg.eigh((weight_gram + weight_gram.T).to(torch.float64) / 2)
    cumulative = values.clamp_min(0).cumsum(0)
    count = max(1, int((cumulative <= fraction * cumulative[-1]).sum()))
    return vectors[:, :count]


def augmented_rows(
    rows: torch.Tensor, directions: torch.Tensor, copies: int, scale: float, generator: torch.Generator
) -> torch.Tensor:
    """``copies`` perturbed versions of each row, [copies * n, d]: p + scale ||p|| u with u a random unit
    vector in the span of ``directions``."""
    p = rows.to(directions.device, torch.float64)
    noise = torch.randn(copies, p.shape[0], directions.shape[1], generator=generator, dtype=torch.float64)
    u = noise.to(directions.device) @ directions.T
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return (p + scale * p.norm(dim=-1, keepdim=True) * u).reshape(-1, p.shape[1])


def prior_null_space(
    weights: Mapping[str, torch.Tensor],
    edit: EditRows,
    preserve_gram: torch.Tensor,
    preserve_row_count: int,
    prompt_rows: Iterable[torch.Tensor],
    options: PriorOptions,
    threshold: float,
    scales: Scales,
    invariant_rows: torch.Tensor | None = None,
    sums: WeightSums | None = None,
) -> PriorSpace:
    """The null space of the preserve prompts in ``prompt_rows`` (each a [rows, d] tensor, streamed),
    filtered and augmented as ``options`` say. ``preserve_gram`` and ``preserve_row_count`` describe all
    of them: the average influence comes from them, before the stream, and ``threshold`` is a fraction of
    their energy, so that filtering can only free directions and augmentation only take them away.
    ``sums``: the weights' :class:`uce_solver.robust.WeightSums` if already computed."""
    options.check()
    device = edit.inputs.device
    gram = preserve_gram.to(device, torch.float64)
    square = average = directions = generator = None
    if options.filtering:
        unconstrained = solve(weights, edit, None, Scales(erase=scales.erase, preserve=0.0, lamb=scales.lamb))
        square = update_gram(unconstrained.deltas, edit.width, device)
        average = float((square * gram).sum()) / max(1, preserve_row_count)  # trace(S G) / rows
    if options.augmentation:
        directions = weak_directions((sums or WeightSums(weights, device)).base, threshold)
        generator = torch.Generator().manual_seed(options.seed)
    kept_gram = torch.zeros(edit.width, edit.width, dtype=torch.float64, device=device)
    prompts = kept = added = 0
    for rows in prompt_rows:
        prompts += 1
        if options.filtering and influence(square, rows) <= average:
            continue
        kept += 1
        p = rows.to(device, torch.float64)
        kept_gram.addmm_(p.T, p)
        if options.augmentation:
            copies = augmented_rows(p, directions, options.augmentation, options.scale, generator)
            kept_gram.addmm_(copies.T, copies)
            added += copies.shape[0]
    return PriorSpace(null_space(kept_gram, threshold, invariant_rows, reference_gram=gram), prompts, kept, added)
