"""Random-weight LTX-Video, PixArt α / Σ and Cosmos Predict2 models (T5 text encoders) that the real ComfyUI runs.

These families read the text through per-block cross-attention K / V maps, like the SD UNets:

- `ltxv_model`: LTXVModel; the T5 rows go through a caption MLP (`caption_projection`: linear_1,
  GELU tanh, linear_2), then every block's `attn2.to_k` / `attn2.to_v` (with bias) read its output;
- `pixart_alpha_model` / `pixart_sigma_model`: PixArtMS; caption MLP `y_embedder.y_proj` (fc1, GELU
  tanh, fc2), then every block's `cross_attn.kv_linear` (K and V fused: weight [2·d, d], bias [2·d]);
- `cosmos_predict2_model`: MiniTrainDIT (text to image); every block's `cross_attn.k_proj` /
  `cross_attn.v_proj` (no bias) read the T5 rows directly.

Each builder returns a reduced MODEL + CLIP pair built in memory with ComfyUI's own model config,
diffusion model, tokenizer and text-encoder classes (the config's clip_target, with a T5 reduced to
`TINY_T5_CONFIG`; no file, no detection). Weights come from `tiny_models.init_text_dit_`
(`randomize_` seeded per tensor name; norms weight 1) with seeded non-zero biases of std
`TEXT_BIAS_STD` on every map that reads text or the caption MLP output (`text_maps`), and the T5
initialisation of `tiny_t5_families` (relative attention bias N(0, 1): rows depend on token order).
PixArt's unused `y_embedder.y_embedding` buffer (the learnt "null caption" of training-time caption
dropout, which ComfyUI allocates with an unseeded torch.randn) is refilled seeded.

What each family's text encoder does (`T5_LAYOUT`): tokenizer key "t5xxl", EOS 1 kept as a
token, pad 0 after it, then

- LTXV (ComfyUI's Mochi T5): padded to 128 tokens; T5 attention masked; padding rows not zeroed;
  the conditioning carries "attention_mask", and LTXV masks the padded keys in every attn2;
- PixArt: no padding (min_length 1), no mask: "a cat" gives 4 rows;
- Cosmos Predict2 (the "old" T5 v1.0 config: ReLU, not gated, d_model 1024): padded to 512 tokens;
  T5 attention masked and padding rows zeroed; the conditioning carries "attention_mask", which the
  Cosmos DiT does not read: its cross-attention sees the zero rows (K = V = 0, no bias).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from .comfy_env import import_comfyui
from .tiny_models import TinyFamilyModel, _seeded_normal, init_text_dit_, model_patcher
from .tiny_t5_families import TEXT_BIAS_STD, TINY_T5_CONFIG, _init_text_encoder_

FAMILIES = ("ltxv", "pixart_alpha", "pixart_sigma", "cosmos_predict2")
# comfy.supported_models class of each family.
CONFIG_CLASS = {
    "ltxv": "LTXV",
    "pixart_alpha": "PixArtAlpha",
    "pixart_sigma": "PixArtSigma",
    "cosmos_predict2": "CosmosT2IPredict2",
}

# Width 96: PixArt α's micro-conditioning (size and aspect-ratio embeddings of width // 3 each, added to
# the timestep embedding) needs a multiple of 3, and a width other than the T5's makes every text map
# non-square (a transposed map fails loudly).
DIT_WIDTH = 96
DIT_HEADS = 2
DIT_DEPTH = 2
T5_WIDTH = TINY_T5_CONFIG["d_model"]  # every family's caption / cross-attention input width here

# The caption MLP in front of the per-block maps (module names, in order); Cosmos has none.
TEXT_MLP = {
    "ltxv": ("caption_projection.linear_1", "caption_projection.linear_2"),
    "pixart_alpha": ("y_embedder.y_proj.fc1", "y_embedder.y_proj.fc2"),
    "pixart_sigma": ("y_embedder.y_proj.fc1", "y_embedder.y_proj.fc2"),
    "cosmos_predict2": (),
}
# The per-block maps that read the text (the caption MLP output, or the T5 rows): "{}" = block index.
CROSS_ATTENTION_MAPS = {
    "ltxv": ("transformer_blocks.{}.attn2.to_k", "transformer_blocks.{}.attn2.to_v"),
    "pixart_alpha": ("blocks.{}.cross_attn.kv_linear",),
    "pixart_sigma": ("blocks.{}.cross_attn.kv_linear",),
    "cosmos_predict2": ("blocks.{}.cross_attn.k_proj", "blocks.{}.cross_attn.v_proj"),
}
# Smallest square image (px, EmptyLatentImage) that ComfyUI's PixArtMS samples (see pixart_alpha_model).
PIXART_MIN_SIZE = 272

# Patcher keys of the per-block text K / V weights, for any of these families.
CROSS_ATTENTION_KEY = re.compile(
    r"^diffusion_model\.(transformer_blocks\.\d+\.attn2\.to_[kv]|blocks\.\d+\.cross_attn\.(kv_linear|[kv]_proj))\.weight$"
)


@dataclass(frozen=True)
class T5Layout:
    """How a family's ComfyUI text encoder lays out the T5 rows.

    tokenizer_key: the key of `clip.tokenize(text)`'s dict. eos / pad: token ids (EOS ends the
    prompt and is encoded; pad follows it). min_length: tokens padded up to (1: no padding).
    attention_mask: T5 masks the padding in its own attention and CLIPTextEncode's conditioning
    carries "attention_mask" [1, tokens]. zero_padding: the rows after EOS are set to zero.
    dit_masks_padding: the diffusion model masks the padded keys in its cross-attention.
    """

    tokenizer_key: str
    min_length: int
    attention_mask: bool
    zero_padding: bool
    dit_masks_padding: bool
    eos: int = 1
    pad: int = 0


T5_LAYOUT = {
    "ltxv": T5Layout("t5xxl", min_length=128, attention_mask=True, zero_padding=False, dit_masks_padding=True),
    "pixart_alpha": T5Layout("t5xxl", min_length=1, attention_mask=False, zero_padding=False, dit_masks_padding=False),
    "pixart_sigma": T5Layout("t5xxl", min_length=1, attention_mask=False, zero_padding=False, dit_masks_padding=False),
    "cosmos_predict2": T5Layout(
        "t5xxl", min_length=512, attention_mask=True, zero_padding=True, dit_masks_padding=False
    ),
}


def ltxv_unet_config() -> dict:
    """The unet_config of the tiny LTX-Video DiT (keys as comfy.model_detection writes them, plus sizes).

    Width 2 heads x 48 = 96, 2 blocks, 128 latent channels (LTXV's VAE), caption_channels = the tiny
    T5 width; cross_attention_dim (attn2's K / V input) is the model width, as in the real model:
    attn2 reads the caption MLP output, not the T5 rows.
    """
    return {
        "image_model": "ltxv",
        "in_channels": 128,
        "num_layers": DIT_DEPTH,
        "num_attention_heads": DIT_HEADS,
        "attention_head_dim": DIT_WIDTH // DIT_HEADS,
        "cross_attention_dim": DIT_WIDTH,
        "caption_channels": T5_WIDTH,
    }


def pixart_unet_config(sigma: bool = False) -> dict:
    """The unet_config of the tiny PixArt α (or Σ) DiT (detection's keys, smaller sizes).

    Width 96, 2 heads, depth 2, patch 2, 4 latent channels, caption_channels = the tiny T5 width;
    α has the size / aspect-ratio micro-conditioning, Σ not. model_max_length (120 / 300) only
    sizes the unused y_embedding buffer. pe_interpolation None: computed from the latent size at
    each call, as for checkpoints without a stored pos_embed.
    """
    return {
        "image_model": "pixart_sigma" if sigma else "pixart_alpha",
        "patch_size": 2,
        "in_channels": 4,
        "hidden_size": DIT_WIDTH,
        "depth": DIT_DEPTH,
        "num_heads": DIT_HEADS,
        "caption_channels": T5_WIDTH,
        "model_max_length": 300 if sigma else 120,
        "micro_condition": not sigma,
    }


def cosmos_predict2_unet_config() -> dict:
    """The unet_config of the tiny Cosmos Predict2 text-to-image DiT (detection's keys for in_channels 16).

    model_channels 96, 2 heads of 48, 2 blocks, AdaLN-LoRA of rank 32 (real: 256);
    crossattn_emb_channels = the tiny T5 width (real: 1024, the old T5's d_model).
    """
    return {
        "image_model": "cosmos_predict2",
        "max_img_h": 240,
        "max_img_w": 240,
        "max_frames": 128,
        "in_channels": 16,
        "out_channels": 16,
        "patch_spatial": 2,
        "patch_temporal": 1,
        "model_channels": DIT_WIDTH,
        "concat_padding_mask": True,
        "crossattn_emb_channels": T5_WIDTH,
        "pos_emb_cls": "rope3d",
        "pos_emb_learnable": True,
        "pos_emb_interpolation": "crop",
        "min_fps": 1,
        "max_fps": 30,
        "use_adaln_lora": True,
        "adaln_lora_dim": 32,
        "num_blocks": DIT_DEPTH,
        "num_heads": DIT_HEADS,
        "extra_per_block_abs_pos_emb": False,
        "rope_h_extrapolation_ratio": 4.0,
        "rope_w_extrapolation_ratio": 4.0,
        "rope_t_extrapolation_ratio": 1.0,
        "extra_h_extrapolation_ratio": 1.0,
        "extra_w_extrapolation_ratio": 1.0,
        "extra_t_extrapolation_ratio": 1.0,
        "rope_enable_fps_modulation": False,
    }


def ltxv_model(seed: int = 0) -> TinyFamilyModel:
    """Build a reduced random LTX-Video MODEL + CLIP in memory (family "ltxv").

    Model config comfy.supported_models.LTXV with `ltxv_unet_config()` (0.43 M parameters). Text
    path: caption_projection.linear_1 [96, 64] + bias, GELU tanh, linear_2 [96, 96] + bias, then
    transformer_blocks.{0,1}.attn2.to_k / to_v [96, 96] + bias (K then goes through attn2's RMSNorm
    k_norm over all 96 channels; V is not normalised). CLIP: the config's clip_target,
    ComfyUI's LTXVT5Tokenizer / ltxv_te (Mochi's T5 class: T5 v1.1, gated GELU) with a T5 of
    d_model 64 (2 layers). "a cat" encodes to cond [1, 128, 64] with attention_mask [1, 128]
    (ones for "▁", "a", "▁cat", EOS) and no pooled output. LTXVModel.forward takes the mask as a
    required argument: conditioning without "attention_mask" fails to sample (TypeError).
    """
    import_comfyui()
    import comfy.supported_models

    return _build("ltxv", comfy.supported_models.LTXV, ltxv_unet_config(), seed)


def pixart_alpha_model(seed: int = 0) -> TinyFamilyModel:
    """Build a reduced random PixArt α MODEL + CLIP in memory (family "pixart_alpha").

    Model config comfy.supported_models.PixArtAlpha (SD1.5 latents, EPS prediction) with
    `pixart_unet_config()` (0.43 M parameters). Text path: y_embedder.y_proj.fc1 [96, 64] + bias,
    GELU tanh, fc2 [96, 96] + bias, then blocks.{0,1}.cross_attn.kv_linear [192, 96] + bias (rows
    0-95 K, 96-191 V; no norm, no mask). CLIP: the config's clip_target, ComfyUI's PixArtTokenizer / PixArtT5XXL
    (T5 v1.1) with a T5 of d_model 64 (2 layers). "a cat" encodes to cond [1, 4, 64] (no padding)
    and no pooled output.

    Sample at `PIXART_MIN_SIZE` px or more: ComfyUI's PixArtMS builds its sin-cos position table with
    base size round(c / 64) * 64 / 2 and interpolation round(c / 64), c = (latent H + W) // 2, which
    divide by zero (ZeroDivisionError) for latents under 33 x 33, i.e. images under 264 px; the
    latent must also be even (patch 2).
    """
    import_comfyui()
    import comfy.supported_models

    return _build("pixart_alpha", comfy.supported_models.PixArtAlpha, pixart_unet_config(), seed)


def pixart_sigma_model(seed: int = 0) -> TinyFamilyModel:
    """Build a reduced random PixArt Σ MODEL + CLIP in memory (family "pixart_sigma").

    As `pixart_alpha_model`, with comfy.supported_models.PixArtSigma (SDXL latents) and no
    micro-conditioning (no csize_embedder / ar_embedder; 0.41 M parameters).
    """
    import_comfyui()
    import comfy.supported_models

    return _build("pixart_sigma", comfy.supported_models.PixArtSigma, pixart_unet_config(sigma=True), seed)


def cosmos_predict2_model(seed: int = 0) -> TinyFamilyModel:
    """Build a reduced random Cosmos Predict2 text-to-image MODEL + CLIP in memory (family "cosmos_predict2").

    Model config comfy.supported_models.CosmosT2IPredict2 (Wan 2.1 latents, 16 channels, 3-D) with
    `cosmos_predict2_unet_config()` (0.42 M parameters). Text path: blocks.{0,1}.cross_attn.k_proj /
    v_proj [96, 64], no bias, reading the T5 rows directly (K then goes through a per-head RMSNorm k_norm). CLIP: the
    config's clip_target, ComfyUI's CosmosT5Tokenizer / cosmos.te() (the old T5 config: ReLU, not
    gated) with a T5 of d_model 64 (2 layers). "a cat" encodes to cond [1, 512, 64], rows 4-511
    zero, attention_mask [1, 512], and no pooled output.
    """
    import_comfyui()
    import comfy.supported_models

    return _build("cosmos_predict2", comfy.supported_models.CosmosT2IPredict2, cosmos_predict2_unet_config(), seed)


def family_of(model: Any) -> str:
    """The family name of a MODEL (ModelPatcher) or TinyFamilyModel of these families, from its config class."""
    if isinstance(model, TinyFamilyModel):
        model = model.model
    name = type(model.model.model_config).__name__
    for family, class_name in CONFIG_CLASS.items():
        if class_name == name:
            return family
    raise ValueError(f"{name} is not one of {sorted(CONFIG_CLASS.values())}")


def text_maps(family: str, depth: int = DIT_DEPTH) -> tuple[str, ...]:
    """Module names of every map that reads text or the caption MLP output: the MLP, then each block's maps."""
    per_block = tuple(name.format(i) for i in range(depth) for name in CROSS_ATTENTION_MAPS[family])
    return TEXT_MLP[family] + per_block


def cross_attention_keys(model: Any) -> list[str]:
    """The sorted patcher keys ("diffusion_model.….weight") of a MODEL's per-block text K / V maps.

    `model`: a ModelPatcher (or TinyFamilyModel) of these families: LTXV attn2.to_k / to_v, PixArt
    cross_attn.kv_linear (K and V fused), Cosmos Predict2 cross_attn.k_proj / v_proj.
    """
    if isinstance(model, TinyFamilyModel):
        model = model.model
    return sorted(key for key in model.model_state_dict("diffusion_model.") if CROSS_ATTENTION_KEY.match(key))


def _build(family: str, config_class: type, unet_config: dict, seed: int) -> TinyFamilyModel:
    """MODEL + CLIP of one family: the DiT from its config class, the CLIP from the config's clip_target."""
    import comfy.sd

    model = model_patcher(config_class, unet_config, lambda dit: _init_dit_(dit, family, seed))
    clip_target = config_class(unet_config).clip_target()
    clip = comfy.sd.CLIP(clip_target, model_options={"t5xxl_model_config": dict(TINY_T5_CONFIG)})
    _init_text_encoder_(clip.cond_stage_model, family, seed)
    return TinyFamilyModel(model=model, clip=clip, family=family)


def _init_dit_(diffusion_model: torch.nn.Module, family: str, seed: int) -> None:
    """init_text_dit_ with every text map's bias seeded; PixArt's y_embedding buffer seeded too."""
    tag = f"{family}.dit"
    depth = len(getattr(diffusion_model, "transformer_blocks", None) or diffusion_model.blocks)
    init_text_dit_(diffusion_model, seed, tag, text_maps(family, depth), bias_std=TEXT_BIAS_STD)
    y_embedder = getattr(diffusion_model, "y_embedder", None)
    if y_embedder is not None:
        with torch.no_grad():
            table = y_embedder.y_embedding
            table.copy_(_seeded_normal(table.shape, table.shape[-1] ** -0.5, seed, f"{tag}.y_embedder.y_embedding"))
