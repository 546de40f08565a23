"""The one path every UCE node takes: texts -> rows -> closed-form solve -> patched MODEL clone."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Union

import comfy.model_management
import comfy.utils
import torch

from .. import uce_solver
from . import model_weights, presets, text_rows
from .preserve_set import preserve_set
from .report import EditReport

EFFECT_SAMPLE_ROWS = 512


@dataclass(frozen=True)
class ErasePlan:
    """Erase: each (concept prompt, guide prompt) pair; the guide "" is the unconditional prompt."""

    pairs: list[tuple[str, str]]
    label: str = "erase"

    def texts(self) -> list[str]:
        return [t for pair in self.pairs for t in pair]

    def build(self, encoded, mode: str) -> uce_solver.EditRows:
        return uce_solver.erase_edit([(encoded[c], encoded[g]) for c, g in self.pairs], mode)


@dataclass(frozen=True)
class DebiasPlan:
    """Debias: each (prompt, attribute prompts) item, with one weight per attribute."""

    items: list[tuple[str, list[str]]]
    weights: list[float]
    label: str = "debias"

    def texts(self) -> list[str]:
        return [t for prompt, attrs in self.items for t in (prompt, *attrs)]

    def build(self, encoded, mode: str) -> uce_solver.EditRows:
        items = [(encoded[p], [encoded[a] for a in attrs]) for p, attrs in self.items]
        return uce_solver.debias_edit(items, self.weights, mode)


Plan = Union[ErasePlan, DebiasPlan]


@dataclass(frozen=True)
class EditSettings:
    preserve: list[str]
    token_mode: str = "paper"
    projections: str = "keys+values"
    scales: uce_solver.Scales = field(default_factory=uce_solver.Scales)
    strength: float = 1.0

    def __post_init__(self):
        uce_solver.check_token_mode(self.token_mode)
        if self.projections not in model_weights.PROJECTIONS:
            raise ValueError(
                f"unknown projections {self.projections!r}; expected one of {', '.join(model_weights.PROJECTIONS)}"
            )
        self.scales.check()

    @classmethod
    def from_widgets(
        cls,
        preserve: list[str],
        edited: list[str],
        auto_preserve_scale: Callable[[int], float],
        erase_scale: float = 1.0,
        preserve_scale: float = -1.0,
        lamb: float = 0.5,
        **rest,
    ) -> "EditSettings":
        """Settings from a node's widgets (``rest``: token_mode, projections, strength).

        The unconditional prompt is always preserved and nothing edited ever is; a negative
        ``preserve_scale`` means automatic: ``auto_preserve_scale(number of preserve prompts)``.
        """
        preserve = presets.without(preserve + [""], edited)
        if preserve_scale < 0:
            preserve_scale = auto_preserve_scale(len(preserve))
        return cls(
            preserve=preserve,
            scales=uce_solver.Scales(erase=erase_scale, preserve=preserve_scale, lamb=lamb),
            **rest,
        )


def run_edit(model, clip, plan: Plan, settings: EditSettings) -> tuple[object, EditReport]:
    """Solve ``plan`` for ``model`` with texts encoded by ``clip``; return (edited MODEL clone, report)."""
    started = time.perf_counter()
    keys = model_weights.cross_attention_keys(model, settings.projections)
    width = model_weights.input_width(model, keys)
    edit_texts = list(dict.fromkeys(plan.texts()))
    _check_clip_width(clip, width, model)
    text_rows.check_prompts(clip, edit_texts + settings.preserve)  # a too-long prompt fails before any encoding

    progress = comfy.utils.ProgressBar(len(edit_texts) + len(settings.preserve) + len(keys))

    def step(offset):
        def report_progress(done, total):
            comfy.model_management.throw_exception_if_processing_interrupted()
            progress.update_absolute(offset + done)

        return report_progress

    encoded = text_rows.encode_prompts(clip, edit_texts, progress=step(0))
    device = _solve_device()
    edit = plan.build(encoded, settings.token_mode).to(device)
    preserved = preserve_set(
        clip, settings.preserve, settings.token_mode, width, device, EFFECT_SAMPLE_ROWS, step(len(edit_texts))
    )
    encoded_at = time.perf_counter()

    weights = model_weights.EffectiveWeights(model, keys, device)
    solution = uce_solver.solve(
        weights,
        edit,
        preserved.gram,
        settings.scales,
        step(len(edit_texts) + len(settings.preserve)),
        out_device=model.offload_device,
        out_dtype=model_weights.patch_dtype(model, keys),
    )
    deltas = solution.deltas
    solved_at = time.perf_counter()

    # Measured on the patches as stored, so the report describes what sampling will use.
    effect = uce_solver.measure_effect(
        weights, deltas, edit.sample_blocks(EFFECT_SAMPLE_ROWS), preserved.sample, settings.strength
    )
    measured_at = time.perf_counter()
    edited = model_weights.patched_clone(model, deltas, settings.strength)
    patched_at = time.perf_counter()
    report = EditReport(
        label=plan.label,
        family=model_weights.model_family(model),
        blocks=len(edit.block_texts),
        edit_rows=solution.edit_rows,
        preserve_prompts=len(settings.preserve),
        preserve_rows=solution.preserve_rows,
        token_mode=settings.token_mode,
        layers=len(keys),
        low_rank_layers=sum(isinstance(d, uce_solver.LowRankDelta) for d in deltas.values()),
        patch_bytes=uce_solver.storage_bytes(deltas.values()),
        device=str(device),
        encode_seconds=encoded_at - started,
        solve_seconds=solved_at - encoded_at,
        measure_seconds=measured_at - solved_at,
        patch_seconds=patched_at - measured_at,
        total_seconds=patched_at - started,
        strength=settings.strength,
        effect=effect,
    )
    return edited, report


def _solve_device() -> torch.device:
    """ComfyUI's device when it computes in float64 (the Gram and its factorisation need it), else the CPU.

    Apple's MPS, for one, has no float64; there the solve runs on the CPU.
    """
    device = comfy.model_management.get_torch_device()
    try:
        probe = torch.eye(2, dtype=torch.float64, device=device)
        torch.linalg.cholesky_ex(probe @ probe)
    except (TypeError, RuntimeError, NotImplementedError):
        return torch.device("cpu")
    return device


def _check_clip_width(clip, width: int, model) -> None:
    """Compare the CLIP's conditioning width with the width the MODEL's cross-attention reads."""
    clip_width = text_rows.conditioning_width(clip)
    if clip_width != width:
        raise ValueError(
            f"the CLIP gives {clip_width}-wide text conditioning but this {model_weights.model_family(model)} MODEL's "
            f"cross-attention expects {width}: the CLIP does not match the MODEL (for example an SD1.5 CLIP "
            "wired into an SDXL model); connect the CLIP loaded with this MODEL"
        )
