"""Input and output declarations shared by the UCE nodes (ComfyUI's V3 schema: types, defaults, tooltips)."""

from __future__ import annotations

from comfy_api.latest import io

from ..uce_solver import TOKEN_MODES
from .edit_record import EDIT_TYPE
from .edit_runner import PRESERVATION_MODES
from .model_weights import POOLED_CHOICES, PROJECTIONS

PRESERVE_PRESETS = ("none", "captions")

CATEGORY = "conditioning/uce"
Edit = io.Custom(EDIT_TYPE)


def model_input():
    return io.Model.Input(
        "model",
        tooltip="The diffusion model to edit (SD1.x, SD2.x, SDXL, SD3/3.5, Flux.1, Flux.2, Chroma, Qwen-Image, "
        "Z-Image, Lumina 2, HiDream, HunyuanDiT, WAN 2.x video, LTX-Video, PixArt, Cosmos Predict2). "
        "It is not changed: a patched copy comes out.",
    )


def clip_input():
    return io.Clip.Input(
        "clip",
        tooltip="The CLIP loaded with this MODEL, after any CLIP Set Last Layer / LoRA you use for prompts: "
        "the edit is computed on exactly the conditioning your prompts get.",
    )


def text_input(name: str, default: str, tooltip: str):
    return io.String.Input(name, multiline=True, default=default, tooltip=tooltip)


def scale_input(name: str, default: float, tooltip: str, minimum: float = 0.0, maximum: float = 100.0):
    return io.Float.Input(name, default=default, min=minimum, max=maximum, step=0.01, tooltip=tooltip)


def common_solver_inputs(erase_scale: float, preserve_scale: float, preserve_tooltip: str) -> list:
    """erase_scale, preserve_scale, lamb, token_mode, projections, strength, in that order."""
    return [
        scale_input(
            "erase_scale",
            erase_scale,
            "Weight s_e of reaching the targets. Too large a value on few concepts can give noisy or blank images.",
        ),
        scale_input("preserve_scale", preserve_scale, preserve_tooltip, minimum=-1.0),
        scale_input(
            "lamb",
            0.5,
            "Weight lambda of staying close to the original weights (the paper uses 0.5). Must be above 0.",
            minimum=0.00001,
        ),
        io.Combo.Input(
            "token_mode",
            options=list(TOKEN_MODES),
            default="paper",
            tooltip="paper: edit the last concept token, EOS and padding rows, aligned with the guide (as in "
            "the paper; strongest). last_token: edit only the last concept token's row (lighter, may erase less).",
        ),
        io.Combo.Input(
            "projections",
            options=list(PROJECTIONS),
            default="keys+values",
            tooltip="Which cross-attention projections to edit (the paper edits both). Only for models with "
            "per-block keys/values (SD1.x, SD2.x, SDXL, WAN, LTX-Video, PixArt, HunyuanDiT, Cosmos); "
            "the joint-attention DiTs' text input is edited as a whole.",
        ),
        io.Float.Input(
            "strength",
            default=1.0,
            min=0.0,
            max=2.0,
            step=0.05,
            tooltip="How much of the edit to apply: 0 leaves the model unchanged, 1 is the UCE edit; linear "
            "in between (like a LoRA strength).",
        ),
    ]


def optional_inputs() -> list:
    """Inputs added after the first release: optional, so that older API prompts still validate."""
    return [
        io.Combo.Input(
            "pooled",
            options=list(POOLED_CHOICES),
            default="auto",
            optional=True,
            tooltip="Also edit the weights that read the pooled text vector (Flux vector_in, SD3 y_embedder, "
            "SDXL label_emb). auto: the family's default (on for Flux and SD3; off for SD1.x/SD2.x/SDXL, as in "
            "the paper). Turn it on for SDXL concepts that survive the cross-attention edit.",
        ),
    ]


def outputs() -> list:
    return [
        io.Model.Output(
            display_name="MODEL",
            tooltip="A copy of the model with the edit as patches; stack LoRAs after it, sample or save it like "
            "any model.",
        ),
        io.String.Output(
            display_name="report",
            tooltip="What was edited: rows, preserved prompts, device, time, and the measured effect in attention "
            "space.",
        ),
        Edit.Output(
            display_name="edit",
            tooltip="The edit itself (its weight updates and what made them), for UCE Save Edit (a LoRA file) or "
            "UCE Probe.",
        ),
    ]


def robust_erase_inputs() -> list:
    """Beyond the paper (optional, off by default, so older workflows and API prompts are unchanged)."""
    return [
        io.Combo.Input(
            "preserve_preset",
            options=list(PRESERVE_PRESETS),
            default="none",
            optional=True,
            tooltip="captions: also preserve the pack's generic caption prior (3,000 everyday scene prompts made "
            "from templates), so general images stay as they were, as MACE does with a caption prior. Slower the "
            "first time (it is encoded once, then cached on disk).",
        ),
        io.Combo.Input(
            "preservation",
            options=list(PRESERVATION_MODES),
            default="paper",
            optional=True,
            tooltip="paper: UCE's preserve term. null_space: also confine the update to the directions the "
            "preserve rows barely use (after SPEED), and keep the unconditional prompt's outputs exactly: "
            "stricter preservation, possibly weaker erasure.",
        ),
        io.Float.Input(
            "null_space_threshold",
            default=0.01,
            min=1e-6,
            max=0.999,
            step=0.001,
            optional=True,
            tooltip="null_space only: the update may use the input directions the preserve rows use least, as many "
            "as together hold at most this fraction of their energy (it bounds how far preserved outputs can move). "
            "Smaller = stricter preservation, fewer free directions.",
        ),
        io.Boolean.Input(
            "prior_filtering",
            default=False,
            optional=True,
            tooltip="null_space only (after SPEED): build the null space from the preserve prompts this edit would "
            "move more than average, not from all of them: more room for the edit, the others protected by the "
            "preserve term alone. Costs one more solve and a second pass over the preserve prompts.",
        ),
        io.Int.Input(
            "prior_augmentation",
            default=0,
            min=0,
            max=16,
            optional=True,
            tooltip="null_space only (after SPEED): also keep off the directions of this many perturbed copies of "
            "each preserve row, moved along the inputs the weights barely read, so prompts near the preserved ones "
            "are protected too: stricter preservation, possibly weaker erasure. 0 = off.",
        ),
        io.Int.Input(
            "harden_rounds",
            default=0,
            min=-1,
            max=10,
            optional=True,
            tooltip="Hardening against adversarial prompts (after RECE): each round finds the input embedding that "
            "still reproduces the erased concept best and erases it too. 0 = off; -1 = RECE's defaults (nudity 3, "
            "other moderated concepts 2, erased artists and objects 1). Each round costs one more solve.",
        ),
        io.Float.Input(
            "harden_lamb",
            default=-1.0,
            min=-1.0,
            max=100.0,
            step=0.001,
            optional=True,
            tooltip="Regulariser lambda_adv of the adversarial embedding. -1 = RECE's defaults (0.1 for nudity, "
            "0.001 otherwise).",
        ),
    ]
