"""A bounded cache of encoded prompts, keyed by everything that determines their rows.

Rows depend on the text, the tokenizer, the text encoder's weights and patches
(LoRA) and its options (clip skip). Repeating or tweaking an edit with the same
CLIP and preserve list then encodes nothing again; a different CLIP (another
checkpoint, a LoRA, another clip skip) gets different keys.
"""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from collections import OrderedDict
from typing import Hashable, Optional

# 2 GiB of float32 rows in RAM: the art preset's ~1,700 artists fit at SDXL's width (77 x 2048 per prompt).
DEFAULT_MAX_BYTES = int(os.environ.get("UCE_TEXT_CACHE_MB", "2048")) * 2**20

_identities: "weakref.WeakKeyDictionary[object, str]" = weakref.WeakKeyDictionary()


def _identity(obj) -> str:
    """A token unique to a live object (unlike id(), never reused after the object is freed)."""
    if obj not in _identities:
        _identities[obj] = uuid.uuid4().hex
    return _identities[obj]


def encoder_key(clip) -> Optional[Hashable]:
    """What, besides the text, determines a CLIP's conditioning rows; None if it cannot be cached."""
    patcher = clip.patcher
    if getattr(patcher, "forced_hooks", None) or getattr(clip, "apply_hooks_to_conds", None):
        return None  # hooks may change the encoder per step: do not trust a cache
    return (
        _identity(clip.cond_stage_model),
        _identity(clip.tokenizer),
        str(patcher.patches_uuid),
        clip.layer_idx,
        repr(sorted(clip.tokenizer_options.items())),
    )


class RowCache:
    """Least-recently-used map (encoder key, text) -> encoded text (rows, pooled vector), bounded in bytes."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: "OrderedDict[Hashable, object]" = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def contains(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable):
        with self._lock:
            prompt = self._entries.get(key)
            if prompt is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return prompt

    def put(self, key: Hashable, prompt) -> None:
        size = nbytes(prompt)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= nbytes(old)
            self._entries[key] = prompt
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= nbytes(evicted)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = self.hits = self.misses = 0


def nbytes(encoded) -> int:
    """Bytes of an encoded prompt's tensors (rows, pooled vector, extra encoder outputs)."""
    tensors = [encoded.rows, getattr(encoded, "pooled", None)]
    tensors += [rows for rows, _ in getattr(encoded, "extras", {}).values()]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


ROW_CACHE = RowCache()
