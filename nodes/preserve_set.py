"""The preserve prompts' contribution to the solve: per group of weights, their Gram matrix and a sample of rows.

Accumulated while the prompts stream out of the text encoder, once for every
group of weights at the same time (memory does not grow with the list, and no
prompt is encoded twice), and remembered for the last few (CLIP, token mode,
list, row views) combinations, so re-running or tweaking an edit with the same
preserve list skips both encoding and accumulation. Lists of at least
``DISK_MIN_PROMPTS`` prompts are also kept on disk (``preserve_cache``), so the
first edit after a restart does not encode them again either: RAM first, then
disk, then encoding, whose complete result is written to disk.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .. import uce_solver
from . import preserve_cache, text_rows
from .families import Family
from .model_weights import MapGroup
from .text_cache import encoder_key

MEMO_ENTRIES = 4
# Shorter lists encode quickly; fingerprinting a large text encoder for them would cost more than it saves.
DISK_MIN_PROMPTS = 32

log = logging.getLogger(__name__)


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

    pooled = any(group.pooled for group in groups)
    store = preserve_cache.default_store() if len(texts) >= DISK_MIN_PROMPTS else None
    disk_keys = _disk_keys(clip, family, groups, texts, token_mode, device, sample_rows, pooled) if store else None
    if disk_keys is not None:
        stored = []
        for disk_key, group in zip(disk_keys, groups):
            entry = store.load(disk_key, group.width, device)
            if entry is None or entry.prompts != len(texts):
                break
            stored.append(_from_entry(entry, device))
        else:
            if progress is not None:
                progress(len(texts), len(texts))
            return _remember(memo_keys, stored)

    accumulators = [uce_solver.GramAccumulator(group.width, device) for group in groups]
    sampled: list[list[torch.Tensor]] = [[] for _ in groups]
    every: list[Optional[int]] = [None] * len(groups)
    encoded_texts = text_rows.iter_encoded(clip, texts, progress, family=family, pooled=pooled)
    for index, encoded in enumerate(encoded_texts):
        for g, group in enumerate(groups):
            rows = uce_solver.preserve_rows(group.rows_of(encoded), token_mode)
            if every[g] is None:
                every[g] = max(1, math.ceil(len(texts) * rows.shape[0] / sample_rows))
            accumulators[g].add(rows.to(device))
            if index % every[g] == 0:
                sampled[g].append(rows)
    results = [
        PreserveSet(accumulator, torch.cat(rows).to(device) if rows else None, len(texts))
        for accumulator, rows in zip(accumulators, sampled)
    ]
    if disk_keys is not None:  # only a complete accumulation gets here (an interruption raises above)
        for disk_key, result in zip(disk_keys, results):
            store.save(disk_key, _to_entry(result))
    return _remember(memo_keys, results)


def _remember(memo_keys: list, results: list[PreserveSet]) -> list[PreserveSet]:
    for memo_key, result in zip(memo_keys, results):
        if memo_key is not None:
            _memo[memo_key] = result
    while len(_memo) > MEMO_ENTRIES * max(1, len(results)):
        _memo.popitem(last=False)
    return results


def _disk_keys(clip, family, groups, texts, token_mode, device, sample_rows, pooled) -> Optional[list[dict]]:
    """Each group's key in the disk store, or None when this CLIP or list cannot be cached there."""
    try:
        encoder = preserve_cache.encoder_fingerprint(clip, pooled=pooled)
        if encoder is None:
            return None
        keys = [
            preserve_cache.entry_key(
                clip, family, group.view_key(), texts, token_mode, device, sample_rows, one_per_pass=pooled,
                encoder=encoder,
            )
            for group in groups
        ]
    except Exception as error:  # the store is an optimisation: never let it fail an edit
        log.warning("UCE preserve cache: not used for this edit: %s", error)
        return None
    return None if any(k is None for k in keys) else keys


def _to_entry(result: PreserveSet) -> preserve_cache.Entry:
    gram = result.gram
    return preserve_cache.Entry(gram.gram, gram.rows, result.sample, result.prompts, gram.chunk_dtype)


def _from_entry(entry: preserve_cache.Entry, device) -> PreserveSet:
    gram = uce_solver.GramAccumulator(0, device, entry.chunk_dtype)
    gram.gram = entry.gram  # [width, width], checked when loaded
    gram.rows = entry.rows
    return PreserveSet(gram, entry.sample, entry.prompts)


def clear_memo() -> None:
    _memo.clear()
