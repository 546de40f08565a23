"""Input declarations shared by the UCE nodes (types, defaults, tooltips)."""

from __future__ import annotations

from ..uce_solver import TOKEN_MODES
from .model_weights import POOLED_CHOICES, PROJECTIONS

CATEGORY = "conditioning/uce"


def model_input():
    return (
        "MODEL",
        {
            "tooltip": "The diffusion model to edit (SD1.x, SD2.x, SDXL, SD3/3.5, Flux.1, Flux.2, Chroma, Qwen-Image, "
            "Z-Image, Lumina 2, HiDream, HunyuanDiT, WAN 2.x video, LTX-Video, PixArt, Cosmos Predict2). "
            "It is not changed: a patched copy comes out."
        },
    )


def clip_input():
    return (
        "CLIP",
        {
            "tooltip": "The CLIP loaded with this MODEL, after any CLIP Set Last Layer / LoRA you use for prompts: "
            "the edit is computed on exactly the conditioning your prompts get."
        },
    )


def text_input(default: str, tooltip: str):
    return ("STRING", {"multiline": True, "default": default, "tooltip": tooltip})


def scale_input(default: float, tooltip: str, minimum: float = 0.0, maximum: float = 100.0):
    return ("FLOAT", {"default": default, "min": minimum, "max": maximum, "step": 0.01, "tooltip": tooltip})


def common_solver_inputs(erase_scale: float, preserve_scale: float, preserve_tooltip: str) -> dict:
    """erase_scale, preserve_scale, lamb, token_mode, projections, strength, in that order."""
    return {
        "erase_scale": scale_input(
            erase_scale,
            "Weight s_e of reaching the targets. Too large a value on few concepts can give noisy or blank images.",
        ),
        "preserve_scale": scale_input(preserve_scale, preserve_tooltip, minimum=-1.0),
        "lamb": scale_input(
            0.5,
            "Weight lambda of staying close to the original weights (the paper uses 0.5). Must be above 0.",
            minimum=0.001,
        ),
        "token_mode": (
            list(TOKEN_MODES),
            {
                "default": "paper",
                "tooltip": "paper: edit the last concept token, EOS and padding rows, aligned with the guide (as in "
                "the paper; strongest). last_token: edit only the last concept token's row (lighter, may erase less).",
            },
        ),
        "projections": (
            list(PROJECTIONS),
            {
                "default": "keys+values",
                "tooltip": "Which cross-attention projections to edit (the paper edits both). Only for models with "
                "per-block keys/values (SD1.x, SD2.x, SDXL, WAN, LTX-Video, PixArt, HunyuanDiT, Cosmos); "
                "the joint-attention DiTs' text input is edited as a whole.",
            },
        ),
        "strength": (
            "FLOAT",
            {
                "default": 1.0,
                "min": 0.0,
                "max": 2.0,
                "step": 0.05,
                "tooltip": "How much of the edit to apply: 0 leaves the model unchanged, 1 is the UCE edit; linear "
                "in between (like a LoRA strength).",
            },
        ),
    }


def optional_inputs() -> dict:
    """Inputs added after the first release: optional, so that older API prompts still validate."""
    return {
        "pooled": (
            list(POOLED_CHOICES),
            {
                "default": "auto",
                "tooltip": "Also edit the weights that read the pooled text vector (Flux vector_in, SD3 y_embedder, "
                "SDXL label_emb). auto: the family's default (on for Flux and SD3; off for SD1.x/SD2.x/SDXL, as in "
                "the paper). Turn it on for SDXL concepts that survive the cross-attention edit.",
            },
        ),
    }


OUTPUTS = ("MODEL", "STRING")
OUTPUT_NAMES = ("MODEL", "report")
OUTPUT_TOOLTIPS = (
    "A copy of the model with the edit as patches; stack LoRAs after it, sample or save it like any model.",
    "What was edited: rows, preserved prompts, device, time, and the measured effect in attention space.",
)
