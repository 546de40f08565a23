"""The short text report every UCE node returns beside its MODEL."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

from ..uce_solver import EditEffect


@dataclass(frozen=True)
class GroupResult:
    """One solved group of weights (e.g. the cross-attention K/V, or Flux's txt_in)."""

    label: str
    weights: int
    low_rank: int
    blocks: int  # edited prompts
    edit_rows: int
    preserve_rows: int
    effect: EditEffect
    solve_seconds: float
    measure_seconds: float
    map_label: str = ""  # the family-table map it belongs to, when a map is solved per source layer
    layers: int = 1  # source layers merged into this result (see by_map)
    attack_residuals: tuple[float, ...] = ()  # hardening: before the first round, then after each round
    null_space: Optional[tuple[int, int, float]] = None  # null-space mode: (directions, width, preserve energy in them)
    prior: Optional[tuple[int, int, int]] = None  # prior filtering/augmentation: (prompts, kept, rows added)
    paper_effect: Optional[EditEffect] = None  # null-space mode: the same edit's effect with UCE's preserve term alone


def by_map(groups) -> list[GroupResult]:
    """Results of one map solved per source layer (HiDream: 32 Llama layers) merged into one: weights
    summed, target gaps combined over all layers like the layers of one solve, the worst preserve shift."""
    merged: list[GroupResult] = []
    for group in groups:
        last = merged[-1] if merged else None
        if not group.map_label or last is None or last.map_label != group.map_label:
            merged.append(replace(group, label=group.map_label or group.label))
            continue
        a, b = last.effect, group.effect
        shifts = [x for x in (a.preserve_shift, b.preserve_shift) if x is not None]
        effect = EditEffect(
            target_gap_before=math.hypot(a.target_gap_before, b.target_gap_before),
            target_gap_after=math.hypot(a.target_gap_after, b.target_gap_after),
            preserve_shift=max(shifts) if shifts else None,
            edit_rows=a.edit_rows,
            preserve_rows=a.preserve_rows,
        )
        merged[-1] = replace(
            last,
            weights=last.weights + group.weights,
            low_rank=last.low_rank + group.low_rank,
            effect=effect,
            solve_seconds=last.solve_seconds + group.solve_seconds,
            measure_seconds=last.measure_seconds + group.measure_seconds,
            layers=last.layers + 1,
        )
    return merged


@dataclass(frozen=True)
class EditReport:
    label: str
    family: str  # the model's ComfyUI config class
    family_name: str  # the pack's family entry
    blocks: int
    preserve_prompts: int
    token_mode: str
    groups: tuple[GroupResult, ...]
    patch_bytes: int
    device: str
    encode_seconds: float
    solve_seconds: float
    measure_seconds: float
    patch_seconds: float
    total_seconds: float
    strength: float
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # shown first: results the user should look at before using the model

    def text(self) -> str:
        groups = by_map(self.groups)
        main, *others = groups
        more_edit = "".join(f" + {g.edit_rows} {g.label} rows{_per_layer(g)}" for g in others)
        more_kept = "".join(f" + {g.preserve_rows} {g.label} rows{_per_layer(g)}" for g in others)
        weights = ", ".join(
            f"{g.weights} {g.label}{_layers(g)} ({g.low_rank} low-rank + {g.weights - g.low_rank} dense)" for g in groups
        )
        lines = [
            *self.warnings,
            f"UCE {self.label} on {self.family} ({self.family_name}): {_count(self.blocks, 'edited prompt')}, "
            f"{main.edit_rows} rows{_per_layer(main)}{more_edit} ({self.token_mode} token mode)",
            f"preserve: {_count(self.preserve_prompts, 'prompt')}, {main.preserve_rows} rows{_per_layer(main)}{more_kept}",
            f"weights: {weights}, patch {size_text(self.patch_bytes)}",
            f"device: {self.device}; encode {self.encode_seconds:.2f} s, solve {self.solve_seconds:.2f} s, "
            f"measure {self.measure_seconds:.2f} s, patch {self.patch_seconds:.2f} s, total {self.total_seconds:.2f} s",
        ]
        for group in groups:
            effect = group.effect
            lines.append(
                f"effect at strength {self.strength:g} on the {group.label} outputs ({effect.edit_rows} edited rows "
                f"measured{_per_layer(group)}): {100 * effect.target_gap_remaining:.1f}% of the distance to the targets "
                "remains"
            )
            if effect.preserve_shift is not None:
                worst = f", the most in any of its {group.layers} layers" if group.layers > 1 else ""
                lines.append(
                    f"preserved rows moved by {100 * effect.preserve_shift:.2f}% of their {group.label} output norm "
                    f"({effect.preserve_rows} rows measured{worst})"
                )
            if group.null_space is not None:
                directions, width, energy = group.null_space
                lines.append(
                    f"null space: the {group.label} update uses {directions} of {width} input directions, which hold "
                    f"{100 * energy:.3g}% of the preserve rows' energy (the unconditional prompt's rows kept exactly)"
                )
            if group.paper_effect is not None:
                paper = group.paper_effect
                moved = "" if paper.preserve_shift is None else f", preserved rows moved by {100 * paper.preserve_shift:.2f}%"
                lines.append(
                    f"without the null space (UCE's preserve term alone, no hardening) the {group.label} edit would "
                    f"leave {100 * paper.target_gap_remaining:.1f}% of the distance to the targets{moved}"
                )
            if group.prior is not None:
                prompts, kept, added = group.prior
                lines.append(
                    f"null space of the {group.label} from {kept} of {prompts} preserve prompts (those the edit "
                    f"would move more than average, if filtered) and {added} perturbed copies of their rows"
                )
            if group.attack_residuals:
                rounds = " -> ".join(f"{100 * r:.1f}%" for r in group.attack_residuals)
                lines.append(
                    f"hardening on the {group.label}: the best adversarial input reproduces the concept's original "
                    f"outputs within {rounds} (plain edit -> after each round; larger = more robust)"
                )
        lines.extend(self.notes)
        return "\n".join(lines)


def _layers(group: GroupResult) -> str:
    return f" on {group.layers} source layers" if group.layers > 1 else ""


def _per_layer(group: GroupResult) -> str:
    return " per layer" if group.layers > 1 else ""


def size_text(nbytes: float) -> str:
    """A byte count in KiB, MiB or GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 2**10:.1f} KiB"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
