"""Loading a real ComfyUI in-process with the tiny SD1.5 checkpoint (real-size CLIP-L)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Comfy:
    pack: Any  # this node pack, imported as ComfyUI imports a custom-node folder
    model: Any
    clip: Any
    load_seconds: float
    checkpoint: str


def load(device: str) -> Comfy:
    """Import ComfyUI (CPU-only when ``device`` is cpu), the pack, and the cached tiny checkpoint."""
    start = time.perf_counter()
    from uce_devtools import comfy_env, tiny_models
    from uce_devtools.graph import run_node

    comfy_env.import_comfyui(cpu=device == "cpu")
    pack = comfy_env.load_pack()
    path = tiny_models.tiny_sd15_checkpoint()
    comfy_env.register_checkpoint_dir(path.parent)
    model, clip, _ = run_node("CheckpointLoaderSimple", ckpt_name=path.name)
    return Comfy(pack, model, clip, time.perf_counter() - start, path.name)
