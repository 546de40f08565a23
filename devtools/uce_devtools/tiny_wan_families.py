"""Random-weight WAN video models (Wan 2.1 T2V / I2V, Wan 2.2 TI2V-5B) with their UMT5 text encoder.

- `wan21_t2v_model` / `wan21_i2v_model` / `wan22_ti2v_model`: reduced MODEL + CLIP pairs built in
  memory with ComfyUI's own model configs (comfy.supported_models.WAN21_T2V / WAN21_I2V /
  WAN22_T2V), WanModel DiT, tokenizer and text-encoder classes (no file, no detection: ComfyUI's
  WAN detection fixes heads of 128 channels and the 4096-wide UMT5, so a state dict could not be
  this small).
- `clip_vision_output`: a CLIP_VISION_OUTPUT (comfy.clip_vision.Output) of random CLIP-H
  penultimate features, the image context of the I2V model (WanImageToVideo's input).

The text encoder is ComfyUI's WAN UMT5-XXL class (comfy/text_encoders/wan.py, tokenizer key
"umt5xxl") with `TINY_UMT5_CONFIG` (vocabulary 256384 kept) and the SentencePiece model of
`tiny_llm_families.tiny_gemma_spiece_model()`, whose special ids are the ones UMT5 uses: pad 0,
EOS 1. Prompts get no start token, EOS, then pad 0 up to 512 tokens; the rows after EOS are zero
(ComfyUI's zero_out_masked), and WAN's text_embedding MLP turns them into bias-only rows.

Weights come from `tiny_models.init_text_dit_` (seeded per tensor name: RMSNorm weights 1, norms
weight 1 / bias 0) with seeded non-zero biases of std `TEXT_BIAS_STD` on the maps that read text:
`WAN_TEXT_EMBEDDING` (the text MLP) and every block's cross_attn.k / .v. The UMT5's per-layer
relative attention biases (its only position signal) are N(0, T5_RELATIVE_BIAS_STD), as in
`tiny_t5_families`, so its rows depend on token order.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .comfy_env import import_comfyui
from .tiny_llm_families import tiny_gemma_spiece_model
from .tiny_models import TinyFamilyModel, _seeded_normal, init_text_dit_, model_patcher
from .tiny_t5_families import _init_text_encoder_

DIT_WIDTH = 64
DIT_HEADS = 2  # 32 channels per head: rope axes 12 / 10 / 10 (ComfyUI splits d - 4·(d//6), 2·(d//6), 2·(d//6))
DIT_LAYERS = 2
DIT_FFN = 128

# Overrides of ComfyUI's umt5_config_xxl.json (vocabulary 256384 kept; UMT5: one relative
# attention bias per layer, gated GELU feed-forward). d_model 32 (the DiT's text_dim) differs from
# the DiT width 64, as text_dim 4096 differs from dim in the released models, so text_embedding.0
# is not square and a transposed weight cannot go unnoticed.
TINY_UMT5_CONFIG = {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 4, "num_layers": 2}
UMT5_MIN_LENGTH = 512  # UMT5XXlTokenizer pads every prompt to 512 tokens

# WAN's text MLP (Linear text_dim -> dim, GELU tanh, Linear dim -> dim) in front of every block's
# cross-attention k / v.
WAN_TEXT_EMBEDDING = ("text_embedding.0", "text_embedding.2")
TEXT_BIAS_STD = 0.25

CLIP_VISION_WIDTH = 1280  # CLIP-H penultimate features read by the I2V model's img_emb
CLIP_VISION_TOKENS = 257

_CROSS_ATTENTION_KEY = re.compile(r"^diffusion_model\.blocks\.(\d+)\.cross_attn\.([kv])\.weight$")


def wan_unet_config(model_type: str = "t2v", in_dim: int = 16, out_dim: int = 16) -> dict:
    """The unet_config of a tiny WanModel, with the keys comfy.model_detection writes for WAN.

    Width 64, 2 heads, 2 blocks, feed-forward 128, time embedding of 256 frequencies, patches
    1 x 2 x 2, QK RMSNorms and the cross-attention LayerNorm (norm3) like every released WAN;
    text_dim is the tiny UMT5's d_model.
    """
    return {
        "image_model": "wan2.1",
        "model_type": model_type,
        "dim": DIT_WIDTH,
        "ffn_dim": DIT_FFN,
        "freq_dim": 256,
        "text_dim": TINY_UMT5_CONFIG["d_model"],
        "num_heads": DIT_HEADS,
        "num_layers": DIT_LAYERS,
        "in_dim": in_dim,
        "out_dim": out_dim,
        "patch_size": (1, 2, 2),
        "window_size": (-1, -1),
        "qk_norm": True,
        "cross_attn_norm": True,
        "eps": 1e-6,
    }


def wan21_t2v_model(seed: int = 0) -> TinyFamilyModel:
    """Build a reduced random Wan 2.1 text-to-video MODEL + CLIP in memory (family "wan21_t2v").

    Model config comfy.supported_models.WAN21_T2V (model_base.WAN21, flow, shift 8, Wan21 latent
    format: 16 channels, 8 x spatial / 4 x temporal); WanModel of `wan_unet_config()`: 16 -> 16
    channels (0.16 M parameters). Text maps: text_embedding.0 [64, 32] + bias, text_embedding.2
    [64, 64] + bias, then per block cross_attn.k / .v [64, 64] + bias. CLIP: see `wan_clip`;
    "a cat" encodes to cond [1, 512, 32] (3 non-zero rows: "▁a", "▁cat", EOS; no attention mask)
    and no pooled output (None).
    """
    import_comfyui()
    import comfy.supported_models

    return _build("wan21_t2v", comfy.supported_models.WAN21_T2V, wan_unet_config("t2v", 16, 16), seed)


def wan21_i2v_model(seed: int = 0) -> TinyFamilyModel:
    """Build a reduced random Wan 2.1 image-to-video MODEL + CLIP in memory (family "wan21_i2v").

    Model config comfy.supported_models.WAN21_I2V (model_base.WAN21 with image_to_video): input
    36 = 16 noise + 4 mask + 16 image-latent channels, output 16. Cross-attention is WAN's I2V
    kind: besides k / v on the text rows, k_img / v_img [64, 64] (+ norm_k_img) on the image
    context, which img_emb (LayerNorm, Linear 1280 x 1280, GELU, Linear 1280 -> 64, LayerNorm)
    makes from CLIP-H penultimate features (see `clip_vision_output`; 1.9 M parameters, 1.7 M of
    them img_emb). Only the text maps get seeded biases; k_img / v_img biases are 0. Same CLIP as
    `wan21_t2v_model`.
    """
    import_comfyui()
    import comfy.supported_models

    return _build("wan21_i2v", comfy.supported_models.WAN21_I2V, wan_unet_config("i2v", 36, 16), seed)


def wan22_ti2v_model(seed: int = 0) -> TinyFamilyModel:
    """Build a reduced random Wan 2.2 TI2V-5B MODEL + CLIP in memory (family "wan22_ti2v").

    Model config comfy.supported_models.WAN22_T2V (what ComfyUI detects for TI2V-5B: a "t2v"
    WanModel with out_dim 48; model_base.WAN22 with per-token timesteps from a noise mask, Wan22
    latent format: 48 channels, 16 x spatial / 4 x temporal); WanModel 48 -> 48 channels, text
    maps as `wan21_t2v_model` (0.18 M parameters). Same CLIP as `wan21_t2v_model` (the 2.2 models
    use the same UMT5-XXL).
    """
    import_comfyui()
    import comfy.supported_models

    return _build("wan22_ti2v", comfy.supported_models.WAN22_T2V, wan_unet_config("t2v", 48, 48), seed)


def wan_clip(seed: int = 0, family: str = "wan21_t2v") -> Any:
    """ComfyUI's WAN text encoder (WAN21_T2V.clip_target(): WanT5Tokenizer / wan.te()), reduced.

    comfy.sd.CLIP in float32 (ComfyUI's CPU default would be fp16) with a UMT5 of
    `TINY_UMT5_CONFIG` (d_model 32, 2 layers, 4 heads of 16, gated-GELU feed-forward 64, one
    relative attention bias per layer; 8.2 M parameters, nearly all the 256384-token embedding)
    and `tiny_gemma_spiece_model()` as tokenizer. Weights seeded by (seed, family).
    """
    import_comfyui()
    import comfy.sd
    import comfy.supported_models

    target = comfy.supported_models.WAN21_T2V(wan_unet_config()).clip_target()
    options = {"dtype": torch.float32, "umt5xxl_model_config": dict(TINY_UMT5_CONFIG)}
    clip = comfy.sd.CLIP(target, model_options=options, tokenizer_data={"spiece_model": tiny_gemma_spiece_model()})
    _init_text_encoder_(clip.cond_stage_model, family, seed)
    return clip


def clip_vision_output(seed: int = 0, batch: int = 1) -> Any:
    """A CLIP_VISION_OUTPUT with seeded N(0, 1) penultimate_hidden_states [batch, 257, 1280].

    The I2V model reads only this field (model_base.WAN21.extra_conds: clip_fea); pass it to
    WanImageToVideo's clip_vision_output input.
    """
    import_comfyui()
    import comfy.clip_vision

    output = comfy.clip_vision.Output()
    shape = (batch, CLIP_VISION_TOKENS, CLIP_VISION_WIDTH)
    output["penultimate_hidden_states"] = _seeded_normal(shape, 1.0, seed, "wan.clip_vision.penultimate")
    return output


def text_map_names(num_layers: int = DIT_LAYERS) -> tuple[str, ...]:
    """Module names of the maps that read text: WAN_TEXT_EMBEDDING, then each block's cross_attn.k, .v."""
    blocks = tuple(f"blocks.{i}.cross_attn.{kv}" for i in range(num_layers) for kv in "kv")
    return WAN_TEXT_EMBEDDING + blocks


def cross_attention_keys(model: Any) -> tuple[str, ...]:
    """Patcher keys ``diffusion_model.blocks.N.cross_attn.{k,v}.weight`` of a WAN MODEL, sorted.

    Sorted by block number, k before v (the same order as sorted() below 10 blocks). The image
    context maps of I2V models (k_img / v_img) are not included.
    """
    matches = (_CROSS_ATTENTION_KEY.match(key) for key in model.model_state_dict())
    return tuple(m.group(0) for m in sorted((m for m in matches if m), key=lambda m: (int(m.group(1)), m.group(2))))


def _build(family: str, config_class: type, unet_config: dict, seed: int) -> TinyFamilyModel:
    """MODEL (seeded text-map biases, unit RMSNorm weights) + the WAN CLIP of one family."""
    names = text_map_names(unet_config["num_layers"])
    model = model_patcher(
        config_class,
        unet_config,
        lambda dit: init_text_dit_(dit, seed, f"{family}.dit", names, bias_std=TEXT_BIAS_STD),
    )
    return TinyFamilyModel(model=model, clip=wan_clip(seed, family), family=family)
