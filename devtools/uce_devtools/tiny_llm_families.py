"""Random-weight Qwen-Image, Z-Image, Lumina 2 and Flux.2 models (LLM text encoders) that the real ComfyUI runs.

- `qwen_image_model` / `z_image_model` / `lumina2_model` / `flux2_model`: reduced MODEL + CLIP pairs
  built in memory with ComfyUI's own model configs, DiTs, tokenizers and text-encoder classes (no
  file, no detection). The text encoders are ComfyUI's LLM classes (comfy/text_encoders/llama.py)
  with small widths and few layers; ComfyUI's attention head size (`head_dim`, a class attribute
  of the config dataclasses, 128 or 256) cannot be overridden and is kept.
- `tiny_gemma_spiece_model` / `tiny_tekken_json`: the tokenizer data that a real checkpoint carries
  for Gemma 2 (a SentencePiece model) and Mistral 3 (a tekken JSON), built here from a short
  English text (`ENGLISH_TEXT`) so that every English prompt tokenizes (byte fallback).

Weights come from `tiny_models.randomize_` (seeded per tensor name), then:

- the map that first reads the encoder rows (`TEXT_MAPS`) gets a seeded non-zero bias of std
  `TEXT_BIAS_STD` where the family has one, and the RMSNorm in front of it (`TEXT_NORMS`) seeded
  weights 1 + `TEXT_NORM_STD`·N(0, 1), so tests can tell whether a norm weight or a bias was used;
- RMSNorm `scale` vectors (Flux.2 QK norms) are 1, and Gemma's RMSNorms (which add 1 to their
  weight) 0, so every norm starts as the identity scale, as randomize_ intends.

ComfyUI 0.3.75 builds the Mistral tokenizer with transformers 4.x's MistralConverter API
(flux.py:75-111); with transformers 5 (this venv) that raises a TypeError, so `flux2_model` swaps
in a re-implementation of the 4.x converter while the CLIP is built (`_mistral_converter_compat`).

Qwen-Image's text encoder class also builds Qwen2.5-VL's vision tower (1280 wide, 32 blocks, 659 M
parameters) for image prompts. ComfyUI allocates it uninitialised (torch.empty) and text prompts never
read it, so it is left as allocated: it costs address space, not memory (see `qwen_image_model`).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import functools
import inspect
import io
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .comfy_env import import_comfyui
from .tiny_models import TinyFamilyModel, init_text_dit_, model_patcher, randomize_

# Bump whenever a builder changes what it builds or caches.
TINY_LLM_FAMILIES_VERSION = "v1"

TEXT_MAPS = {"qwen_image": "txt_in", "z_image": "cap_embedder.1", "lumina2": "cap_embedder.1", "flux2": "txt_in"}
TEXT_NORMS = {"qwen_image": "txt_norm", "z_image": "cap_embedder.0", "lumina2": "cap_embedder.0"}
TEXT_BIAS_STD = 0.25
TEXT_NORM_STD = 0.2

# Overrides of ComfyUI's text-encoder config dataclasses (vocabulary sizes kept).
_TINY_ATTENTION = {"num_attention_heads": 2, "num_key_value_heads": 1}
QWEN25_7B_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, **_TINY_ATTENTION}
QWEN3_4B_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, **_TINY_ATTENTION}
GEMMA2_2B_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, **_TINY_ATTENTION}
MISTRAL3_24B_TINY = {"hidden_size": 32, "intermediate_size": 64, **_TINY_ATTENTION}
# Flux.2 reads Mistral hidden states 10, 20 and 30 (flux.py:141). With 30 layers ComfyUI builds the
# model as it does for pruned Flux.2 encoders (flux.py:143-147: no final norm); state 30 is then the
# last layer's output, the same tensor as the input of layer 30 in the full 40-layer model.
MISTRAL3_LAYERS = 30

SPIECE_VOCAB_SIZE = 1000
TEKKEN_SPECIAL_TOKENS = 1000
TEKKEN_MERGES = 600

ENGLISH_TEXT = """\
a photo of a cat sitting on a wooden table next to a window
a photo of a dog running on the beach at sunset
a painting of a woman in a red dress, oil on canvas
a portrait of an old man with a white beard, dramatic lighting
a landscape with mountains, a lake and pine trees in the morning mist
a city street at night with neon signs and rain on the road
a bowl of fruit on a kitchen table, still life
a watercolor painting of a small house in a green field
an astronaut riding a horse on the moon, digital art
a close-up photo of a red rose with water drops
a cartoon of a mouse wearing a hat, children's book illustration
the starry night by Vincent van Gogh, swirling sky over a village
water lilies by Claude Monet, impressionist painting of a pond
a cubist portrait by Pablo Picasso with bright colors
the Mona Lisa by Leonardo da Vinci, renaissance painting
a self-portrait by Rembrandt, dark background, golden light
the great wave off Kanagawa by Hokusai, Japanese woodblock print
a pop art print by Andy Warhol of a soup can
a self-portrait by Frida Kahlo with flowers in her hair
the persistence of memory by Salvador Dali, melting clocks
a girl with a pearl earring by Johannes Vermeer
a fantasy landscape in the style of Greg Rutkowski, epic, detailed
a cozy cottage by Thomas Kinkade, glowing windows, snow
a surreal illustration by Kelly McKernan, pastel colors
a science fiction city by Kilian Eng, retro futurism
concept art by Tyler Edlin, a giant creature in the desert
a cute dog, a fluffy cat, a parrot, a horse, a bird and a fish
a car, a bicycle, a train, an airplane and a boat in the harbor
a man and a woman walking in the park with their children
a nurse, a doctor, a teacher, an engineer, a lawyer and a chef
a cup of coffee, a glass of water, a slice of bread and cheese
high quality, detailed, sharp focus, 4k, 8k, realistic photograph
blurry, low quality, ugly, deformed, bad anatomy, watermark, text
You are an assistant designed to generate superior images with the superior degree of image-text alignment
based on textual prompts or user prompts.
You are an assistant designed to generate high-quality images with the highest degree of image-text alignment
based on textual prompts. <Prompt Start> a photo of a cat
You are an AI that reasons about image descriptions. You give structured responses focusing on object relationships,
object attribution and actions without speculation.
Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships of the objects
and background.
The quick brown fox jumps over the lazy dog. It is 12:30 and 45 degrees; prices are $10 or 20%!
"""

# tekken v7 pre-tokenizer pattern, and the special tokens Mistral 3 uses first (rank = token id).
TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEKKEN_NAMED_SPECIALS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
    "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
)  # fmt: skip

# Pre-tokenizer pattern that transformers 4.x's MistralConverter applies (ComfyUI passes no pattern).
_OLD_MISTRAL_CONVERTER_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def qwen_image_model(seed: int = 0) -> TinyFamilyModel:
    """Build a reduced random Qwen-Image MODEL + CLIP in memory (family "qwen_image").

    Model config comfy.supported_models.QwenImage; QwenImageTransformer2DModel with 2 heads of 32
    (width 64), 2 blocks, 16 latent channels patchified 2 x 2 (0.34 M parameters). Text
    maps: txt_norm (RMSNorm 64) -> txt_in [64, 64] + bias. CLIP: ComfyUI's QwenImageTokenizer /
    qwen_image.te() (Qwen2.5-VL 7B class: width 64, 2 layers, 2 heads of 128, last layer after
    the final norm; 9.9 M parameters, 9.7 M of them the 152064-token embedding). "a cat"
    encodes to cond [1, 7, 64] (the 2 prompt tokens and a 5-token chat suffix; the 34-token
    template prefix is cut, qwen_image.py:61-83) and no pooled output. Only the language model
    is randomized: the vision tower (659 M parameters, 2.6 GB of fp32 address space) stays as
    ComfyUI allocated it, uninitialised and never read, so it is not resident (the whole build
    adds about 0.13 GB of RSS) and its values are arbitrary.
    """
    import_comfyui()
    import comfy.supported_models
    import comfy.text_encoders.qwen_image as qwen_image

    unet_config = {
        "image_model": "qwen_image",
        "patch_size": 2,
        "in_channels": 64,
        "out_channels": 16,
        "num_layers": 2,
        "attention_head_dim": 32,
        "num_attention_heads": 2,
        "joint_attention_dim": QWEN25_7B_TINY["hidden_size"],
        "axes_dims_rope": (8, 12, 12),
    }
    model = _build_dit("qwen_image", comfy.supported_models.QwenImage, unet_config, seed)
    clip = _build_clip(
        qwen_image.QwenImageTokenizer,
        qwen_image.te(),
        {"qwen25_7b_model_config": dict(QWEN25_7B_TINY)},
        {},
        lambda te: te.qwen25_7b.transformer.model,
        "qwen_image",
        seed,
    )
    return TinyFamilyModel(model=model, clip=clip, family="qwen_image")


def z_image_model(seed: int = 0) -> TinyFamilyModel:
    """Build a reduced random Z-Image MODEL + CLIP in memory (family "z_image").

    Model config comfy.supported_models.ZImage (a Lumina2 subclass); NextDiT of width 256 (Z-Image
    modulation reads a 256-wide time embedding, so no smaller), 4 heads of 64, 2 layers plus 2
    noise and 2 context refiner blocks, pad tokens to a multiple of 32 like the released
    checkpoint (6.4 M parameters). Text maps: cap_embedder.0 (RMSNorm 64) ->
    cap_embedder.1 [256, 64] + bias. CLIP: ComfyUI's ZImageTokenizer / z_image.te() (Qwen3 4B
    class: width 64, 3 layers, 2 heads of 128 with QK norms, hidden layer -2; 9.9 M parameters,
    9.7 M of them the 151936-token embedding). "a cat" encodes to cond [1, 10, 64] (template
    prefix, prompt and suffix all kept; attention_mask [1, 10] of ones) and no pooled output.
    """
    import_comfyui()
    import comfy.supported_models
    import comfy.text_encoders.z_image as z_image

    unet_config = {
        "image_model": "lumina2",
        "patch_size": 2,
        "in_channels": 16,
        "dim": 256,
        "cap_feat_dim": QWEN3_4B_TINY["hidden_size"],
        "n_layers": 2,
        "qk_norm": True,
        "n_heads": 4,
        "n_kv_heads": 4,
        "axes_dims": [16, 24, 24],
        "axes_lens": [1536, 512, 512],
        "rope_theta": 256.0,
        "ffn_dim_multiplier": 8.0 / 3.0,
        "z_image_modulation": True,
        "time_scale": 1000.0,
        "pad_tokens_multiple": 32,
    }
    model = _build_dit("z_image", comfy.supported_models.ZImage, unet_config, seed)
    clip = _build_clip(
        z_image.ZImageTokenizer,
        z_image.te(),
        {"qwen3_4b_model_config": dict(QWEN3_4B_TINY)},
        {},
        lambda te: te,
        "z_image",
        seed,
    )
    return TinyFamilyModel(model=model, clip=clip, family="z_image")


def lumina2_model(seed: int = 0) -> TinyFamilyModel:
    """Build a reduced random Lumina Image 2.0 MODEL + CLIP in memory (family "lumina2").

    Model config comfy.supported_models.Lumina2; NextDiT of width 64, 2 heads of 32 (1 KV head),
    2 layers plus 2 noise and 2 context refiner blocks (0.47 M parameters). Text maps:
    cap_embedder.0 (RMSNorm 64) -> cap_embedder.1 [64, 64] + bias. CLIP: ComfyUI's
    LuminaTokenizer / lumina2.te() (Gemma 2 2B class: width 64, 3 layers, 2 heads of 256,
    hidden layer -2; 16.8 M parameters, 16.4 M of them the 256000-token embedding) with the
    SentencePiece model of `tiny_gemma_spiece_model()`. "a cat" encodes to cond [1, 3, 64] (BOS
    and the prompt tokens, no padding; attention_mask [1, 3]) and no pooled output.
    """
    import_comfyui()
    import comfy.supported_models
    import comfy.text_encoders.lumina2 as lumina2

    unet_config = {
        "image_model": "lumina2",
        "patch_size": 2,
        "in_channels": 16,
        "dim": 64,
        "cap_feat_dim": GEMMA2_2B_TINY["hidden_size"],
        "n_layers": 2,
        "qk_norm": True,
        "n_heads": 2,
        "n_kv_heads": 1,
        "axes_dims": [8, 12, 12],
        "axes_lens": [300, 512, 512],
        "rope_theta": 10000.0,
        "ffn_dim_multiplier": 4.0,
    }
    model = _build_dit("lumina2", comfy.supported_models.Lumina2, unet_config, seed)
    clip = _build_clip(
        lumina2.LuminaTokenizer,
        lumina2.te(),
        {"gemma2_2b_model_config": dict(GEMMA2_2B_TINY)},
        {"spiece_model": tiny_gemma_spiece_model()},
        lambda te: te,
        "lumina2",
        seed,
    )
    return TinyFamilyModel(model=model, clip=clip, family="lumina2")


def flux2_model(seed: int = 0) -> TinyFamilyModel:
    """Build a reduced random Flux.2 MODEL + CLIP in memory (family "flux2").

    Model config comfy.supported_models.Flux2; Flux DiT with the Flux.2 settings of
    comfy/model_detection.py (global modulation, no vector_in, no biases, SiLU-gated MLP of ratio
    3, patch size 1, four rope axes, guidance embedding): width 64, 2 heads of 32, one double and
    one single block, 128 latent channels (0.29 M parameters). Text map: txt_in [64, 96],
    no bias. CLIP: ComfyUI's Flux2Tokenizer / flux2_te() (Mistral 3 24B class: width 32, 30
    layers, 2 heads of 128, no final norm) with the tekken vocabulary of `tiny_tekken_json()`;
    hidden states 10, 20 and 30 are stacked per token: conditioning width 3 x 32 = 96 (5.1 M
    parameters, 4.2 M of them the 131072-token embedding). "a cat" encodes to cond [1, 56, 96]
    (BOS, the system prompt with its markers: 51 tokens, [INST], 2 prompt tokens, [/INST];
    attention_mask [1, 56]) and no pooled output. Sampling left-pads it with zero rows to 512
    (model_base.py:932-941).
    """
    import_comfyui()
    import comfy.supported_models
    import comfy.text_encoders.flux as flux

    width = MISTRAL3_24B_TINY["hidden_size"]
    unet_config = {
        "image_model": "flux2",
        "in_channels": 128,
        "out_channels": 128,
        "vec_in_dim": None,
        "context_in_dim": 3 * width,
        "hidden_size": 64,
        "mlp_ratio": 3.0,
        "num_heads": 2,
        "depth": 1,
        "depth_single_blocks": 1,
        "axes_dim": [8, 8, 8, 8],
        "theta": 2000,
        "patch_size": 1,
        "qkv_bias": False,
        "guidance_embed": True,
        "global_modulation": True,
        "mlp_silu_act": True,
        "ops_bias": False,
        "default_ref_method": "index",
        "ref_index_scale": 10.0,
    }
    model = _build_dit("flux2", comfy.supported_models.Flux2, unet_config, seed)
    with _mistral_converter_compat():
        clip = _build_clip(
            flux.Flux2Tokenizer,
            flux.flux2_te(),
            {"num_layers": MISTRAL3_LAYERS, "mistral3_24b_model_config": dict(MISTRAL3_24B_TINY)},
            {"tekken_model": tiny_tekken_json()},
            lambda te: te,
            "flux2",
            seed,
        )
    return TinyFamilyModel(model=model, clip=clip, family="flux2")


def text_map_key(family: str) -> str:
    """Patcher key ("diffusion_model.….weight") of the map that first reads a family's encoder rows."""
    return f"diffusion_model.{TEXT_MAPS[family]}.weight"


def text_norm_key(family: str) -> str | None:
    """Patcher key of the RMSNorm weight in front of a family's text map (None for Flux.2)."""
    return f"diffusion_model.{TEXT_NORMS[family]}.weight" if family in TEXT_NORMS else None


@functools.lru_cache(maxsize=None)
def tiny_gemma_spiece_model() -> bytes:
    """A serialized SentencePiece BPE model for ComfyUI's Gemma tokenizer (`tokenizer_data["spiece_model"]`).

    Trained on ENGLISH_TEXT (vocabulary SPIECE_VOCAB_SIZE, byte fallback: any text tokenizes) with
    Gemma's special ids: pad 0, eos 1, bos 2, unk 3 (lumina2.py:30 expects start 2 and pad 0).
    Deterministic; training takes about 0.03 s, so nothing is cached on disk.
    """
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(ENGLISH_TEXT.splitlines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=SPIECE_VOCAB_SIZE,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


@functools.lru_cache(maxsize=None)
def tiny_tekken_json() -> bytes:
    """A small synthetic tekken vocabulary for ComfyUI's Mistral 3 tokenizer (`tokenizer_data["tekken_model"]`).

    Like Mistral's tekken.json (v7): TEKKEN_SPECIAL_TOKENS special tokens first (ids 0…999: <unk>
    0, <s> 1, </s> 2, [INST] 3, [/INST] 4, <pad> 11, [SYSTEM_PROMPT] 17, [/SYSTEM_PROMPT] 18, then
    <SPECIAL_20>…), then byte-level BPE tokens at id 1000 + rank: the 256 single bytes (any text
    tokenizes) and TEKKEN_MERGES merges learnt from ENGLISH_TEXT. Deterministic, built in about
    0.3 s (once per process).
    """
    specials = list(TEKKEN_NAMED_SPECIALS) + [
        f"<SPECIAL_{i}>" for i in range(len(TEKKEN_NAMED_SPECIALS), TEKKEN_SPECIAL_TOKENS)
    ]
    tokens = [bytes([b]) for b in range(256)] + _byte_bpe_merges(ENGLISH_TEXT, TEKKEN_MERGES)
    tekken = {
        "config": {
            "pattern": TEKKEN_PATTERN,
            "num_vocab_tokens": len(tokens),
            "default_vocab_size": TEKKEN_SPECIAL_TOKENS + len(tokens),
            "default_num_special_tokens": TEKKEN_SPECIAL_TOKENS,
            "version": "v7",
        },
        "vocab": [
            {"rank": rank, "token_bytes": base64.b64encode(token).decode("ascii"), "token_str": _token_str(token)}
            for rank, token in enumerate(tokens)
        ],
        "special_tokens": [{"rank": rank, "token_str": s, "is_control": True} for rank, s in enumerate(specials)],
    }
    return json.dumps(tekken).encode("utf-8")


def _build_dit(family: str, config_class: type, unet_config: dict, seed: int) -> Any:
    """The family's MODEL (float32 on the CPU), randomized, with a seeded text-map bias and text-norm weight."""
    norms = [TEXT_NORMS[family]] if family in TEXT_NORMS else []
    return model_patcher(
        config_class,
        unet_config,
        lambda dit: init_text_dit_(dit, seed, f"{family}.dit", [TEXT_MAPS[family]], norms, TEXT_BIAS_STD, TEXT_NORM_STD),
    )


def _build_clip(
    tokenizer_class: type,
    text_encoder_class: type,
    model_options: dict,
    tokenizer_data: dict,
    weights_of: Callable[[torch.nn.Module], torch.nn.Module],
    family: str,
    seed: int,
) -> Any:
    """comfy.sd.CLIP in float32 on the CPU; randomizes `weights_of(cond_stage_model)` and checks it.

    Gemma's RMSNorms (add=True: scale = 1 + weight) get weight 0, so they start as identity scales.
    """
    import comfy.sd
    from comfy.supported_models_base import ClipTarget

    options = {"dtype": torch.float32, **model_options}
    target = ClipTarget(tokenizer_class, text_encoder_class)
    clip = comfy.sd.CLIP(target=target, model_options=options, tokenizer_data=tokenizer_data)
    module = weights_of(clip.cond_stage_model)
    randomize_(module, seed, f"{family}.clip")
    with torch.no_grad():
        for sub in module.modules():
            if getattr(sub, "add", False) is True and isinstance(getattr(sub, "weight", None), torch.nn.Parameter):
                sub.weight.zero_()
    _check_clip(clip, family)
    return clip


def _check_clip(clip: Any, family: str) -> None:
    """Raise unless two prompts encode to finite, different conditioning rows."""
    conds = [clip.encode_from_tokens(clip.tokenize(text)) for text in ("a photo of a cat", "a painting of a dog")]
    if not all(torch.isfinite(cond).all() for cond in conds):
        raise RuntimeError(f"tiny {family} text encoder: conditioning is not finite")
    if conds[0].shape == conds[1].shape and torch.equal(conds[0], conds[1]):
        raise RuntimeError(f"tiny {family} text encoder: conditioning does not depend on the prompt")


def _byte_bpe_merges(text: str, count: int) -> list[bytes]:
    """Byte-level BPE: the first `count` merged tokens learnt from `text` (most frequent pair first).

    Words are split like GPT-style pre-tokenizers (leading space kept), so merges never cross
    words. Ties go to the smallest pair of byte strings: the result is deterministic.
    """
    words = collections.Counter(re.findall(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+", text))
    corpus = {tuple(bytes([b]) for b in word.encode("utf-8")): n for word, n in words.items()}
    merges: list[bytes] = []
    while len(merges) < count:
        pairs: collections.Counter = collections.Counter()
        for symbols, n in corpus.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merged = best[0] + best[1]
        if merged not in merges:  # the same bytes can come from two different splits
            merges.append(merged)
        corpus = {_merge_pair(symbols, best, merged): n for symbols, n in corpus.items()}
    return merges


def _merge_pair(symbols: tuple[bytes, ...], pair: tuple[bytes, bytes], merged: bytes) -> tuple[bytes, ...]:
    out: list[bytes] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def _token_str(token: bytes) -> str | None:
    try:
        return token.decode("utf-8")
    except UnicodeDecodeError:
        return None


@contextlib.contextmanager
def _mistral_converter_compat() -> Iterator[None]:
    """Let ComfyUI's load_mistral_tokenizer (flux.py:75-111) run with transformers 5.

    ComfyUI calls MistralConverter(vocab=…, additional_special_tokens=…).converted(), the
    transformers 4.x API; transformers 5 replaced it by MistralConverter(vocab_file). While the
    block runs, transformers.integrations.mistral.MistralConverter is a re-implementation of the
    4.x converter (when the installed one lacks `vocab`); the original is put back afterwards.
    """
    import transformers.integrations.mistral as mistral_integration

    original = mistral_integration.MistralConverter
    if "vocab" in inspect.signature(original.__init__).parameters:
        yield
        return
    mistral_integration.MistralConverter = _LegacyMistralConverter
    try:
        yield
    finally:
        mistral_integration.MistralConverter = original


class _LegacyMistralConverter:
    """transformers 4.x's MistralConverter: byte-level BPE `tokenizers.Tokenizer` from tekken ranks.

    `vocab` maps token bytes (and special-token strings, first) to ranks; token ids are the
    positions in `vocab`, special tokens are added as special tokens. Its post-processor adds
    "<s>" in front, as transformers 4.x's LlamaTokenizerFast (add_bos_token=True) did; the
    transformers 5 LlamaTokenizer keeps a given post-processor and adds no BOS by itself, and
    ComfyUI's SDTokenizer takes its start token from tokenizing "" (sd1_clip.py:484-488).
    """

    def __init__(self, vocab: dict, additional_special_tokens: list, pattern: str = _OLD_MISTRAL_CONVERTER_PATTERN,
                 add_prefix_space: bool = False) -> None:  # fmt: skip
        self.vocab = vocab
        self.additional_special_tokens = additional_special_tokens
        self.pattern = pattern
        self.add_prefix_space = add_prefix_space

    def converted(self) -> Any:
        from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
        from tokenizers.models import BPE
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        byte_encoder = bytes_to_unicode()

        def to_string(token: bytes) -> str:
            return "".join(byte_encoder[b] for b in token)

        ranks = self.vocab
        special = set(self.additional_special_tokens)
        vocab: dict[str, int] = {}
        merges: list[tuple[bytes, bytes, int]] = []
        for index, (token, rank) in enumerate(ranks.items()):
            if token in special:
                vocab[token] = index
                continue
            vocab[to_string(token)] = index
            local = [
                (token[:i], token[i:], rank)
                for i in range(1, len(token))
                if token[:i] in ranks and token[i:] in ranks
            ]
            merges.extend(sorted(local, key=lambda m: (ranks[m[0]], ranks[m[1]])))
        merges.sort(key=lambda m: m[2])

        tokenizer = Tokenizer(BPE(vocab, [(to_string(a), to_string(b)) for a, b, _ in merges], fuse_unk=False))
        if hasattr(tokenizer.model, "ignore_merges"):
            tokenizer.model.ignore_merges = True
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(self.pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=self.add_prefix_space, use_regex=False),
            ]
        )
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens(self.additional_special_tokens)
        bos_id = vocab["<s>"]
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", bos_id)]
        )
        return tokenizer

