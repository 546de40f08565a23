"""The one path every UCE node takes: texts -> rows -> closed-form solve -> patched MODEL clone."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Union

import comfy.model_management
import psutil
import torch

from .. import uce_solver
from . import edit_record, families, model_weights, presets, text_cache, text_rows
from .edit_record import EditRecord
from .preserve_set import preserve_sets
from .progress import EditProgress
from .report import EditReport, GroupResult, size_text

EFFECT_SAMPLE_ROWS = 512
EDIT_MEMORY_FRACTION = 0.5
# Preserved prompts' outputs moved by more than this fraction of their norm: flagged in the report and
# on the node; by more than the limit: refused (the preserved prompts would no longer be what they were).
PRESERVE_SHIFT_WARNING = 0.25
PRESERVE_SHIFT_LIMIT = 1.0
PRESERVATION_MODES = ("paper", "null_space")


@dataclass(frozen=True)
class ErasePlan:
    """Erase: each (concept prompt, guide prompt) pair; the guide "" is the unconditional prompt."""

    pairs: list[tuple[str, str]]
    label: str = "erase"
    origins: dict = field(default_factory=dict)  # prompt -> how a template made it, for error messages

    def origin(self, text: str) -> str:
        return self.origins.get(text, "")

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
    origins: dict = field(default_factory=dict)

    def origin(self, text: str) -> str:
        return self.origins.get(text, "")

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
    pooled: str = "auto"  # edit the pooled-text weights: auto (the family's default), on, off
    preservation: str = "paper"  # paper: UCE's preserve term; null_space: the update also kept off the preserve rows
    null_space_threshold: float = 0.01
    hardening: uce_solver.Hardening = field(default_factory=lambda: uce_solver.Hardening(0, 1e-3))
    prior_filtering: bool = False  # null_space: only the preserve prompts the edit would move more than average
    prior_augmentation: int = 0  # null_space: perturbed copies of each kept preserve row

    def __post_init__(self):
        uce_solver.check_token_mode(self.token_mode)
        if self.projections not in model_weights.PROJECTIONS:
            raise ValueError(
                f"unknown projections {self.projections!r}; expected one of {', '.join(model_weights.PROJECTIONS)}"
            )
        if self.pooled not in model_weights.POOLED_CHOICES:
            raise ValueError(f"unknown pooled {self.pooled!r}; expected one of {', '.join(model_weights.POOLED_CHOICES)}")
        self.scales.check()
        if self.preservation not in PRESERVATION_MODES:
            raise ValueError(f"unknown preservation {self.preservation!r}; expected one of {', '.join(PRESERVATION_MODES)}")
        if not 0 < self.null_space_threshold < 1:
            raise ValueError(
                f"null_space_threshold must be between 0 and 1 (exclusive), got {self.null_space_threshold}"
            )
        self.hardening.check()
        if not 0 <= self.prior_augmentation <= uce_solver.prior.MAX_AUGMENTATION:
            raise ValueError(
                f"prior_augmentation must be 0 to {uce_solver.prior.MAX_AUGMENTATION} copies, got {self.prior_augmentation}"
            )
        if self.preservation == "null_space" and not any(text for text in self.preserve):
            raise ValueError(
                "preservation null_space keeps the update off the preserve prompts' directions, but the preserve "
                "list is empty: write prompts to keep in preserve (one per line) or set preserve_preset to captions"
            )
        if self.prior_options().active and self.preservation != "null_space":
            raise ValueError(
                "prior_filtering and prior_augmentation choose the rows that define the null space: set "
                "preservation to null_space, or turn them off"
            )

    def prior_options(self) -> uce_solver.PriorOptions:
        return uce_solver.PriorOptions(filtering=self.prior_filtering, augmentation=self.prior_augmentation)

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
        """Settings from a node's widgets (``rest``: token_mode, projections, strength, pooled).

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


def run_edit(model, clip, plan: Plan, settings: EditSettings) -> tuple[object, EditReport, EditRecord]:
    """Solve ``plan`` for ``model`` with texts encoded by ``clip``; return (edited MODEL clone, report, the
    edit as data).

    One solve per group of text-reading weights of the model's family (e.g. Flux:
    txt_in on the T5 rows, vector_in on the pooled vector), all from one encoding
    of the prompts. Every phase reports progress and stops when the user interrupts.
    """
    started = time.perf_counter()
    family = model_weights.family_of(model)
    pooled = family.pooled_default if settings.pooled == "auto" else settings.pooled == "on"
    device = _solve_device()
    groups = model_weights.text_map_groups(model, family, settings.projections, pooled, device)
    edit_texts = list(dict.fromkeys(plan.texts()))
    if settings.hardening.rounds and not isinstance(plan, ErasePlan):
        raise ValueError("hardening rounds apply to erase and moderate edits, not to debias")
    if settings.preservation == "null_space" and "" not in edit_texts:
        edit_texts.append("")  # its rows are kept exactly (the invariant of the null-space mode)
    _check_clip(clip, family, groups, model)

    checked = len(dict.fromkeys(edit_texts + settings.preserve))
    weight_count = sum(len(group.keys) for group in groups)
    encode_steps = len(edit_texts) + len(settings.preserve)
    progress = EditProgress(checked + encode_steps + weight_count)
    # a bad prompt fails before any encoding
    text_rows.check_prompts(
        clip, edit_texts + settings.preserve, family, progress=progress.phase(0, "checking prompts"), origin=plan.origin
    )

    needs_pooled = any(group.pooled for group in groups)
    encoded = {}
    edit_rows = text_rows.iter_encoded(
        clip, edit_texts, progress.phase(checked, "encoding edited prompts"), family=family, pooled=needs_pooled
    )
    for item in edit_rows:
        if not encoded:
            _check_edit_memory(item, len(edit_texts))
        encoded[item.text] = item
    preserved = preserve_sets(
        clip, family, groups, settings.preserve, settings.token_mode, device, EFFECT_SAMPLE_ROWS,
        progress.phase(checked + len(edit_texts), "encoding preserve prompts"),
    )
    encoded_at = time.perf_counter()

    deltas: dict = {}
    results = []
    done = checked + encode_steps

    def preserve_prompts():  # the preserve prompts again, one by one (from the text cache when they fit in it)
        again = progress.phase(None, "null space: reading the preserve prompts again")
        return text_rows.iter_encoded(clip, settings.preserve, again, family=family, pooled=needs_pooled)

    for group, kept in zip(groups, preserved):
        group_deltas, result = _solve_group(
            model, group, plan, encoded, kept, settings, device, progress.phase(done), preserve_prompts
        )
        done += len(group.keys)
        deltas.update(group_deltas)
        results.append(result)
    warnings = _check_results(results, plan)
    for warning in warnings:
        progress.say(warning)
    patch_started = time.perf_counter()
    edited = model_weights.patched_clone(model, deltas, settings.strength)
    patched_at = time.perf_counter()
    report = EditReport(
        label=plan.label,
        family=model_weights.model_family(model),
        family_name=family.name,
        blocks=results[0].blocks,
        preserve_prompts=len(settings.preserve),
        token_mode=settings.token_mode,
        groups=tuple(results),
        patch_bytes=uce_solver.storage_bytes(deltas.values()),
        device=str(device),
        encode_seconds=encoded_at - started,
        solve_seconds=sum(r.solve_seconds for r in results),
        measure_seconds=sum(r.measure_seconds for r in results),
        patch_seconds=patched_at - patch_started,
        total_seconds=patched_at - started,
        strength=settings.strength,
        notes=tuple(_notes(family, settings, pooled, groups)),
        warnings=tuple(warnings),
    )
    base = edit_record.weights_fingerprint(model_weights.base_weights(model, deltas))
    record = EditRecord(
        deltas=deltas,
        strength=settings.strength,
        family=family.name,
        model_class=report.family,
        description=edit_record.describe(plan, settings, family.name, base, pooled),
    )
    return edited, report, record


def edit_memory_budget() -> int:
    """Bytes the edited prompts' rows may take: UCE_EDIT_MEMORY_MB, else half the memory free now."""
    configured = os.environ.get("UCE_EDIT_MEMORY_MB")
    if configured:
        return int(float(configured) * 2**20)
    return int(psutil.virtual_memory().available * EDIT_MEMORY_FRACTION)


def _check_edit_memory(first, count: int) -> None:
    """Refuse, before encoding the rest, an edit whose rows would not fit in memory.

    The edited prompts' rows are all held for the solve (once as encoded, once as
    the edit's rows); the preserve prompts stream into their Gram matrix instead.
    """
    per_prompt = text_cache.nbytes(first)
    needed = 2 * per_prompt * count
    budget = edit_memory_budget()
    if needed > budget:
        raise ValueError(
            f"this edit has {count:,} prompts (concepts x templates, with their guides) whose rows need about "
            f"{size_text(needed)} of memory ({size_text(per_prompt)} each, held for the solve), more than "
            f"the {size_text(budget)} this edit may use (half the free memory, or UCE_EDIT_MEMORY_MB): edit "
            "fewer concepts per node (chain several UCE nodes) or turn expand_prompts / use_templates off"
        )


def _check_results(results, plan: Plan) -> list[str]:
    """Refuse a solve that would break the model; return warnings for one that moves preserved prompts a lot."""
    warnings = []
    what = "attribute_weights or erase_scale" if isinstance(plan, DebiasPlan) else "erase_scale"
    for result in results:
        effect = result.effect
        values = (effect.target_gap_before, effect.target_gap_after, effect.preserve_shift or 0.0)
        if not all(math.isfinite(v) for v in values):
            raise uce_solver.NonFiniteEditError(
                f"the edit of the {result.label} gives NaN or infinite outputs: lower {what}, or raise lamb"
            )
        shift = effect.preserve_shift
        if shift is None or shift <= PRESERVE_SHIFT_WARNING:
            continue
        message = (
            f"the edit moves the preserved prompts' {result.label} outputs by {100 * shift:,.0f}% of their norm"
        )
        if shift > PRESERVE_SHIFT_LIMIT:
            raise ValueError(
                f"{message}: it would break what it should keep (more than {100 * PRESERVE_SHIFT_LIMIT:.0f}%); "
                f"lower {what} or strength, or raise preserve_scale or lamb"
            )
        warnings.append(f"WARNING: {message}; the model may change beyond the edited concepts (lower {what})")
    return warnings


def _solve_group(model, group, plan: Plan, encoded, kept, settings: EditSettings, device, progress, preserve_prompts):
    """One group's closed form and its measured effect: (deltas as patches of the whole weights, GroupResult)."""
    started = time.perf_counter()
    rows = {text: group.rows_of(e) for text, e in encoded.items()}
    edit = plan.build(rows, settings.token_mode).to(device)
    weights = group.weights(model, device)
    space = prior = None
    augmented = settings.preservation == "null_space" and settings.prior_augmentation > 0
    # sum W0^T W0 over the weights, read by hardening and by prior augmentation: computed once for both
    sums = uce_solver.robust.WeightSums(weights, device) if settings.hardening.rounds or augmented else None
    if settings.preservation == "null_space":
        space, prior = _null_space(group, weights, edit, rows[""], kept, settings, preserve_prompts, sums)
    hardened = uce_solver.harden(
        weights,
        edit,
        kept.gram,
        settings.scales,
        settings.hardening,
        projector=None if space is None else space.projector,
        out_device=model.offload_device,
        out_dtype=model_weights.patch_dtype(model, group.keys),
        progress=progress,
        sums=sums,
    ) if settings.hardening.rounds else None
    if hardened is not None:
        solution = hardened.solution
    else:
        solution = uce_solver.solve(
            weights,
            edit,
            kept.gram,
            settings.scales,
            progress,
            out_device=model.offload_device,
            out_dtype=model_weights.patch_dtype(model, group.keys),
            projector=None if space is None else space.projector,
        )
    solved_at = time.perf_counter()
    # Measured on the patches as stored, so the report describes what sampling will use.
    measured_rows = edit.sample_blocks(EFFECT_SAMPLE_ROWS)
    effect = uce_solver.measure_effect(weights, solution.deltas, measured_rows, kept.sample, settings.strength)
    paper_effect = None
    if space is not None:  # side by side in the report: the same edit with UCE's preserve term alone
        paper = uce_solver.solve(weights, edit, kept.gram, settings.scales)
        paper_effect = uce_solver.measure_effect(weights, paper.deltas, measured_rows, kept.sample, settings.strength)
    result = GroupResult(
        label=group.label,
        weights=len(group.keys),
        low_rank=sum(isinstance(d, uce_solver.LowRankDelta) for d in solution.deltas.values()),
        blocks=len(edit.block_texts),
        edit_rows=solution.edit_rows,
        preserve_rows=solution.preserve_rows,
        effect=effect,
        solve_seconds=solved_at - started,
        measure_seconds=time.perf_counter() - solved_at,
        map_label=group.text_map.label if group.layer is not None else "",
        attack_residuals=() if hardened is None else hardened.residuals,
        null_space=None if space is None else (space.directions, edit.width, space.energy),
        prior=None if prior is None else (prior.prompts, prior.kept, prior.augmented_rows),
        paper_effect=paper_effect,
    )
    return group.full_size(solution.deltas), result


def _null_space(group, weights, edit, unconditional, kept, settings: EditSettings, preserve_prompts, sums):
    """The null space of the preserve rows, minus the unconditional prompt's rows: (NullSpace, PriorSpace or None)."""
    invariant = uce_solver.preserve_rows(unconditional, settings.token_mode).to(edit.inputs.device)
    options = settings.prior_options()
    if not options.active:
        return uce_solver.null_space(kept.gram.gram, settings.null_space_threshold, invariant), None
    prompt_rows = (uce_solver.preserve_rows(group.rows_of(e), settings.token_mode) for e in preserve_prompts())
    prior = uce_solver.prior_null_space(
        weights, edit, kept.gram.gram, kept.gram.rows, prompt_rows, options, settings.null_space_threshold,
        settings.scales, invariant, sums,
    )
    return prior.space, prior


def _notes(family, settings: EditSettings, pooled: bool, groups) -> list[str]:
    """What the report should say about options that had no effect on this family."""
    notes = []
    if settings.pooled == "on" and not family.has_pooled:
        notes.append(f"pooled: {family.name} has no pooled text input; nothing more was edited")
    has_kv = any(group.text_map.per_block_kv for group in groups)
    if settings.projections != "keys+values" and not has_kv:
        maps = ", ".join(dict.fromkeys(g.text_map.label for g in groups))
        notes.append(
            f"projections: {family.name} reads text through {maps}, not per-block keys/values; it was edited as a whole"
        )
    return notes


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


def _check_clip(clip, family, groups, model) -> None:
    """Refuse a CLIP that does not match the MODEL: by the widths its weights read, then by its text encoders."""
    widths = text_rows.encoder_widths(clip)
    encoders = text_rows.clip_encoders(clip)
    hint = (
        f"(this CLIP has {families.describe_encoders(encoders)}; for example an SD1.5 CLIP wired into an SDXL "
        "model); connect the CLIP loaded with this MODEL"
    )
    needed = [(group, source, width) for group in groups for source, width in group.encoder_widths()]
    for group, source, width in sorted(needed, key=lambda item: item[1] != families.COND):  # the conditioning first
        got = widths.get(source)
        what = {families.COND: "text conditioning", families.POOLED: "pooled text vector"}.get(source, f"{source} output")
        if got != width:
            got_text = "no" if got is None else f"{got}-wide"
            raise ValueError(
                f"the CLIP gives {got_text} {what} but this {model_weights.model_family(model)} MODEL's "
                f"{group.label} expects {width}: the CLIP does not match the MODEL {hint}"
            )
    if family.encoders is not None and encoders != family.encoders:
        raise ValueError(
            f"this CLIP has the text encoders {families.describe_encoders(encoders)} but this "
            f"{model_weights.model_family(model)} MODEL is {family.name}, which reads "
            f"{families.describe_encoders(family.encoders)}: the CLIP does not match the MODEL; connect the CLIP "
            f"loaded with this MODEL"
        )
