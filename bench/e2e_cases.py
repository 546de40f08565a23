"""End to end through ComfyUI in-process: the edit runner every UCE node uses, first and repeated run."""

from __future__ import annotations

import importlib
from typing import Optional

import torch

from . import workload
from .comfy_cases import Comfy


def run_case(comfy: Comfy, artists: int, preserve: Optional[int]) -> dict:
    """Erase ``artists`` (the paper's erased set of that size, or the first N) toward "art", preserving
    ``preserve`` other artists (None: all of the paper's list) plus "". Caches are cleared first."""
    package = comfy.pack.__name__
    runner = importlib.import_module(f"{package}.nodes.edit_runner")
    solver = importlib.import_module(f"{package}.uce_solver")
    text_cache = importlib.import_module(f"{package}.nodes.text_cache")
    preserve_set = importlib.import_module(f"{package}.nodes.preserve_set")
    split = workload.artist_split(artists)
    kept = split.preserve[:-1] if preserve is None else split.preserve[:-1][:preserve]
    preserve_texts = kept + [""]
    plan = runner.ErasePlan([(a, "art") for a in split.erased])
    scales = solver.Scales(erase=1.0, preserve=max(0.1, 1.0 / len(preserve_texts)), lamb=0.5)
    settings = runner.EditSettings(preserve=preserve_texts, token_mode="paper", scales=scales)

    text_cache.ROW_CACHE.clear()
    preserve_set.clear_memo()
    runs = {}
    with torch.inference_mode():
        for name in ("first", "repeated"):
            _, report = runner.run_edit(comfy.model, comfy.clip, plan, settings)
            runs[name] = {
                "encode_seconds": report.encode_seconds,
                "solve_seconds": report.solve_seconds,
                "measure_seconds": report.measure_seconds,
                "patch_seconds": report.patch_seconds,
                "total_seconds": report.total_seconds,
                "patch_bytes": report.patch_bytes,
            }
    return {
        "case": f"{len(split.erased)} artists + {len(preserve_texts)} preserve prompts",
        "artists": len(split.erased),
        "preserve_prompts": len(preserve_texts),
        "source": split.source,
        "layers": report.layers,
        "low_rank_layers": report.low_rank_layers,
        "edit_rows": report.edit_rows,
        "preserve_rows": report.preserve_rows,
        "device": report.device,
        "checkpoint": comfy.checkpoint,
        "runs": runs,
        "repeat_encode_ratio": runs["repeated"]["encode_seconds"] / runs["first"]["encode_seconds"],
    }
