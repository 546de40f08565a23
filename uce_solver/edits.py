"""What an edit asks for: input rows c_i and the rule that gives their targets v*_i.

Targets depend on the weight being edited, so a rule turns a stack of weights
into the residual ``V* - W0 C`` (one row per edit row, one column per output
channel of the stacked layers). Everything the closed form needs beyond that is
in :mod:`uce_solver.solver`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

from .prompts import EncodedPrompt, aligned_rows


@dataclass(frozen=True)
class GuideTargets:
    """Erase by replacement: v*_i = W0 g_i, the output of the aligned guide row."""

    guide_rows: torch.Tensor  # [m, d]

    def residual(self, inputs: torch.Tensor, stacked_weights: torch.Tensor, layer_bounds) -> torch.Tensor:
        """V* - W0 C for every stacked layer at once: (G - C) W0^T, [m, sum d_out]."""
        direction = self.guide_rows.to(stacked_weights.dtype) - inputs.to(stacked_weights.dtype)
        return direction @ stacked_weights.T

    def select_blocks(self, blocks: list[int], rows: torch.Tensor) -> "GuideTargets":
        return GuideTargets(self.guide_rows[rows])

    def to(self, device) -> "GuideTargets":
        return GuideTargets(self.guide_rows.to(device))


@dataclass(frozen=True)
class DebiasTargets:
    """Debias: per layer and per aligned block, v* = o + sum_a w_a ||o||_F u_a.

    o = W c (the block's own outputs), u_a = W c_a / ||W c_a||_F (attribute a's
    outputs over the same aligned rows, normalised over the block).
    """

    attribute_rows: torch.Tensor  # [n_attributes, m, d], aligned with the edit rows
    weights: torch.Tensor  # [n_blocks, n_attributes]
    block_of_row: torch.Tensor  # [m] long, block index of each edit row

    def residual(self, inputs: torch.Tensor, stacked_weights: torch.Tensor, layer_bounds) -> torch.Tensor:
        """V* - W0 C = sum_a w_a ||o|| / ||W c_a|| * W c_a, for every stacked layer at once."""
        dtype = stacked_weights.dtype
        n_blocks = self.weights.shape[0]
        outputs = inputs.to(dtype) @ stacked_weights.T
        output_norms = _block_layer_norms(outputs, self.block_of_row, n_blocks, layer_bounds)
        residual = torch.zeros_like(outputs)
        column_layer = _column_layer_index(layer_bounds, outputs.device)
        for a in range(self.attribute_rows.shape[0]):
            attribute_outputs = self.attribute_rows[a].to(dtype) @ stacked_weights.T
            attribute_norms = _block_layer_norms(attribute_outputs, self.block_of_row, n_blocks, layer_bounds)
            scale = self.weights[:, a : a + 1].to(outputs.device, dtype) * output_norms / attribute_norms.clamp_min(1e-30)
            residual += scale[self.block_of_row][:, column_layer] * attribute_outputs
        return residual

    def select_blocks(self, blocks: list[int], rows: torch.Tensor) -> "DebiasTargets":
        renumber = torch.full((self.weights.shape[0],), -1, dtype=torch.long, device=self.block_of_row.device)
        renumber[torch.tensor(blocks, device=renumber.device)] = torch.arange(len(blocks), device=renumber.device)
        return DebiasTargets(
            self.attribute_rows[:, rows],
            self.weights[torch.tensor(blocks, device=self.weights.device)],
            renumber[self.block_of_row[rows]],
        )

    def to(self, device) -> "DebiasTargets":
        return DebiasTargets(self.attribute_rows.to(device), self.weights.to(device), self.block_of_row.to(device))


TargetRule = Union[GuideTargets, DebiasTargets]


@dataclass(frozen=True)
class EditRows:
    """Edit input rows C ([m, d]) with their target rule and block layout.

    Block b covers rows ``block_starts[b]:block_starts[b+1]``; one block is one
    edited prompt (with its guide or attribute prompts aligned to it).
    """

    inputs: torch.Tensor
    targets: TargetRule
    block_texts: tuple[str, ...]
    block_sizes: tuple[int, ...]

    @property
    def width(self) -> int:
        return self.inputs.shape[1]

    @property
    def count(self) -> int:
        return self.inputs.shape[0]

    def to(self, device) -> "EditRows":
        """The same edit with its tensors on ``device``."""
        return EditRows(self.inputs.to(device), self.targets.to(device), self.block_texts, self.block_sizes)

    def sample_blocks(self, max_rows: int) -> "EditRows":
        """Whole blocks spread evenly over the edit, about ``max_rows`` rows (at least one block)."""
        if self.count <= max_rows:
            return self
        n_blocks = len(self.block_sizes)
        n_keep = max(1, min(n_blocks, max_rows // max(self.block_sizes)))
        chosen = sorted({round(i * (n_blocks - 1) / max(1, n_keep - 1)) for i in range(n_keep)})
        starts = [0]
        for size in self.block_sizes:
            starts.append(starts[-1] + size)
        rows = torch.cat([torch.arange(starts[b], starts[b + 1]) for b in chosen]).to(self.inputs.device)
        return EditRows(
            self.inputs[rows],
            self.targets.select_blocks(chosen, rows),
            tuple(self.block_texts[b] for b in chosen),
            tuple(self.block_sizes[b] for b in chosen),
        )


def erase_edit(pairs: Sequence[tuple[EncodedPrompt, EncodedPrompt]], mode: str) -> EditRows:
    """Erase each concept prompt toward its guide prompt (``replace``: v* = W0 c_guide)."""
    if not pairs:
        raise ValueError("an erase edit needs at least one concept")
    inputs, guides, sizes = [], [], []
    for concept, guide in pairs:
        concept_rows, guide_rows = aligned_rows([concept, guide], mode)
        inputs.append(concept_rows)
        guides.append(guide_rows)
        sizes.append(concept_rows.shape[0])
    return EditRows(
        torch.cat(inputs),
        GuideTargets(torch.cat(guides)),
        tuple(concept.text for concept, _ in pairs),
        tuple(sizes),
    )


def debias_edit(
    items: Sequence[tuple[EncodedPrompt, Sequence[EncodedPrompt]]],
    attribute_weights: Sequence[Sequence[float]] | Sequence[float],
    mode: str,
) -> EditRows:
    """Debias each prompt toward its attribute prompts with weights w_a.

    ``items`` pairs every edited prompt with its attribute prompts (same count
    and order for all items). ``attribute_weights`` is one list of weights
    shared by all items, or one list per item.
    """
    if not items:
        raise ValueError("a debias edit needs at least one prompt")
    n_attributes = len(items[0][1])
    if n_attributes == 0 or any(len(attrs) != n_attributes for _, attrs in items):
        raise ValueError("every debiased prompt needs the same, non-zero number of attribute prompts")
    weights = torch.as_tensor(attribute_weights, dtype=torch.float64)
    if weights.ndim == 1:
        weights = weights.expand(len(items), -1)
    if weights.shape != (len(items), n_attributes):
        raise ValueError(
            f"attribute weights must have {n_attributes} values (one per attribute), got shape {tuple(weights.shape)}"
        )
    inputs, attributes, sizes = [], [], []
    for prompt, attrs in items:
        rows = aligned_rows([prompt, *attrs], mode)
        inputs.append(rows[0])
        attributes.append(torch.stack(rows[1:]))
        sizes.append(rows[0].shape[0])
    block_of_row = torch.repeat_interleave(torch.arange(len(items)), torch.tensor(sizes))
    return EditRows(
        torch.cat(inputs),
        DebiasTargets(torch.cat(attributes, dim=1), weights, block_of_row.to(inputs[0].device)),
        tuple(prompt.text for prompt, _ in items),
        tuple(sizes),
    )


def _column_layer_index(layer_bounds, device) -> torch.Tensor:
    """Layer index of every column of a stacked output ([sum d_out] long)."""
    sizes = torch.tensor([end - start for start, end in layer_bounds])
    return torch.repeat_interleave(torch.arange(len(layer_bounds)), sizes).to(device)


def _block_layer_norms(outputs: torch.Tensor, block_of_row: torch.Tensor, n_blocks: int, layer_bounds) -> torch.Tensor:
    """Frobenius norm of each (block of rows, layer's columns) tile: [n_blocks, n_layers]."""
    squares = torch.zeros(n_blocks, outputs.shape[1], dtype=outputs.dtype, device=outputs.device)
    squares.index_add_(0, block_of_row.to(outputs.device), outputs.square())
    per_layer = torch.stack([squares[:, start:end].sum(dim=1) for start, end in layer_bounds], dim=1)
    return per_layer.sqrt()
