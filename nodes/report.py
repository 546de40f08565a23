"""The short text report every UCE node returns beside its MODEL."""

from __future__ import annotations

from dataclasses import dataclass

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

    def text(self) -> str:
        main, *others = self.groups
        more_edit = "".join(f" + {g.edit_rows} {g.label} rows" for g in others)
        more_kept = "".join(f" + {g.preserve_rows} {g.label} rows" for g in others)
        weights = ", ".join(f"{g.weights} {g.label} ({g.low_rank} low-rank + {g.weights - g.low_rank} dense)" for g in self.groups)
        lines = [
            f"UCE {self.label} on {self.family} ({self.family_name}): {_count(self.blocks, 'edited prompt')}, "
            f"{main.edit_rows} rows{more_edit} ({self.token_mode} token mode)",
            f"preserve: {_count(self.preserve_prompts, 'prompt')}, {main.preserve_rows} rows{more_kept}",
            f"weights: {weights}, patch {_size(self.patch_bytes)}",
            f"device: {self.device}; encode {self.encode_seconds:.2f} s, solve {self.solve_seconds:.2f} s, "
            f"measure {self.measure_seconds:.2f} s, patch {self.patch_seconds:.2f} s, total {self.total_seconds:.2f} s",
        ]
        for group in self.groups:
            effect = group.effect
            lines.append(
                f"effect at strength {self.strength:g} on the {group.label} outputs ({effect.edit_rows} edited rows "
                f"measured): {100 * effect.target_gap_remaining:.1f}% of the distance to the targets remains"
            )
            if effect.preserve_shift is not None:
                lines.append(
                    f"preserved rows moved by {100 * effect.preserve_shift:.2f}% of their {group.label} output norm "
                    f"({effect.preserve_rows} rows measured)"
                )
        lines.extend(self.notes)
        return "\n".join(lines)


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
