"""Random-weight HiDream I1 (full / dev / fast) MODEL + CLIP that the real ComfyUI runs.

`hidream_model(seed)` builds, in memory, ComfyUI's own HiDream DiT (comfy.supported_models.HiDream,
comfy/ldm/hidream/model.py) and its four-encoder text encoder (comfy/text_encoders/hidream.py:
HiDreamTokenizer / hidream_clip(): CLIP-L, CLIP-G, T5-XXL and Llama-3.1-8B through
hunyuan_video's LLAMA3Tokenizer / LLAMAModel), all reduced; I1 full, dev and fast share this
architecture (they differ in weights and sampler settings only). The real model config's
clip_target() is None (HiDream's CLIP only comes from the CLIP loaders), so the CLIP is built the
way QuadrupleCLIPLoader builds it (comfy/sd.py: hidream_clip(...) + HiDreamTokenizer).

Text layout in ComfyUI 0.3.75 (checked by tests/test_tiny_hidream.py)
-------------------------------------------------------------------------

Tokenizer keys "g", "l", "t5xxl", "llama" (one chunk each for short prompts):

- "l" / "g": CLIP, 77 tokens: BOS 49406, prompt, EOS 49407, padded with 49407 ("l") / 0 ("g").
  Only their pooled outputs are used (their token rows are discarded by HiDreamTEModel).
- "t5xxl": T5, exactly 128 tokens (min_length = max_length = 128; a longer prompt's later
  chunks are dropped: only the first chunk is kept): no BOS, the prompt ("a cat" is "▁" 3, "a" 9,
  "▁cat" 1712), EOS 1, padding 0. Last content token at n - 1 (n prompt tokens), EOS at n.
- "llama": Llama-3, BOS 128000 then the prompt, no EOS, padded with 128009 (<|eot_id|>) to at
  least 128 tokens (min_length 128, no maximum: one chunk of max(128, n + 1) tokens). Last content
  token at n (BOS at 0). "a cat" is [128000, 64 "a", 8415 "Ġcat", 128009, ...].

`clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)` gives exactly
the keys "cond", "pooled_output", "conditioning_llama3" (no attention masks: HiDreamTEModel drops
the T5 and Llama masks):

- cond: the T5 rows, [1, 128, d_t5] (real: 4096), after T5's final norm. Padding is masked inside
  the T5 encoder (pad keys only; attention_mask=True) but the pad rows are computed, not zeroed.
- pooled_output: [1, 768 + 1280] = CLIP-L projected pooled ‖ CLIP-G projected pooled.
- conditioning_llama3: [1, L, T, d_llama] (real: [1, 32, 128, 4096]) with L = the Llama's layer
  count: LLAMAModel(layer="all") stacks the hidden states of every layer, HF style (index 0 the
  token embeddings, index k the output of layer k, index L that output after the final RMSNorm),
  and HiDreamTEModel cuts index 0 (`ll_out[:, 1:]`, a cut of the *layer* axis, not of tokens: the
  BOS row stays at row 0). So conditioning_llama3[:, k] is HF hidden state k + 1 and
  conditioning_llama3[:, L - 1] the final-norm output. Pad keys are masked in the Llama's attention,
  pad rows are computed (causal: each one sees the whole prompt) and not zeroed.

The conditioning's extra key reaches the DiT through model_base.HiDream.extra_conds:
conditioning_llama3 -> `encoder_hidden_states_llama3` (CONDRegular); cond -> `context` (c_crossattn);
pooled_output -> `y` (encode_adm). HiDreamImageTransformer2DModel._forward then:

- p_embedder (TimestepEmbedding: linear_1, SiLU, linear_2, with biases) maps y; adaln = t + p;
- `encoder_hidden_states_llama3.movedim(1, 0)` and picks `[h[k] for k in llama_layers]`, one per
  block (real: llama_layers = [0, 1, ..., 31] + [31] * 16 for 16 double + 32 single blocks);
- caption_projection has num_layers + num_single_layers + 1 entries (TextProjection.linear, no
  bias): caption_projection[i] (i < N = num_layers + num_single_layers) maps
  conditioning_llama3[:, llama_layers[i]] (in features caption_channels[1], the Llama width) for
  block i (double blocks 0 .. num_layers - 1, then single blocks); caption_projection[N] maps the
  T5 rows (caption_channels[0]);
- no padding row is cut and no mask is used: all 128 T5 rows and all T Llama rows are read;
- the text stream is cat(T5 rows via caption_projection[N], Llama rows via caption_projection[N - 1])
  (128 + T rows). Double block i attends over image ‖ text stream ‖ caption_projection[i]'s rows; the
  block updates the text stream and drops its per-block rows afterwards. Single block j attends over
  image ‖ text stream ‖ caption_projection[num_layers + j]'s rows (dropped after the block). So
  caption_projection[N - 1] is read twice (text stream and last single block), and the real model's
  last 17 projections all read the final-norm state 31.
- all text tokens get rope position ids 0 (txt_ids zeros).

Tiny sizes: DiT width 64 (2 heads of 32, rope axes [16, 8, 8]), 2 double + 2 single blocks, MoE
feed-forwards with 4 routed experts of which 2 active (real settings; ComfyUI rounds the SwiGLU
hidden size up to a multiple of 256), caption_channels [64 (T5), 32 (Llama)], llama_layers
[0, 1, 2, 2] (like the real list: the states in order, then the final-norm state repeated).
Text encoder: CLIP-L and CLIP-G of 3 layers (full widths: the pooled 2048 is the DiT's text_emb_dim),
T5 of d_model 64 (tiny_t5_families.TINY_T5_CONFIG), Llama of width 32, 3 layers, 2 heads of 128
(ComfyUI's fixed head_dim), 1 KV head, the full 128256-token vocabulary.

Weights: tiny_models.init_text_dit_ with text maps = the caption projections (no biases) and
p_embedder's two linears (seeded biases, std TEXT_BIAS_STD); the text encoder as in
tiny_t5_families (randomize_, T5 relative attention bias N(0, 1)).

transformers 5 (this venv) builds LlamaTokenizerFast (= LlamaTokenizer) as a SentencePiece-style
tokenizer (Metaspace pre-tokenizer) from the byte-level Llama-3 tokenizer.json: spaces are lost
("a cat" -> "ac", "at"). `hidream_model` (fix_llama3_tokenizer=True) gives the CLIP's Llama
tokenizer the backend that tokenizer.json describes, as transformers 4.x's LlamaTokenizerFast does;
ids, vocabulary and special tokens are those of ComfyUI's bundled file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .comfy_env import import_comfyui
from .tiny_models import TinyFamilyModel, init_text_dit_, model_patcher
from .tiny_t5_families import CLIP_LAYERS, TINY_T5_CONFIG, _init_text_encoder_

DIT_HEADS = 2
DIT_HEAD_DIM = 32
DIT_WIDTH = DIT_HEADS * DIT_HEAD_DIM
NUM_LAYERS = 2  # double-stream blocks
NUM_SINGLE_LAYERS = 2  # single-stream blocks
NUM_CAPTION_PROJECTIONS = NUM_LAYERS + NUM_SINGLE_LAYERS + 1  # one per block, then T5's

# Override of ComfyUI's Llama2Config (Llama-3.1-8B; head_dim 128 is a class attribute and stays).
LLAMA_TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}
# Index into conditioning_llama3's layer axis read by each block (states 0, 1, then the final-norm
# state 2 twice; the real list reads 0 .. 31, then 31 sixteen times).
LLAMA_LAYERS = (0, 1, 2, 2)

T5_WIDTH = TINY_T5_CONFIG["d_model"]
LLAMA_WIDTH = LLAMA_TINY["hidden_size"]
POOLED_WIDTH = 768 + 1280  # CLIP-L ‖ CLIP-G projected pooled outputs

# Token layout of ComfyUI's HiDreamTokenizer.
T5_LENGTH = 128
T5_EOS, T5_PAD = 1, 0
LLAMA_MIN_LENGTH = 128
LLAMA_BOS, LLAMA_PAD = 128000, 128009
LLAMA_VOCAB_SIZE = 128256

# Modules of the DiT that first read the text: the caption projections and the pooled embedder.
CAPTION_PROJECTIONS = tuple(f"caption_projection.{i}.linear" for i in range(NUM_CAPTION_PROJECTIONS))
POOLED_MAPS = ("p_embedder.pooled_embedder.linear_1", "p_embedder.pooled_embedder.linear_2")
TEXT_MAPS = CAPTION_PROJECTIONS + POOLED_MAPS
TEXT_BIAS_STD = 0.25


def hidream_unet_config() -> dict:
    """The unet_config of the tiny HiDream DiT (the keys comfy.model_detection writes for HiDream)."""
    return {
        "image_model": "hidream",
        "attention_head_dim": DIT_HEAD_DIM,
        "axes_dims_rope": [16, 8, 8],
        "caption_channels": [T5_WIDTH, LLAMA_WIDTH],
        "max_resolution": [128, 128],
        "in_channels": 16,
        "llama_layers": list(LLAMA_LAYERS),
        "num_attention_heads": DIT_HEADS,
        "num_routed_experts": 4,
        "num_activated_experts": 2,
        "num_layers": NUM_LAYERS,
        "num_single_layers": NUM_SINGLE_LAYERS,
        "out_channels": 16,
        "patch_size": 2,
        "text_emb_dim": POOLED_WIDTH,
    }


def hidream_model(seed: int = 0, fix_llama3_tokenizer: bool = True) -> TinyFamilyModel:
    """Build a reduced random HiDream I1 MODEL + CLIP in memory (family "hidream").

    Model config comfy.supported_models.HiDream with `hidream_unet_config()`: width 64, 2 double
    and 2 single blocks, 4 routed / 2 active MoE experts (1.5 M parameters, float32 on the CPU). Text maps:
    caption_projection.0-3.linear [64, 32] (Llama states LLAMA_LAYERS), caption_projection.4.linear
    [64, 64] (T5), all without bias; p_embedder.pooled_embedder.linear_1 [64, 2048] and linear_2
    [64, 64] with seeded biases. CLIP (float32): ComfyUI's HiDreamTokenizer / hidream_clip() with
    CLIP-L (3 layers, 60 M parameters), CLIP-G (3 layers, 124 M), T5 (d_model 64, 2.1 M) and Llama
    (width 32, 3 layers, 4.2 M, nearly all the 128256-token embedding). "a cat" encodes to cond
    [1, 128, 64], pooled_output [1, 2048] and conditioning_llama3 [1, 3, 128, 32] (see the module
    docstring). `fix_llama3_tokenizer`: see `fix_llama3_tokenizer_`.
    """
    import_comfyui()
    import comfy.sd
    import comfy.supported_models
    from comfy.supported_models_base import ClipTarget
    from comfy.text_encoders import hidream

    model = model_patcher(
        comfy.supported_models.HiDream,
        hidream_unet_config(),
        lambda dit: init_text_dit_(dit, seed, "hidream.dit", TEXT_MAPS, bias_std=TEXT_BIAS_STD),
    )
    options = {
        "dtype": torch.float32,
        "clip_l_model_config": {"num_hidden_layers": CLIP_LAYERS},
        "clip_g_model_config": {"num_hidden_layers": CLIP_LAYERS},
        "t5xxl_model_config": dict(TINY_T5_CONFIG),
        "llama_model_config": dict(LLAMA_TINY),
    }
    clip = comfy.sd.CLIP(ClipTarget(hidream.HiDreamTokenizer, hidream.hidream_clip()), model_options=options)
    _init_text_encoder_(clip.cond_stage_model, "hidream", seed)
    if fix_llama3_tokenizer:
        fix_llama3_tokenizer_(clip)
    return TinyFamilyModel(model=model, clip=clip, family="hidream")


def caption_projection_keys(model: Any) -> list[str]:
    """Sorted patcher keys ("diffusion_model.caption_projection.N.linear.weight") of a HiDream MODEL.

    Sorted by projection index N (numerically), so the last key is the T5 projection.
    """
    keys = [
        key
        for key in model.model_state_dict("diffusion_model.")
        if key.startswith("diffusion_model.caption_projection.") and key.endswith(".linear.weight")
    ]
    return sorted(keys, key=lambda key: int(key.split(".")[2]))


def caption_projection_sources(model: Any) -> dict[str, tuple[str, int | None]]:
    """Which rows each caption projection of a HiDream MODEL reads.

    {key: ("llama", k)} for caption_projection.i, i < num_layers + num_single_layers, with
    k = llama_layers[i], an index into conditioning_llama3's layer axis (HF hidden state k + 1);
    {key: ("t5", None)} for the last one (the T5 rows, `cond`).
    """
    dit = model.model.diffusion_model
    llama_layers = list(dit.llama_layers)
    keys = caption_projection_keys(model)
    if len(keys) != len(llama_layers) + 1:
        raise ValueError(f"{len(keys)} caption projections for {len(llama_layers)} llama_layers entries")
    sources: dict[str, tuple[str, int | None]] = {key: ("llama", layer) for key, layer in zip(keys, llama_layers)}
    sources[keys[-1]] = ("t5", None)
    return sources


def fix_llama3_tokenizer_(clip: Any) -> bool:
    """Give a HiDream CLIP's Llama-3 tokenizer the backend its tokenizer.json describes; True if changed.

    transformers 5's LlamaTokenizer (LlamaTokenizerFast is an alias) rebuilds a BPE from the file's
    vocabulary and merges with a SentencePiece Metaspace pre-tokenizer, which drops the spaces of
    the byte-level Llama-3 vocabulary. transformers 4.x loaded tokenizer.json as is (byte-level
    pre-tokenizer, ignore_merges, BOS template); this puts that backend in place. No-op (False)
    when the tokenizer already encodes " cat" as one byte-level token.
    """
    import tokenizers
    from comfy.text_encoders import hunyuan_video

    llama = clip.tokenizer.llama
    wrapper = llama.tokenizer
    if wrapper(" cat", add_special_tokens=False)["input_ids"] == [8415]:
        return False
    path = Path(hunyuan_video.__file__).resolve().parent / "llama_tokenizer" / "tokenizer.json"
    wrapper._tokenizer = tokenizers.Tokenizer.from_file(str(path))
    if wrapper("")["input_ids"] != [llama.start_token]:
        raise RuntimeError("Llama-3 tokenizer fix: the new backend does not add the BOS token ComfyUI expects")
    return True
