"""End to end through ComfyUI in-process: the edit runner every UCE node uses, first and repeated run."""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Optional

import torch

from . import workload
from .comfy_cases import Comfy


def run_case(comfy: Comfy, artists: int, preserve: Optional[int]) -> dict:
    """Erase ``artists`` (the paper's erased set of that size, or the first N) toward "art", preserving
    ``preserve`` other artists (None: all of the paper's list) plus "". Caches are cleared first."""
    result = run_edit_twice(comfy.pack, comfy.model, comfy.clip, artists, preserve)
    main = result["groups"][0]
    result.update(
        layers=sum(g["weights"] for g in result["groups"]),
        low_rank_layers=sum(g["low_rank"] for g in result["groups"]),
        edit_rows=main["edit_rows"],
        preserve_rows=main["preserve_rows"],
        checkpoint=comfy.checkpoint,
    )
    return result


def run_edit_twice(pack, model, clip, artists: int, preserve: Optional[int]) -> dict:
    """The edit runner on ``model`` / ``clip``, first and repeated run (text caches cleared first)."""
    package = pack.__name__
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
    # "first" means nothing cached: not in RAM, and not in the preserve lists' disk cache either
    with torch.inference_mode(), _disk_cache_off():
        for name in ("first", "repeated"):
            _, report, _ = runner.run_edit(model, clip, plan, settings)
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
        "family": report.family_name,
        "groups": [group_dict(g) for g in report.groups],
        "device": report.device,
        "runs": runs,
        "repeat_encode_ratio": runs["repeated"]["encode_seconds"] / runs["first"]["encode_seconds"],
    }


def group_dict(group) -> dict:
    """One solved group of the node report (nodes/report.py GroupResult) as plain data."""
    effect = group.effect
    return {
        "label": group.label,
        "weights": group.weights,
        "low_rank": group.low_rank,
        "edit_rows": group.edit_rows,
        "preserve_rows": group.preserve_rows,
        "target_gap_remaining": effect.target_gap_remaining,
        "preserve_shift": effect.preserve_shift,
    }


@contextlib.contextmanager
def _disk_cache_off():
    """The preserve lists' disk cache off (UCE_PRESERVE_CACHE_MB=0) for the duration."""
    saved = os.environ.get("UCE_PRESERVE_CACHE_MB")
    os.environ["UCE_PRESERVE_CACHE_MB"] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["UCE_PRESERVE_CACHE_MB"]
        else:
            os.environ["UCE_PRESERVE_CACHE_MB"] = saved
