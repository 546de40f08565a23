"""The short text report every UCE node returns beside its MODEL."""

from __future__ import annotations

from dataclasses import dataclass

from ..uce_solver import EditEffect


@dataclass(frozen=True)
class EditReport:
    label: str
    family: str
    blocks: int
    edit_rows: int
    preserve_prompts: int
    preserve_rows: int
    token_mode: str
    layers: int
    low_rank_layers: int
    patch_bytes: int
    device: str
    encode_seconds: float
    solve_seconds: float
    measure_seconds: float
    patch_seconds: float
    total_seconds: float
    strength: float
    effect: EditEffect

    def text(self) -> str:
        effect = self.effect
        lines = [
            f"UCE {self.label} on {self.family}: {_count(self.blocks, 'edited prompt')}, {self.edit_rows} rows "
            f"({self.token_mode} token mode)",
            f"preserve: {_count(self.preserve_prompts, 'prompt')}, {self.preserve_rows} rows",
            f"layers: {self.layers} K/V matrices, {self.low_rank_layers} low-rank + "
            f"{self.layers - self.low_rank_layers} dense, patch {self.patch_bytes / 2**20:.1f} MiB",
            f"device: {self.device}; encode {self.encode_seconds:.2f} s, solve {self.solve_seconds:.2f} s, "
            f"measure {self.measure_seconds:.2f} s, patch {self.patch_seconds:.2f} s, total {self.total_seconds:.2f} s",
            f"effect at strength {self.strength:g} (attention space, {effect.edit_rows} edited rows measured): "
            f"{100 * effect.target_gap_remaining:.1f}% of the distance to the targets remains",
        ]
        if effect.preserve_shift is not None:
            lines.append(
                f"preserved rows moved by {100 * effect.preserve_shift:.2f}% of their output norm "
                f"({effect.preserve_rows} rows measured)"
            )
        return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
