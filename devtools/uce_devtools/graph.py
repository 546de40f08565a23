"""Run ComfyUI nodes in-process by class name, and read what a MODEL really computes with."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Iterable
from typing import Any

import torch

from .comfy_env import import_comfyui

# Patcher keys of the cross-attention K/V projections (the UNet's text-conditioned weights).
CROSS_ATTENTION_KV_KEY = re.compile(
    r"^diffusion_model\.(input_blocks\.\d+|middle_block|output_blocks\.\d+)\.1\.transformer_blocks\.\d+\.attn2\.to_[kv]\.weight$"
)


def run_node(class_name: str, /, **inputs: Any) -> tuple:
    """Run the node registered as `class_name` in ComfyUI's NODE_CLASS_MAPPINGS; return its outputs.

    Classic nodes: instantiates the class and calls its FUNCTION with `inputs` as keywords.
    V3 nodes (comfy_api io.ComfyNode): calls the class's normalised execute with no hidden inputs.
    Async functions are run to completion. Like ComfyUI's executor, runs under
    torch.inference_mode(), so outputs are inference tensors. Returns the output tuple (the "result"
    part when a node returns a dict with "ui"). Inputs are passed as given: no list expansion
    (INPUT_IS_LIST), no validation, no defaults filled in.
    """
    nodes = import_comfyui()
    try:
        node_class = nodes.NODE_CLASS_MAPPINGS[class_name]
    except KeyError:
        raise KeyError(f"No node class {class_name!r} in ComfyUI's NODE_CLASS_MAPPINGS") from None

    if hasattr(node_class, "PREPARE_CLASS_CLONE"):  # V3 io.ComfyNode
        function = getattr(node_class.PREPARE_CLASS_CLONE({}), node_class.FUNCTION)
    else:
        function = getattr(node_class(), node_class.FUNCTION)

    with torch.inference_mode():
        output = function(**inputs)
        if inspect.isawaitable(output):
            output = asyncio.run(_await(output))

    if hasattr(output, "args") and hasattr(output, "block_execution"):  # V3 NodeOutput
        return tuple(output.args)
    if isinstance(output, dict):
        return tuple(output.get("result", ()))
    return tuple(output)


def cross_attention_kv_keys(model: Any) -> dict[str, tuple[int, ...]]:
    """Map each cross-attention to_k / to_v patcher key of a MODEL (ModelPatcher) to its shape."""
    state_dict = model.model_state_dict("diffusion_model.")
    return {key: tuple(value.shape) for key, value in state_dict.items() if CROSS_ATTENTION_KV_KEY.match(key)}


def live_weights(model: Any, keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """The weights a MODEL (ModelPatcher) really samples with: loaded the way KSampler loads it.

    ComfyUI's model management patches every patch (LoRA, edits) into the shared module when it
    loads a clone; this reads float32 CPU copies of those live tensors. Independent of how the pack
    computes effective weights, so tests can use it as an oracle.
    """
    import comfy.model_management

    comfy.model_management.load_models_gpu([model], force_full_load=True)
    state = model.model.state_dict()
    return {key: state[key].detach().to("cpu", torch.float32, copy=True) for key in keys}


async def _await(awaitable: Any) -> Any:
    return await awaitable
