"""Encoded prompts and token selection (which conditioning rows an edit uses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

TOKEN_MODES = ("paper", "last_token")


@dataclass(frozen=True)
class EncodedPrompt:
    """One prompt as the UNet sees it: one 77-slot chunk of text conditioning.

    ``rows[i]`` is the vector the cross-attention K/V projections receive for
    slot ``i`` ([BOS, t1 … tn, EOS, pad …]); ``last`` is the slot of the last
    real token ``n`` (0 for an empty prompt, i.e. the BOS slot).
    """

    text: str
    rows: torch.Tensor
    last: int

    def __post_init__(self):
        if self.rows.ndim != 2:
            raise ValueError(f"prompt {self.text!r}: rows must be [slots, width], got {tuple(self.rows.shape)}")
        if not 0 <= self.last < self.rows.shape[0] - 1:
            raise ValueError(
                f"prompt {self.text!r}: last token slot {self.last} does not leave room for EOS "
                f"in {self.rows.shape[0]} slots"
            )

    @property
    def slots(self) -> int:
        return self.rows.shape[0]


def check_token_mode(mode: str) -> str:
    if mode not in TOKEN_MODES:
        raise ValueError(f"unknown token mode {mode!r}; expected one of {', '.join(TOKEN_MODES)}")
    return mode


def aligned_rows(prompts: Sequence[EncodedPrompt], mode: str) -> list[torch.Tensor]:
    """Rows of prompts that are edited together, aligned one-to-one.

    ``paper``: with f the largest last-token slot among the prompts, prompt x
    contributes rows [n_x, slots - (f - n_x)): its last real token, EOS and the
    padding, all of equal length slots - f.
    ``last_token``: each prompt contributes its single row at slot n_x.
    """
    check_token_mode(mode)
    slots = {p.slots for p in prompts}
    if len(slots) != 1:
        raise ValueError(f"prompts edited together must have the same number of slots, got {sorted(slots)}")
    if mode == "last_token":
        return [p.rows[p.last : p.last + 1] for p in prompts]
    (n_slots,) = slots
    farthest = max(p.last for p in prompts)
    return [p.rows[p.last : n_slots - (farthest - p.last)] for p in prompts]


def preserve_rows(prompt: EncodedPrompt, mode: str) -> torch.Tensor:
    """Rows of a prompt whose outputs must not change: all slots (paper) or slot n."""
    check_token_mode(mode)
    if mode == "last_token":
        return prompt.rows[prompt.last : prompt.last + 1]
    return prompt.rows
