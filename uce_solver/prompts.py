"""Encoded prompts and token selection (which conditioning rows an edit uses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

TOKEN_MODES = ("paper", "last_token")


@dataclass(frozen=True)
class Segment:
    """Rows ``start:stop`` of a prompt that one text encoder produced.

    ``last`` is the index, within the segment, of the last content token
    (e.g. CLIP: the slot before EOS; an empty CLIP prompt has 0, its BOS).
    -1 means the segment has no content row at all (an empty prompt of an
    encoder without BOS, such as T5); its first row (EOS or the template's
    first suffix token) then stands in for the last content token.
    """

    start: int
    stop: int
    last: int

    @property
    def length(self) -> int:
        return self.stop - self.start


class EncodedPrompt:
    """One prompt as the model sees it: the text rows its text-reading weights receive.

    ``rows[i]`` is the vector those weights read at position ``i``. The rows are
    made of one or more segments, one per text encoder whose output the model
    reads in sequence (SD3: 77 CLIP rows, then the T5 rows). Build it with
    ``EncodedPrompt(text, rows, last)`` for a single segment (CLIP: 77 slots
    [BOS, t1 … tn, EOS, pad …] with ``last`` = n) or with ``segments``.
    """

    __slots__ = ("text", "rows", "segments")

    def __init__(self, text: str, rows: torch.Tensor, last: Optional[int] = None, segments: Sequence[Segment] = ()):
        if rows.ndim != 2:
            raise ValueError(f"prompt {text!r}: rows must be [slots, width], got {tuple(rows.shape)}")
        if (last is None) == (not segments):
            raise ValueError(f"prompt {text!r}: give either the last-token slot or the segments")
        segments = tuple(segments) or (Segment(0, rows.shape[0], last),)
        if segments[0].start != 0 or segments[-1].stop != rows.shape[0] or any(
            a.stop != b.start for a, b in zip(segments, segments[1:])
        ):
            raise ValueError(f"prompt {text!r}: segments {segments} do not tile its {rows.shape[0]} rows")
        for segment in segments:
            if not -1 <= segment.last < segment.length:
                raise ValueError(
                    f"prompt {text!r}: last token {segment.last} lies outside its segment of {segment.length} rows"
                )
        self.text = text
        self.rows = rows
        self.segments = segments

    @property
    def slots(self) -> int:
        return self.rows.shape[0]

    @property
    def last(self) -> int:
        """The last content token of a single-segment prompt."""
        if len(self.segments) != 1:
            raise ValueError(f"prompt {self.text!r} has {len(self.segments)} segments; use .segments")
        return self.segments[0].last

    def with_rows(self, rows: torch.Tensor) -> "EncodedPrompt":
        """The same prompt (text, segments) with other rows, e.g. after a normalisation the model applies."""
        return EncodedPrompt(self.text, rows, segments=self.segments)

    def __repr__(self) -> str:
        return f"EncodedPrompt({self.text!r}, rows={tuple(self.rows.shape)}, segments={self.segments})"


def check_token_mode(mode: str) -> str:
    if mode not in TOKEN_MODES:
        raise ValueError(f"unknown token mode {mode!r}; expected one of {', '.join(TOKEN_MODES)}")
    return mode


def aligned_rows(prompts: Sequence[EncodedPrompt], mode: str) -> list[torch.Tensor]:
    """Rows of prompts that are edited together, aligned one-to-one, segment by segment.

    ``paper``: each prompt contributes, per segment, its last content token and
    every row after it (EOS and padding, or an LLM template's suffix), aligned
    from the last content token on and cut to the shortest such tail. With
    equal-length segments and f the largest last-token slot, prompt x gives rows
    [n_x, slots - (f - n_x)), as the paper does. A segment without content
    (last = -1) repeats its first row in place of the missing last token.
    ``last_token``: each prompt contributes one row per segment, its last content token.
    """
    check_token_mode(mode)
    layouts = {len(p.segments) for p in prompts}
    if len(layouts) != 1:
        raise ValueError("prompts edited together must come from the same text encoders (same segments)")
    picked: list[list[torch.Tensor]] = [[] for _ in prompts]
    for s in range(layouts.pop()):
        segments = [p.segments[s] for p in prompts]
        count = 1 if mode == "last_token" else min(seg.length - seg.last for seg in segments)
        for out, prompt, seg in zip(picked, prompts, segments):
            out.append(_tail(prompt.rows, seg, count))
    return [torch.cat(parts) if len(parts) > 1 else parts[0] for parts in picked]


def preserve_rows(prompt: EncodedPrompt, mode: str) -> torch.Tensor:
    """Rows of a prompt whose outputs must not change: all of them (paper) or each segment's last token."""
    check_token_mode(mode)
    if mode == "paper":
        return prompt.rows
    return torch.cat([_tail(prompt.rows, seg, 1) for seg in prompt.segments])


def _tail(rows: torch.Tensor, segment: Segment, count: int) -> torch.Tensor:
    """``count`` rows of a segment from its last content token on (its first row repeated when it has none)."""
    start = segment.start + segment.last
    if segment.last >= 0:
        return rows[start : start + count]
    return torch.cat([rows[segment.start : segment.start + 1], rows[segment.start : start + count]])
