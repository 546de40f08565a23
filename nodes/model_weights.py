"""Cross-attention K/V weights of a ComfyUI MODEL: find them, read them as patched, patch a clone."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

import torch

import comfy.lora
import comfy.weight_adapter

from ..uce_solver import Delta, LowRankDelta

# UNet cross-attention projections, e.g.
# diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight
KV_KEY = re.compile(r"^diffusion_model\..+\.attn2\.to_([kv])\.weight$")

PROJECTIONS = {
    "keys+values": ("k", "v"),
    "values": ("v",),
    "keys": ("k",),
}


def model_family(model) -> str:
    """Name of the model's ComfyUI config class (SD15, SD21, SDXL, Flux …)."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    return type(config).__name__ if config is not None else type(getattr(model, "model", model)).__name__


def cross_attention_keys(model, projections: str = "keys+values") -> list[str]:
    """Patcher keys of the cross-attention K/V weights to edit, in model order.

    Raises ValueError with the family name when the model has none (not a UNet
    family this pack supports yet).
    """
    if projections not in PROJECTIONS:
        raise ValueError(f"unknown projections {projections!r}; expected one of {', '.join(PROJECTIONS)}")
    wanted = PROJECTIONS[projections]
    keys = []
    for key in model.model.state_dict().keys():
        found = KV_KEY.match(key)
        if found and found.group(1) in wanted:
            keys.append(key)
    if not keys:
        raise ValueError(
            f"this MODEL ({model_family(model)}) has no UNet cross-attention K/V projections (attn2.to_k / to_v); "
            "UCE supports the SD1.x, SD2.x and SDXL families, other families are not supported yet"
        )
    return keys


def input_width(model, keys: list[str]) -> int:
    """Width of the text conditioning the K/V projections read (768 SD1.x, 1024 SD2.x, 2048 SDXL)."""
    state = model.model.state_dict()
    widths = {state[k].shape[1] for k in keys}
    if len(widths) != 1:
        raise ValueError(f"cross-attention projections of mixed input widths {sorted(widths)} are not supported")
    return widths.pop()


def patch_dtype(model, keys: list[str]) -> torch.dtype:
    """Storage dtype for the edit's patches: the weights' own 16-bit dtype, else float32.

    The patched weight is rounded to the weight's dtype anyway, so 16-bit
    factors cost no meaningful precision and halve the patch memory.
    """
    state = model.model.state_dict()
    dtypes = {state[k].dtype for k in keys}
    if len(dtypes) == 1 and dtypes <= {torch.float16, torch.bfloat16}:
        return dtypes.pop()
    return torch.float32


class EffectiveWeights(Mapping):
    """The K/V weights as the sampler will see them: base weight plus every patch already on the MODEL.

    LoRAs and other patches added upstream are included, exactly as ComfyUI
    applies them. Each weight is computed in float32 on ``device`` when it is
    read and not kept, so at most the layers being solved are materialised; the
    shared module's tensors are only read (copied first).
    """

    def __init__(self, model, keys: list[str], device):
        self._key_patches = model.get_key_patches("diffusion_model.")  # references, no copies
        self._device = device
        self.shapes = {key: tuple(self._key_patches[key][0][0].shape) for key in keys}

    def __getitem__(self, key: str) -> torch.Tensor:
        (base, convert), *patches = self._key_patches[key]
        weight = convert(base.detach().to(self._device, torch.float32, copy=True), inplace=True)
        if patches:
            weight = comfy.lora.calculate_weight(patches, weight, key)
        return weight

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def patched_clone(model, deltas: Mapping[str, Delta], strength: float):
    """A clone of ``model`` with W + strength * ΔW on every key; the input MODEL is left untouched."""
    patches = {}
    for key, delta in deltas.items():
        if isinstance(delta, LowRankDelta):
            patches[key] = comfy.weight_adapter.LoRAAdapter(set(), (delta.up, delta.down, None, None, None, None))
        else:
            patches[key] = ("diff", (delta.delta,))
    edited = model.clone()
    accepted = set(edited.add_patches(patches, strength_patch=strength))
    missing = sorted(set(patches) - accepted)
    if missing:
        raise RuntimeError(f"ComfyUI refused the UCE patch for {len(missing)} weights, e.g. {missing[0]}")
    return edited
