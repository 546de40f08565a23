"""Unified Concept Editing (Gandikota et al., WACV 2024) in pure torch.

Build an edit from encoded prompts (:func:`erase_edit`, :func:`debias_edit`),
then :func:`solve` it for every cross-attention K/V weight at once. No ComfyUI
import anywhere in this package.
"""

from .deltas import Delta, DenseDelta, LowRankDelta, prefers_low_rank, storage_bytes
from .edits import DebiasTargets, EditRows, GuideTargets, debias_edit, erase_edit
from .effect import EditEffect, measure_effect
from .prompts import TOKEN_MODES, EncodedPrompt, Segment, aligned_rows, check_token_mode, preserve_rows
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
    "LowRankDelta",
    "NonFiniteEditError",
    "Scales",
    "Segment",
    "Solution",
    "aligned_rows",
    "check_token_mode",
    "debias_edit",
    "erase_edit",
    "measure_effect",
    "preserve_rows",
    "prefers_low_rank",
    "solve",
    "storage_bytes",
]
