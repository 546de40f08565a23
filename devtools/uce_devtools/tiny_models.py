"""Random-weight models that the real ComfyUI loads and runs, built at run time and never committed.

- `tiny_sd15_checkpoint`: a .safetensors file that CheckpointLoaderSimple detects as SD1.5.
- `tiny_lora`: a LoRA file that LoraLoader applies to a tiny model's cross-attention weights.
- `sd2_family_model` / `sdxl_family_model`: reduced SD2.x / SDXL MODEL + CLIP pairs built in memory
  with ComfyUI's own model configs, UNet, tokenizers and CLIP wrapper classes.

Weights are seeded per tensor (by name), so every build is deterministic. Linear / conv / embedding
weights are normal with std 1/sqrt(fan_in) (about 0.02, like the real init; 0.02 for embeddings),
norms are weight 1 / bias 0, other biases 0: activations stay finite and prompt dependent.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .comfy_env import import_comfyui
from .paths import CACHE_DIR

# Bump whenever a builder changes what it writes: cached files carry it in their names.
TINY_MODELS_VERSION = "v1"

_COMMON_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}

# What comfy.model_detection.detect_unet_config reads back from the tiny SD1.5 UNet.
SD15_TINY_UNET_CONFIG = {
    **_COMMON_UNET,
    "adm_in_channels": None,
    "num_res_blocks": [1],
    "channel_mult": [1],
    "transformer_depth": [1],
    "transformer_depth_output": [1, 1],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
}

# TAESD latent scale of the tiny SD1.5 VAE (see _tiny_taesd).
TAESD_VAE_SCALE = 0.02

# LoRA targets: the cross-attention projections (to_k / to_v read the text conditioning).
DEFAULT_LORA_TARGETS = r"\.attn2\.to_(q|k|v|out\.0)\.weight$"


@dataclass(frozen=True)
class TinyFamilyModel:
    """A random-weight MODEL + CLIP pair of one model family ("sd2" or "sdxl")."""

    model: Any  # comfy.model_patcher.ModelPatcher
    clip: Any  # comfy.sd.CLIP
    family: str


def tiny_sd15_checkpoint(path: str | Path | None = None, seed: int = 0) -> Path:
    """Write (if missing) a tiny random SD1.5 checkpoint and return its path.

    UNet: ComfyUI's UNetModel with model_channels 320, channel_mult [1], one res block, transformer
    depth 1, middle block, 8 heads, context 768 (25.8 M parameters). Text encoder: the full CLIP-L
    (ComfyUI's SD1ClipModel, fixed config). VAE: TAESD. All fp16, about 300 MB. Default path:
    <repo>/.cache/checkpoints/uce-tiny-sd15-<version>-s<seed>.safetensors. Written atomically.
    """
    if path is None:
        path = CACHE_DIR / "checkpoints" / f"uce-tiny-sd15-{TINY_MODELS_VERSION}-s{seed}.safetensors"
    path = Path(path)
    if path.is_file():
        return path
    state_dict = _tiny_sd15_state_dict(seed)
    metadata = {"uce_tiny_model": json.dumps({"family": "sd15", "version": TINY_MODELS_VERSION, "seed": seed})}
    _save_safetensors_atomic(state_dict, path, metadata)
    return path


def sd2_family_model(seed: int = 0, clip_layers: int = 4, channel_mult: Sequence[int] = (1, 2)) -> TinyFamilyModel:
    """Build a reduced random SD2.x-family MODEL + CLIP in memory (family "sd2").

    Model config comfy.supported_models.SD20 (context 1024, linear proj_in, 64-channel heads); UNet
    with model_channels 320, the given channel_mult, one res block and one transformer per level
    and in the middle (default: 109 M parameters, cross-attention K/V [320|640, 1024]). CLIP:
    comfy.sd.CLIP with ComfyUI's SD2 tokenizer and OpenCLIP-H text model (width 1024, penultimate
    layer), reduced to `clip_layers` transformer layers (>= 3; the real one has 24).
    """
    import_comfyui()
    import comfy.supported_models

    unet_config = tiny_unet_config(
        context_dim=1024, channel_mult=channel_mult, attention_from_level=0, adm_in_channels=None
    )
    clip_options = {"clip_h_model_config": {"num_hidden_layers": clip_layers}}
    return _build_family("sd2", comfy.supported_models.SD20, unet_config, clip_options, seed)


def sdxl_family_model(
    seed: int = 0, clip_g_layers: int = 4, clip_l_layers: int = 4, channel_mult: Sequence[int] = (1, 2)
) -> TinyFamilyModel:
    """Build a reduced random SDXL-family MODEL + CLIP in memory (family "sdxl").

    Model config comfy.supported_models.SDXL (context 2048, ADM 2816 = pooled 1280 + sizes); UNet
    with model_channels 320, the given channel_mult, no transformer at the first level (like
    SDXL), one res block and one transformer elsewhere and in the middle (default: 112 M
    parameters, K/V [640, 2048]; channel_mult (1, 2, 4) adds SDXL's 1280-wide level: 436 M).
    CLIP: comfy.sd.CLIP with ComfyUI's SDXL tokenizer and SDXLClipModel: CLIP-L (768, layer -2)
    and CLIP-G (1280, penultimate) with `clip_l_layers` / `clip_g_layers` layers (>= 3; real: 12
    and 32), giving [1, 77, 2048] conditioning and a [1, 1280] pooled output.
    """
    import_comfyui()
    import comfy.supported_models

    unet_config = tiny_unet_config(
        context_dim=2048, channel_mult=channel_mult, attention_from_level=1, adm_in_channels=2816
    )
    clip_options = {
        "clip_g_model_config": {"num_hidden_layers": clip_g_layers},
        "clip_l_model_config": {"num_hidden_layers": clip_l_layers},
    }
    return _build_family("sdxl", comfy.supported_models.SDXL, unet_config, clip_options, seed)


def flux_family_model(seed: int = 0) -> Any:
    """A very small random Flux-family MODEL (ModelPatcher): a DiT with no UNet cross-attention.

    For checking that the pack refuses families it does not support, with the family's name.
    """
    import_comfyui()
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    unet_config = {
        "image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2, "vec_in_dim": 768,
        "context_in_dim": 4096, "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 1,
        "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000, "qkv_bias": True, "guidance_embed": False,
    }
    model_config = comfy.supported_models.Flux(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    base_model = model_config.get_model({}, "", device=torch.device("cpu"))
    randomize_(base_model.diffusion_model, seed, "flux.dit")
    return comfy.model_patcher.ModelPatcher(base_model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def unsupported_family_model(seed: int = 0) -> Any:
    """A very small random AuraFlow MODEL (ModelPatcher): a family the pack has no table entry for.

    For checking that the pack refuses such a model with its family's name.
    """
    import_comfyui()
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    unet_config = {
        "dim": 64, "n_layers": 2, "n_double_layers": 1, "n_heads": 2, "global_conddim": 64, "cond_seq_dim": 64,
        "max_seq": 64, "in_channels": 4, "out_channels": 4, "patch_size": 2,
    }
    model_config = comfy.supported_models.AuraFlow(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    base_model = model_config.get_model({}, "", device=torch.device("cpu"))
    randomize_(base_model.diffusion_model, seed, "auraflow.dit")
    return comfy.model_patcher.ModelPatcher(base_model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def tiny_unet_config(
    context_dim: int, channel_mult: Sequence[int], attention_from_level: int, adm_in_channels: int | None
) -> dict:
    """A detect_unet_config-style dict for a reduced SD2/SDXL-style UNet (linear proj_in).

    One res block per level; one transformer (depth 1) per res block from `attention_from_level`
    on, and one in the middle block.
    """
    depths = [1 if level >= attention_from_level else 0 for level in range(len(channel_mult))]
    config = {
        **_COMMON_UNET,
        "adm_in_channels": adm_in_channels,
        "num_res_blocks": [1] * len(channel_mult),
        "channel_mult": list(channel_mult),
        "transformer_depth": depths,
        "transformer_depth_output": [depth for depth in depths for _ in range(2)],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": True,
        "context_dim": context_dim,
    }
    if adm_in_channels is not None:
        config["num_classes"] = "sequential"
    return config


def tiny_lora(
    model_patcher_or_keys: Any,
    path: str | Path | None = None,
    rank: int = 4,
    seed: int = 0,
    targets: str = DEFAULT_LORA_TARGETS,
    scale: float = 0.25,
) -> Path:
    """Write (if missing) a small kohya-style LoRA file for a UNet and return its path.

    `model_patcher_or_keys` is a ModelPatcher (its "diffusion_model.*" weights matching the regex
    `targets`, by default every cross-attention to_q/to_k/to_v/to_out.0) or a mapping from
    patcher key ("diffusion_model.….weight") to weight shape (all of them are used). Each key gets
    `lora_unet_<key>.lora_up.weight` [out, rank], `.lora_down.weight` [rank, in] and `.alpha` =
    rank, so ComfyUI applies exactly W + up @ down at strength 1; the change is about `scale`
    times the weight's own size. Default path: <repo>/.cache/loras/uce-tiny-lora-….safetensors.
    """
    shapes = _lora_target_shapes(model_patcher_or_keys, targets)
    if not shapes:
        raise ValueError("tiny_lora: no target weights (check the model or the `targets` regex)")
    if path is None:
        digest = hashlib.sha256(json.dumps(sorted(shapes.items())).encode()).hexdigest()[:12]
        name = f"uce-tiny-lora-{TINY_MODELS_VERSION}-r{rank}-s{seed}-x{scale:g}-{digest}.safetensors"
        path = CACHE_DIR / "loras" / name
    path = Path(path)
    if path.is_file():
        return path

    tensors: dict[str, torch.Tensor] = {}
    for key, shape in sorted(shapes.items()):
        out_features, in_features = shape[0], math.prod(shape[1:])
        lora_name = "lora_unet_" + key[len("diffusion_model.") : -len(".weight")].replace(".", "_")
        down = _seeded_normal((rank, *shape[1:]), 1.0 / math.sqrt(in_features), seed, lora_name + ".down")
        up = _seeded_normal(
            (out_features, rank, *[1] * (len(shape) - 2)), scale / math.sqrt(rank), seed, lora_name + ".up"
        )
        tensors[lora_name + ".lora_down.weight"] = down
        tensors[lora_name + ".lora_up.weight"] = up
        tensors[lora_name + ".alpha"] = torch.tensor(float(rank))
    metadata = {
        "uce_tiny_model": json.dumps({"kind": "lora", "version": TINY_MODELS_VERSION, "rank": rank, "seed": seed})
    }
    _save_safetensors_atomic(tensors, path, metadata)
    return path


def randomize_(module: torch.nn.Module, seed: int, tag: str, gain: float = 1.0) -> None:
    """Fill every parameter of a freshly built module in place with seeded random values.

    Norms: weight 1, bias 0. Embeddings: N(0, 0.02). Other weights: N(0, gain / sqrt(fan_in)).
    Other biases: 0. 0-d parameters (e.g. TAESD's vae_scale) keep their constructed values.
    Each tensor's values depend only on (seed, tag, its name, its dtype). Only for modules that
    nothing else uses yet (ComfyUI leaves the weights of a new model uninitialised).
    """
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm)
    with torch.no_grad():
        for module_name, sub in module.named_modules():
            for param_name, param in sub.named_parameters(recurse=False):
                if param.ndim == 0:
                    continue
                if isinstance(sub, norm_types) or (param.ndim == 1 and param_name == "weight"):
                    param.fill_(1.0 if param_name == "weight" else 0.0)
                elif param_name == "bias":
                    param.zero_()
                else:
                    std = 0.02 if isinstance(sub, torch.nn.Embedding) else gain / math.sqrt(param[0].numel())
                    param.normal_(0.0, std, generator=_generator(seed, f"{tag}.{module_name}.{param_name}"))


def _tiny_sd15_state_dict(seed: int) -> dict[str, torch.Tensor]:
    import_comfyui()
    import comfy.ops
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    model_config = comfy.supported_models.SD15(SD15_TINY_UNET_CONFIG)
    unet = UNetModel(
        **model_config.unet_config, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init
    )
    randomize_(unet, seed, "unet")
    text_model = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float32)
    randomize_(text_model, seed, "clip_l")
    taesd = _tiny_taesd(seed)

    state_dict = {}
    state_dict.update(model_config.process_unet_state_dict_for_saving(unet.state_dict()))
    state_dict.update(model_config.process_clip_state_dict_for_saving(text_model.state_dict()))
    state_dict.update(model_config.process_vae_state_dict_for_saving(taesd.state_dict()))
    return {key: value.to(torch.float16).contiguous() for key, value in state_dict.items()}


def _tiny_taesd(seed: int) -> torch.nn.Module:
    """Random TAESD whose decoded images are mid-grey with visible structure, not clipped to 0/1.

    A random UNet leaves latents of std ~100 (VAE scale) after sampling; TAESD's own latent scale
    (vae_scale, 1.0 in the real one) brings them into the range of its tanh clamp, and the last
    decoder conv is rescaled (bias 0.5) so that the image std is about 0.2.
    """
    import comfy.taesd.taesd

    taesd = comfy.taesd.taesd.TAESD()
    randomize_(taesd, seed, "taesd", gain=math.sqrt(2.0))  # ReLU network: keep the signal's scale
    with torch.no_grad():
        taesd.vae_scale.fill_(TAESD_VAE_SCALE)
        probe = _seeded_normal((1, 4, 16, 16), 2.0, seed, "taesd.calibration")
        last_conv = taesd.taesd_decoder[-1]
        last_conv.weight.mul_(0.2 / taesd.taesd_decoder(probe).std())
        last_conv.bias.fill_(0.5)
    return taesd


def _build_family(family: str, config_class: type, unet_config: dict, clip_options: dict, seed: int) -> TinyFamilyModel:
    """Build MODEL + CLIP the way comfy.sd.load_state_dict_guess_config does, minus the state dict."""
    import_comfyui()
    import comfy.sd

    model_config = config_class(unet_config)
    model = model_patcher(config_class, unet_config, lambda unet: randomize_(unet, seed, f"{family}.unet"))
    clip = comfy.sd.CLIP(model_config.clip_target(), model_options=clip_options)
    randomize_(clip.cond_stage_model, seed, f"{family}.clip")
    return TinyFamilyModel(model=model, clip=clip, family=family)


def model_patcher(config_class: type, unet_config: dict, init: Callable[[torch.nn.Module], None]) -> Any:
    """A MODEL (ModelPatcher) of ``config_class`` built as comfy.sd.load_state_dict_guess_config builds
    one, minus the state dict: ComfyUI's dtype for its device, weights filled by ``init(diffusion_model)``."""
    import_comfyui()
    import comfy.model_management as mm
    import comfy.model_patcher

    model_config = config_class(unet_config)
    load_device = mm.get_torch_device()
    unet_dtype = mm.unet_dtype(model_params=-1, supported_dtypes=list(model_config.supported_inference_dtypes))
    manual_cast_dtype = mm.unet_manual_cast(unet_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet_dtype, manual_cast_dtype)
    base_model = model_config.get_model({}, "", device=torch.device("cpu"))
    init(base_model.diffusion_model)
    return comfy.model_patcher.ModelPatcher(base_model, load_device=load_device, offload_device=mm.unet_offload_device())


def init_text_dit_(
    diffusion_model: torch.nn.Module,
    seed: int,
    tag: str,
    text_maps: Sequence[str],
    text_norms: Sequence[str] = (),
    bias_std: float = 0.25,
    norm_std: float = 0.2,
) -> None:
    """randomize_ a DiT, then set what makes its text input testable.

    RMSNorm ``scale`` vectors (QK norms) are 1; the maps that read text (``text_maps``, module
    names) get seeded N(0, bias_std) biases where they have one (randomize_ zeroes biases), and the
    RMSNorms in front of them (``text_norms``) seeded weights 1 + norm_std * N(0, 1), so that a test
    can tell whether a bias or a norm weight was applied.
    """
    randomize_(diffusion_model, seed, tag)
    with torch.no_grad():
        for name, param in diffusion_model.named_parameters():
            if name.endswith(".scale") and param.ndim == 1:
                param.fill_(1.0)
        for module_name in text_maps:
            bias = diffusion_model.get_submodule(module_name).bias
            if bias is not None:
                bias.copy_(_seeded_normal(bias.shape, bias_std, seed, f"{tag}.{module_name}.bias"))
        for module_name in text_norms:
            weight = diffusion_model.get_submodule(module_name).weight
            weight.copy_(1.0 + _seeded_normal(weight.shape, norm_std, seed, f"{tag}.{module_name}.weight"))


def _lora_target_shapes(model_patcher_or_keys: Any, targets: str) -> dict[str, tuple[int, ...]]:
    if isinstance(model_patcher_or_keys, Mapping):
        items = model_patcher_or_keys.items()
        pattern = None
    elif hasattr(model_patcher_or_keys, "model_state_dict"):
        items = model_patcher_or_keys.model_state_dict("diffusion_model.").items()
        pattern = re.compile(targets)
    else:
        raise TypeError("tiny_lora expects a ModelPatcher or a mapping {patcher key: weight shape}")
    shapes = {}
    for key, value in items:
        if pattern is not None and not pattern.search(key):
            continue
        if not key.startswith("diffusion_model.") or not key.endswith(".weight"):
            raise ValueError(f"tiny_lora: {key!r} is not a UNet weight key (diffusion_model.….weight)")
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(int(n) for n in value)
        if len(shape) < 2:
            raise ValueError(f"tiny_lora: {key!r} has shape {shape}; LoRA needs a matrix or conv weight")
        shapes[key] = shape
    return shapes


def _generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded from (seed, name) alone."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _seeded_normal(shape: Sequence[int], std: float, seed: int, name: str) -> torch.Tensor:
    """N(0, std) float32 tensor determined by (seed, name) alone."""
    return torch.empty(tuple(shape), dtype=torch.float32).normal_(0.0, std, generator=_generator(seed, name))


def _save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        safetensors.torch.save_file(tensors, str(tmp_path), metadata=metadata)
        tmp_path.chmod(0o644)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
