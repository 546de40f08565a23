"""Text rows from a ComfyUI CLIP, exactly as the sampler's conditioning holds them."""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import torch

from ..uce_solver import EncodedPrompt
from .text_cache import ROW_CACHE, RowCache, encoder_key

ENCODE_BATCH = 64


class PromptTooLongError(ValueError):
    """A prompt needs more than one 77-slot chunk."""


def tokenize(clip, text: str) -> dict:
    """Tokens of one prompt per encoder, with prompt-weighting syntax such as (word:1.2) disabled."""
    return clip.tokenize(text, disable_weights=True)


def last_token_slot(clip, text: str, tokens: dict) -> int:
    """Slot n of the last real token (0 for an empty prompt); the same for every encoder (SDXL: g and l)."""
    slots = {}
    for name, chunks in tokens.items():
        if len(chunks) != 1:
            raise PromptTooLongError(
                f"prompt {text!r} is longer than one 77-token chunk ({len(chunks)} chunks); UCE edits one chunk "
                "per prompt: shorten it to at most 75 tokens"
            )
        end_token = _end_token(clip, name)
        ids = [t[0] for t in chunks[0]]
        end = next((i for i in range(1, len(ids)) if isinstance(ids[i], int) and ids[i] == end_token), None)
        if end is None:
            raise PromptTooLongError(f"prompt {text!r} fills its whole chunk with no end token; shorten it")
        slots[name] = end - 1
    if len(set(slots.values())) != 1:
        raise ValueError(f"the text encoders disagree on where prompt {text!r} ends: {slots}")
    return next(iter(slots.values()))


_widths: dict = {}


def conditioning_width(clip) -> int:
    """Width of the CLIP's conditioning rows (768 SD1.x, 1024 SD2.x, 2048 SDXL …), from one encoder pass.

    Does not depend on the tokenizers agreeing, so a CLIP of another family is
    reported by its width rather than by a tokenizer error. Remembered per encoder.
    """
    key = encoder_key(clip)
    if key not in _widths:
        cond = clip.encode_from_tokens(clip.tokenize(""), return_dict=True)["cond"]
        width = cond.shape[-1]
        if key is None:
            return width
        _widths[key] = width
    return _widths[key]


def check_prompts(clip, texts: Sequence[str], cache: Optional[RowCache] = ROW_CACHE) -> None:
    """Raise PromptTooLongError for a prompt over one chunk, before anything is encoded.

    Prompts already in ``cache`` were checked when they were encoded and are skipped.
    """
    key = encoder_key(clip) if cache is not None else None
    for text in dict.fromkeys(texts):
        if key is None or not cache.contains((key, text)):
            last_token_slot(clip, text, tokenize(clip, text))


def iter_encoded(
    clip,
    texts: Sequence[str],
    progress: Optional[Callable[[int, int], None]] = None,
    batch_size: int = ENCODE_BATCH,
    cache: Optional[RowCache] = ROW_CACHE,
) -> Iterator[EncodedPrompt]:
    """Encode ``texts`` in order, many per encoder pass, through ComfyUI's own conditioning path.

    Several prompts are passed as the chunks of one long prompt, which ComfyUI
    encodes as one batch (weights all 1, so nothing is interpolated); each
    chunk's 77 rows are exactly that prompt's conditioning. Clip skip and CLIP
    patches (LoRA) apply as for CLIPTextEncode. Prompts found in ``cache`` are
    not encoded again. Yields one EncodedPrompt per text, so callers can stream.
    """
    key = encoder_key(clip) if cache is not None else None
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        found = {text: cache.get((key, text)) for text in batch} if key is not None else {}
        missing = list(dict.fromkeys(t for t in batch if found.get(t) is None))
        if missing:
            tokenized = [tokenize(clip, text) for text in missing]
            lasts = [last_token_slot(clip, text, tokens) for text, tokens in zip(missing, tokenized)]
            merged = {name: [tokens[name][0] for tokens in tokenized] for name in tokenized[0]}
            cond = clip.encode_from_tokens(merged, return_dict=True)["cond"]
            rows = cond.reshape(len(missing), -1, cond.shape[-1]).to(torch.float32)
            for text, prompt_rows, last in zip(missing, rows, lasts):
                found[text] = EncodedPrompt(text, prompt_rows, last)
                if key is not None:
                    cache.put((key, text), found[text])
        yield from (found[text] for text in batch)
        if progress is not None:
            progress(min(start + batch_size, len(texts)), len(texts))


def encode_prompts(clip, texts: Sequence[str], **options) -> dict[str, EncodedPrompt]:
    """Every distinct text of ``texts`` encoded (see :func:`iter_encoded`), by text."""
    return {prompt.text: prompt for prompt in iter_encoded(clip, list(dict.fromkeys(texts)), **options)}


def _end_token(clip, name: str) -> int:
    tokenizer = getattr(clip.tokenizer, f"clip_{name}", None) or getattr(clip.tokenizer, name, None)
    end = getattr(tokenizer, "end_token", None)
    if end is None:
        raise ValueError(f"cannot find the end token of text encoder {name!r}; this CLIP type is not supported")
    return end
