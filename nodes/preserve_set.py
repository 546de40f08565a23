"""The preserve prompts' contribution to the solve: their Gram matrix and a sample of their rows.

Accumulated while the prompts stream out of the text encoder (memory does not grow
with the list), and remembered for the last few (CLIP, token mode, list)
combinations, so re-running or tweaking an edit with the same preserve list
skips both encoding and accumulation.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .. import uce_solver
from . import text_rows
from .text_cache import encoder_key

MEMO_ENTRIES = 4


@dataclass(frozen=True)
class PreserveSet:
    gram: uce_solver.GramAccumulator
    sample: Optional[torch.Tensor]  # at most ``sample_rows`` rows spread over the list, for measuring
    prompts: int


_memo: "OrderedDict[tuple, PreserveSet]" = OrderedDict()


def preserve_set(
    clip,
    texts: Sequence[str],
    token_mode: str,
    width: int,
    device,
    sample_rows: int,
    progress: Optional[Callable[[int, int], None]] = None,
) -> PreserveSet:
    """Gram matrix of all preserve rows of ``texts`` (on ``device``) and an evenly spread sample of rows."""
    key = encoder_key(clip)
    memo_key = None if key is None else (key, token_mode, str(device), tuple(texts))
    if memo_key in _memo:
        _memo.move_to_end(memo_key)
        if progress is not None:
            progress(len(texts), len(texts))
        return _memo[memo_key]

    rows_per_prompt = 1 if token_mode == "last_token" else None
    accumulator = uce_solver.GramAccumulator(width, device)
    sampled = []
    every = 1
    for index, prompt in enumerate(text_rows.iter_encoded(clip, texts, progress)):
        rows = uce_solver.preserve_rows(prompt, token_mode)
        if rows_per_prompt is None:
            rows_per_prompt = rows.shape[0]
            every = max(1, math.ceil(len(texts) * rows_per_prompt / sample_rows))
        accumulator.add(rows.to(device))
        if index % every == 0:
            sampled.append(rows)
    sample = torch.cat(sampled).to(device) if sampled else None
    result = PreserveSet(accumulator, sample, len(texts))
    if memo_key is not None:
        _memo[memo_key] = result
        while len(_memo) > MEMO_ENTRIES:
            _memo.popitem(last=False)
    return result


def clear_memo() -> None:
    _memo.clear()
