"""Batched text encoding (the pack's encode_prompts) against one CLIPTextEncode-style pass per prompt."""

from __future__ import annotations

import importlib

import torch

from . import workload
from .comfy_cases import Comfy
from .measure import median_time


def prompts(count: int) -> list[str]:
    """Artist names (no parentheses, which one-by-one tokenizing would read as prompt weights)."""
    names = [a for a in workload.artist_split(0).preserve if a and "(" not in a and ")" not in a]
    return names[:count]


def run_case(comfy: Comfy, count: int, device: str, repeats: int, batch_size: int = 64) -> dict:
    clip = comfy.clip
    text_rows = importlib.import_module(f"{comfy.pack.__name__}.nodes.text_rows")
    texts = prompts(count)

    def batched():
        return text_rows.encode_prompts(clip, texts, batch_size=batch_size, cache=None)

    def one_by_one():
        return {t: clip.encode_from_tokens(clip.tokenize(t), return_dict=True)["cond"] for t in texts}

    with torch.inference_mode():
        text_rows.encode_prompts(clip, texts[:2], cache=None)  # warm-up: weights loaded, kernels ready
        one_by_one_rows, one_seconds, one_times = median_time(one_by_one, device, repeats)
        batched_rows, batch_seconds, batch_times = median_time(batched, device, repeats)
    diff = max(
        (batched_rows[t].rows - one_by_one_rows[t][0].float().to(batched_rows[t].rows.device)).abs().max().item()
        for t in texts
    )
    scale = max(one_by_one_rows[t].abs().max().item() for t in texts)
    return {
        "prompts": len(texts),
        "batch_size": batch_size,
        "batched_seconds": batch_seconds,
        "batched_times": batch_times,
        "one_by_one_seconds": one_seconds,
        "one_by_one_times": one_times,
        "speedup": one_seconds / batch_seconds,
        "max_abs_diff": diff,
        "max_abs_value": scale,
    }
