"""Unified Concept Editing (Gandikota et al., WACV 2024) in pure torch.

Build an edit from encoded prompts (:func:`erase_edit`, :func:`debias_edit`),
then :func:`solve` it for every cross-attention K/V weight at once. No ComfyUI
import anywhere in this package.
"""

from .deltas import Delta, DenseDelta, LowRankDelta, prefers_low_rank, storage_bytes
from .edits import DebiasTargets, EditRows, GuideTargets, debias_edit, erase_edit
from .effect import EditEffect, measure_effect
from .prompts import (
    TOKEN_MODES,
    EncodedPrompt,
    Segment,
    aligned_rows,
    check_token_mode,
    preserve_rows,
)
from .prior import PriorOptions, PriorSpace, prior_null_space
from .robust import (
    HardenedSolution,
    Hardening,
    NullSpace,
    adversarial_rows,
    attack_residual,
    harden,
    null_space,
)
from .solver import GramAccumulator, NonFiniteEditError, Scales, Solution, solve

__all__ = [
    "TOKEN_MODES",
    "DebiasTargets",
    "Delta",
    "DenseDelta",
    "EditEffect",
    "EditRows",
    "EncodedPrompt",
    "GramAccumulator",
    "GuideTargets",
    "HardenedSolution",
    "Hardening",
    "LowRankDelta",
    "NonFiniteEditError",
    "NullSpace",
    "Scales",
    "PriorOptions",
    "PriorSpace",
    "Segment",
    "Solution",
    "adversarial_rows",
    "aligned_rows",
    "attack_residual",
    "check_token_mode",
    "debias_edit",
    "erase_edit",
    "harden",
    "measure_effect",
    "null_space",
    "prefers_low_rank",
    "preserve_rows",
    "prior_null_space",
    "solve",
    "storage_bytes",
]
