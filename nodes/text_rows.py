"""Text rows from a ComfyUI CLIP, exactly as the sampler's conditioning holds them."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..uce_solver import EncodedPrompt

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


def encode_prompts(
    clip,
    texts: Sequence[str],
    progress: Optional[Callable[[int, int], None]] = None,
    batch_size: int = ENCODE_BATCH,
) -> dict[str, EncodedPrompt]:
    """Encode every distinct text, many per encoder pass, through ComfyUI's own conditioning path.

    Several prompts are passed as the chunks of one long prompt, which ComfyUI
    encodes as one batch (weights all 1, so nothing is interpolated); each
    chunk's 77 rows are exactly that prompt's conditioning. Clip skip and CLIP
    patches (LoRA) apply as for CLIPTextEncode.
    """
    unique = list(dict.fromkeys(texts))
    tokenized = [(text, tokenize(clip, text)) for text in unique]
    lasts = {text: last_token_slot(clip, text, tokens) for text, tokens in tokenized}
    out: dict[str, EncodedPrompt] = {}
    for start in range(0, len(tokenized), batch_size):
        batch = tokenized[start : start + batch_size]
        merged = {name: [tokens[name][0] for _, tokens in batch] for name in batch[0][1]}
        cond = clip.encode_from_tokens(merged, return_dict=True)["cond"]
        rows = cond.reshape(len(batch), -1, cond.shape[-1]).to(torch.float32)
        for (text, _), prompt_rows in zip(batch, rows):
            out[text] = EncodedPrompt(text, prompt_rows, lasts[text])
        if progress is not None:
            progress(min(start + batch_size, len(tokenized)), len(tokenized))
    return out


def _end_token(clip, name: str) -> int:
    tokenizer = getattr(clip.tokenizer, f"clip_{name}", None) or getattr(clip.tokenizer, name, None)
    end = getattr(tokenizer, "end_token", None)
    if end is None:
        raise ValueError(f"cannot find the end token of text encoder {name!r}; this CLIP type is not supported")
    return end
