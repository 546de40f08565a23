"""Random-weight Flux, Chroma and SD3 models (text encoders CLIP and T5) that the real ComfyUI runs.

- `flux_model` / `chroma_model` / `sd3_model`: reduced MODEL + CLIP pairs built in memory with
  ComfyUI's own model configs, DiTs, tokenizers and text-encoder classes (no file, no detection:
  ComfyUI's Flux / Chroma detection fixes 24 heads of 128 channels, hence width 3072).
- `tiny_sd3_checkpoint`: a .safetensors file that CheckpointLoaderSimple detects as SD3 (depth 2).

Weights come from `tiny_models.randomize_` (seeded per tensor name), then a few fixes:

- the maps that first read the encoder rows (`TEXT_MAPS`) get seeded non-zero biases of std
  `TEXT_BIAS_STD` (their outputs W·x have std about 1 for unit-RMS encoder rows);
- RMSNorm `scale` vectors (Flux / Chroma QK norms, Chroma's guidance approximator) are 1, not random;
- SD3's `pos_embed` buffer holds ComfyUI's 2D sin-cos embedding (randomize_ leaves buffers empty);
- T5's relative attention bias (T5's only position signal) is N(0, 1), not randomize_'s 0.02 for
  embeddings, so T5 rows depend on token order and not only on the set of tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .comfy_env import import_comfyui
from .paths import CACHE_DIR
from .tiny_models import (
    TINY_MODELS_VERSION,
    TinyFamilyModel,
    _generator,
    _save_safetensors_atomic,
    init_text_dit_,
    model_patcher,
    randomize_,
)

DIT_WIDTH = 64
CLIP_LAYERS = 3

# T5 overrides of ComfyUI's t5_config_xxl.json (vocabulary 32128 kept: ComfyUI's bundled tokenizer).
TINY_T5_CONFIG = {"d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2}
# SD3 joins CLIP rows zero-padded to 4096 with the T5 rows, so its T5 keeps d_model 4096.
SD3_T5_CONFIG = {"d_model": 4096, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 1}

SD3_DEPTH = 2
SD3_POS_EMBED_MAX_SIZE = 32  # patches per side: latents up to 64 x 64 (512 px images)

# Modules of each family's diffusion model that read the encoder rows / the pooled vector first.
TEXT_MAPS = {
    "flux": ("txt_in", "vector_in.in_layer"),
    "chroma": ("txt_in",),
    "sd3": ("context_embedder", "y_embedder.mlp.0"),
}
TEXT_BIAS_STD = 0.25
T5_RELATIVE_BIAS_STD = 1.0

# TAESD latent scale of the tiny SD3 VAE (see _tiny_taesd).
SD3_TAESD_VAE_SCALE = 2.0

# Bump (with or without TINY_MODELS_VERSION) whenever tiny_sd3_checkpoint writes something else.
SD3_CHECKPOINT_REVISION = 2


def flux_unet_config(schnell: bool = False) -> dict:
    """The unet_config of the tiny Flux DiT (keys as comfy.model_detection writes them for Flux)."""
    return {
        "image_model": "flux",
        "in_channels": 16,
        "out_channels": 16,
        "patch_size": 2,
        "vec_in_dim": 768,
        "context_in_dim": TINY_T5_CONFIG["d_model"],
        "hidden_size": DIT_WIDTH,
        "mlp_ratio": 4.0,
        "num_heads": 2,
        "depth": 1,
        "depth_single_blocks": 1,
        "axes_dim": [8, 12, 12],
        "theta": 10000,
        "qkv_bias": True,
        "guidance_embed": not schnell,
    }


def chroma_unet_config() -> dict:
    """The unet_config of the tiny Chroma DiT.

    Chroma patchifies before img_in (in/out channels 16 * 2 * 2 = 64). Its guidance approximator
    reads 64 = 16 (timestep) + 16 (guidance) + 32 (modulation index) features and writes the
    344 modulation vectors at the model width (out_dim = hidden_size).
    """
    return {
        "image_model": "chroma",
        "in_channels": 64,
        "out_channels": 64,
        "patch_size": 2,
        "context_in_dim": TINY_T5_CONFIG["d_model"],
        "hidden_size": DIT_WIDTH,
        "mlp_ratio": 4.0,
        "num_heads": 2,
        "depth": 1,
        "depth_single_blocks": 1,
        "axes_dim": [8, 12, 12],
        "theta": 10000,
        "qkv_bias": True,
        "in_dim": 64,
        "out_dim": DIT_WIDTH,
        "hidden_dim": 2 * DIT_WIDTH,
        "n_layers": 2,
    }


def sd3_unet_config() -> dict:
    """The unet_config that comfy.model_detection reads back from the tiny SD3 checkpoint.

    MMDiT depth 2: width 64 * depth = 128, 2 heads; pooled input 2048 (CLIP-L 768 + CLIP-G 1280);
    context_embedder Linear(4096 -> 128); learned-position table of 32 x 32 patches.
    """
    width = 64 * SD3_DEPTH
    return {
        "in_channels": 16,
        "patch_size": 2,
        "out_channels": 16,
        "depth": SD3_DEPTH,
        "input_size": None,
        "adm_in_channels": 2048,
        "context_embedder_config": {
            "target": "torch.nn.Linear",
            "params": {"in_features": 4096, "out_features": width},
        },
        "num_patches": SD3_POS_EMBED_MAX_SIZE**2,
        "pos_embed_max_size": SD3_POS_EMBED_MAX_SIZE,
        "pos_embed_scaling_factor": None,
        "x_block_self_attn_layers": [],
    }


def flux_model(seed: int = 0, schnell: bool = False) -> TinyFamilyModel:
    """Build a reduced random Flux.1 dev (or schnell) MODEL + CLIP in memory (family "flux").

    Model config comfy.supported_models.Flux (FluxSchnell when `schnell`); DiT of width 64, 2 heads,
    one double and one single block, guidance embedding for dev (0.33 M parameters).
    Text maps: txt_in [64, 64] + bias (T5 rows), vector_in.in_layer [64, 768] + bias (CLIP-L
    pooled). CLIP: ComfyUI's FluxTokenizer / flux_clip: CLIP-L (width 768, 3 layers, 60 M
    parameters, used for the pooled vector only) and a T5 of d_model 64 (2 layers, 2.1 M
    parameters, of which 2.06 M is the 32128-token embedding). "a cat" encodes to cond [1, 256, 64]
    (T5 padded to 256 tokens, no attention mask) and pooled [1, 768].
    """
    import_comfyui()
    import comfy.supported_models
    import comfy.text_encoders.flux
    from comfy.supported_models_base import ClipTarget

    config_class = comfy.supported_models.FluxSchnell if schnell else comfy.supported_models.Flux
    target = ClipTarget(comfy.text_encoders.flux.FluxTokenizer, comfy.text_encoders.flux.flux_clip())
    clip_options = {
        "clip_l_model_config": {"num_hidden_layers": CLIP_LAYERS},
        "t5xxl_model_config": dict(TINY_T5_CONFIG),
    }
    return _build("flux", config_class, flux_unet_config(schnell), target, clip_options, seed)


def chroma_model(seed: int = 0) -> TinyFamilyModel:
    """Build a reduced random Chroma MODEL + CLIP in memory (family "chroma").

    Model config comfy.supported_models.Chroma; DiT of width 64, 2 heads, one double and one single
    block, guidance approximator 64 -> 128 (2 layers) -> 64 (0.24 M parameters). Text map:
    txt_in [64, 64] + bias; no pooled input. CLIP: ComfyUI's PixArtTokenizer / pixart_te (T5 only,
    no padding: "a cat" gives 4 tokens with EOS) with a T5 of d_model 64 (2 layers, 2.1 M
    parameters). "a cat" encodes to cond [1, 4, 64] and no pooled output (None).
    """
    import_comfyui()
    import comfy.supported_models
    import comfy.text_encoders.pixart_t5
    from comfy.supported_models_base import ClipTarget

    target = ClipTarget(comfy.text_encoders.pixart_t5.PixArtTokenizer, comfy.text_encoders.pixart_t5.pixart_te())
    clip_options = {"t5xxl_model_config": dict(TINY_T5_CONFIG)}
    return _build("chroma", comfy.supported_models.Chroma, chroma_unet_config(), target, clip_options, seed)


def sd3_model(seed: int = 0) -> TinyFamilyModel:
    """Build a reduced random SD3 MODEL + CLIP in memory (family "sd3").

    Model config comfy.supported_models.SD3 with `sd3_unet_config()` (MMDiT depth 2, width 128,
    1.9 M parameters). Text maps: context_embedder [128, 4096] + bias (CLIP-L‖G and T5
    rows), y_embedder.mlp.0 [128, 2048] + bias (pooled). On the CPU (float32), the same DiT
    weights as `tiny_sd3_checkpoint(seed=seed)` (there rounded to fp16). CLIP: ComfyUI's
    SD3Tokenizer / sd3_clip with CLIP-L (768, 3 layers, layer -2; 60 M parameters), CLIP-G
    (1280, 3 layers, penultimate; 124 M) and a T5 of d_model 4096 with one tiny layer (d_ff 64,
    2 heads of 16; 133 M, nearly all the 32128 x 4096 embedding): 317 M parameters (fp16,
    ComfyUI's CPU text-encoder dtype: 0.63 GB). "a cat" encodes to cond [1, 77 + 77, 4096]
    (CLIP-L‖G rows zero-padded to 4096, then the T5 rows) and pooled [1, 2048].
    """
    import_comfyui()
    import comfy.supported_models
    import comfy.text_encoders.sd3_clip
    from comfy.supported_models_base import ClipTarget

    target = ClipTarget(
        comfy.text_encoders.sd3_clip.SD3Tokenizer,
        comfy.text_encoders.sd3_clip.sd3_clip(clip_l=True, clip_g=True, t5=True),
    )
    clip_options = {
        "clip_l_model_config": {"num_hidden_layers": CLIP_LAYERS},
        "clip_g_model_config": {"num_hidden_layers": CLIP_LAYERS},
        "t5xxl_model_config": dict(SD3_T5_CONFIG),
    }
    return _build("sd3", comfy.supported_models.SD3, sd3_unet_config(), target, clip_options, seed)


def tiny_sd3_checkpoint(path: str | Path | None = None, seed: int = 0) -> Path:
    """Write (if missing) a tiny random SD3 checkpoint and return its path.

    Diffusion model: the DiT of `sd3_model(seed)` under `model.diffusion_model.` (detected as SD3:
    depth 2 -> width 128). Text encoder: the full CLIP-L (ComfyUI's fixed 12-layer config, 123 M
    parameters) under `text_encoders.clip_l.`, no CLIP-G / T5, so ComfyUI builds
    sd3_clip(clip_l=True, clip_g=False, t5=False): cond [1, 77, 4096], pooled [1, 2048] (G part
    zero). VAE: a TAESD with 16 latent channels under SD3's VAE prefix `first_stage_model.`.
    All fp16, about 250 MB. Default path:
    <repo>/.cache/checkpoints/uce-tiny-sd3-<version>.<revision>-s<seed>.safetensors. Written
    atomically.
    """
    if path is None:
        name = f"uce-tiny-sd3-{TINY_MODELS_VERSION}.{SD3_CHECKPOINT_REVISION}-s{seed}.safetensors"
        path = CACHE_DIR / "checkpoints" / name
    path = Path(path)
    if path.is_file():
        return path
    state_dict = _tiny_sd3_state_dict(seed)
    info = {"family": "sd3", "version": TINY_MODELS_VERSION, "revision": SD3_CHECKPOINT_REVISION, "seed": seed}
    metadata = {"uce_tiny_model": json.dumps(info)}
    _save_safetensors_atomic(state_dict, path, metadata)
    return path


def text_map_keys(family: str) -> tuple[str, ...]:
    """Patcher keys ("diffusion_model.….weight") of a family's text maps (see TEXT_MAPS)."""
    return tuple(f"diffusion_model.{name}.weight" for name in TEXT_MAPS[family])


def _build(
    family: str, config_class: type, unet_config: dict, clip_target: Any, clip_options: dict, seed: int
) -> TinyFamilyModel:
    """MODEL + CLIP of one family: the DiT from its config class, the CLIP from ``clip_target``."""
    import comfy.sd

    model = model_patcher(config_class, unet_config, lambda dit: _init_dit_(dit, family, seed))
    clip = comfy.sd.CLIP(clip_target, model_options=clip_options)
    _init_text_encoder_(clip.cond_stage_model, family, seed)
    return TinyFamilyModel(model=model, clip=clip, family=family)


def _init_dit_(diffusion_model: torch.nn.Module, family: str, seed: int) -> None:
    """init_text_dit_ (seeded text-map biases, unit RMSNorm scales), then (SD3) the position table."""
    init_text_dit_(diffusion_model, seed, f"{family}.dit", TEXT_MAPS[family], bias_std=TEXT_BIAS_STD)
    pos_embed = getattr(diffusion_model, "pos_embed", None)
    if pos_embed is not None:
        with torch.no_grad():
            pos_embed.copy_(_sd3_pos_embed(diffusion_model.hidden_size, diffusion_model.pos_embed_max_size))


def _sd3_pos_embed(width: int, size: int) -> torch.Tensor:
    """ComfyUI's 2D sin-cos position embedding for a size x size patch grid, shape [1, size², width]."""
    from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed_torch

    return get_2d_sincos_pos_embed_torch(width, size, size).unsqueeze(0)


def _init_text_encoder_(text_encoder: torch.nn.Module, family: str, seed: int) -> None:
    """randomize_ a CLIP's cond_stage_model; T5 relative attention biases N(0, T5_RELATIVE_BIAS_STD)."""
    tag = f"{family}.clip"
    randomize_(text_encoder, seed, tag)
    with torch.no_grad():
        for name, param in text_encoder.named_parameters():
            if name.endswith("relative_attention_bias.weight"):
                values = torch.randn(param.shape, generator=_generator(seed, f"{tag}.{name}"))
                param.copy_(values * T5_RELATIVE_BIAS_STD)


def _tiny_sd3_state_dict(seed: int) -> dict[str, torch.Tensor]:
    import_comfyui()
    import comfy.supported_models
    import comfy.text_encoders.sd3_clip

    model_config = comfy.supported_models.SD3(sd3_unet_config())
    model_config.set_inference_dtype(torch.float32, None)
    dit = model_config.get_model({}, "", device=torch.device("cpu")).diffusion_model
    _init_dit_(dit, "sd3", seed)
    text_encoder = comfy.text_encoders.sd3_clip.sd3_clip(clip_l=True, clip_g=False, t5=False)(
        device="cpu", dtype=torch.float16
    )
    _init_text_encoder_(text_encoder, "sd3", seed)
    taesd = _tiny_taesd(seed, latent_channels=16, vae_scale=SD3_TAESD_VAE_SCALE)

    state_dict = {}
    state_dict.update(model_config.process_unet_state_dict_for_saving(dit.state_dict()))
    state_dict.update(model_config.process_clip_state_dict_for_saving(text_encoder.state_dict()))
    state_dict.update(model_config.process_vae_state_dict_for_saving(taesd.state_dict()))
    return {key: value.to(torch.float16).contiguous() for key, value in state_dict.items()}


def _tiny_taesd(seed: int, latent_channels: int, vae_scale: float) -> torch.nn.Module:
    """Random TAESD whose decoded images are mid-grey with visible structure, not clipped to 0/1.

    `vae_scale` (TAESD's own latent scale, 1.0 in the real one) brings the sampled latents into the
    range of its tanh clamp; the last decoder conv is rescaled (bias 0.5) so that the image std is
    about 0.2.
    """
    import comfy.taesd.taesd

    taesd = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    randomize_(taesd, seed, f"taesd{latent_channels}", gain=math.sqrt(2.0))
    with torch.no_grad():
        taesd.vae_scale.fill_(vae_scale)
        probe = torch.randn((1, latent_channels, 16, 16), generator=_generator(seed, "taesd.calibration")) * 2.0
        last_conv = taesd.taesd_decoder[-1]
        last_conv.weight.mul_(0.2 / taesd.taesd_decoder(probe).std())
        last_conv.bias.fill_(0.5)
    return taesd
