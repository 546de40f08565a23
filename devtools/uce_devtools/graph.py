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


def effective_weights(model: Any, keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """Return the weights a MODEL (ModelPatcher) computes with: base + every patch (LoRA, edits).

    float32 CPU copies; the model itself is never touched. Uses ComfyUI's own
    get_key_patches + comfy.lora.calculate_weight, as ModelPatcher does when it patches.
    """
    import comfy.lora

    key_patches = model.get_key_patches("diffusion_model.")
    weights = {}
    with torch.no_grad():
        for key in keys:
            (base, convert), *patches = key_patches[key]
            weight = convert(base.detach().to("cpu", torch.float32, copy=True), inplace=True)
            if patches:
                weight = comfy.lora.calculate_weight(patches, weight, key)
            weights[key] = weight
    return weights


async def _await(awaitable: Any) -> Any:
    return await awaitable
