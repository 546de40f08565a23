"""The preserve prompts' contribution to the solve: per group of weights, their Gram matrix and a sample of rows.

Accumulated while the prompts stream out of the text encoder, once for every
group of weights at the same time (memory does not grow with the list, and no
prompt is encoded twice), and remembered for the last few (CLIP, token mode,
list, row views) combinations, so re-running or tweaking an edit with the same
preserve list skips both encoding and accumulation.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .. import uce_solver
from . import text_rows
from .families import Family
from .model_weights import MapGroup
from .text_cache import encoder_key

MEMO_ENTRIES = 4


@dataclass(frozen=True)
class PreserveSet:
    gram: uce_solver.GramAccumulator
    sample: Optional[torch.Tensor]  # at most ``sample_rows`` rows spread over the list, for measuring
    prompts: int


_memo: "OrderedDict[tuple, PreserveSet]" = OrderedDict()


def preserve_sets(
    clip,
    family: Family,
    groups: Sequence[MapGroup],
    texts: Sequence[str],
    token_mode: str,
    device,
    sample_rows: int,
    progress: Optional[Callable[[int, int], None]] = None,
) -> list[PreserveSet]:
    """For each group, the Gram matrix of all preserve rows of ``texts`` (on ``device``) and a spread sample."""
    key = encoder_key(clip)
    memo_keys = [
        None if key is None else (key, family.name, group.view_key(), token_mode, str(device), tuple(texts))
        for group in groups
    ]
    if all(k in _memo for k in memo_keys):
        for k in memo_keys:
            _memo.move_to_end(k)
        if progress is not None:
            progress(len(texts), len(texts))
        return [_memo[k] for k in memo_keys]

    accumulators = [uce_solver.GramAccumulator(group.width, device) for group in groups]
    sampled: list[list[torch.Tensor]] = [[] for _ in groups]
    every: list[Optional[int]] = [None] * len(groups)
    encoded_texts = text_rows.iter_encoded(
        clip, texts, progress, family=family, pooled=any(group.pooled for group in groups)
    )
    for index, encoded in enumerate(encoded_texts):
        for g, group in enumerate(groups):
            rows = uce_solver.preserve_rows(group.rows_of(encoded), token_mode)
            if every[g] is None:
                every[g] = max(1, math.ceil(len(texts) * rows.shape[0] / sample_rows))
            accumulators[g].add(rows.to(device))
            if index % every[g] == 0:
                sampled[g].append(rows)
    results = []
    for memo_key, accumulator, rows in zip(memo_keys, accumulators, sampled):
        result = PreserveSet(accumulator, torch.cat(rows).to(device) if rows else None, len(texts))
        if memo_key is not None:
            _memo[memo_key] = result
        results.append(result)
    while len(_memo) > MEMO_ENTRIES * max(1, len(groups)):
        _memo.popitem(last=False)
    return results


def clear_memo() -> None:
    _memo.clear()
