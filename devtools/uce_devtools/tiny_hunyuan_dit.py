"""A random-weight HunyuanDiT (v1.1 / v1.2, or v1.0) with its two text encoders, which ComfyUI runs.

`hunyuan_dit_model` builds a reduced MODEL + CLIP in memory with ComfyUI's own model config
(comfy.supported_models.HunyuanDiT, or HunyuanDiT1 for v1.0), DiT (comfy/ldm/hydit/models.py),
tokenizers and text-encoder classes (comfy/text_encoders/hydit.py). Nothing is loaded from a file
or a hub. (ComfyUI's detection could not read such a model back from a state dict anyway: it
takes num_heads 16 and the text widths 1024 / 2048 from the DiT's defaults, and it recognises
v1.0 only by extra_embedder.0 reading 3968 = 1024 + 6·256 + 1408 features.)

What distinguishes the two configs: HunyuanDiT ("hydit", v1.1 / v1.2) has attn_precision float32
and ComfyUI's "linear" (scaled-linear) betas 0.00085 .. 0.018 (sigma_max 45.4); HunyuanDiT1
("hydit1", v1.0) has attn_precision None, betas 0.00085 .. 0.03 (sigma_max 420) and a DiT with
size_cond and use_style_cond: extra_embedder.0 also reads a 6·256 sinusoidal embedding of
image_meta_size and a learned style row (style_embedder, Embedding(1, width)). Both are
model_base.HunyuanDiT: v-prediction, SDXL latent format (4 channels), learn_sigma (the DiT writes
8 channels and returns the first 4).

Text layout (verified by running ComfyUI 0.3.75 with this module's tiny models)
--------------------------------------------------------------------------------
Tokenizer (HyditTokenizer) keys: "hydit_clip" (ComfyUI's bundled Chinese BERT WordPiece vocabulary
of 47020 ids) and "mt5xl" (SentencePiece, from tokenizer_data["mt5xl.spiece_model"]; here
`tiny_llm_families.tiny_gemma_spiece_model()`, whose ids are mT5's: pad 0, EOS 1).

- hydit_clip: [CLS] = 101, the tokens, [SEP] = 102, then pad 0 up to min_length 77 (max_length
  512: a longer prompt is one unpadded chunk, e.g. "cat " * 300 -> 302 tokens; over 510 tokens it
  splits into chunks of 512 and a shorter last one, each with its own [CLS] / [SEP], which
  ComfyUI 0.3.75 then fails to encode: torch.cat of unequal chunks raises a RuntimeError).
  "a cat" -> [101, 143 ("a"), 10165 ("cat"), 102, 0 × 73].
- mt5xl: no start token, the tokens, EOS 1, then pad 0 up to min_length 256 (max_length 99999999:
  one chunk, longer than 256 when needed). "a cat" -> ["▁a", "▁cat", 1, 0 × 253].

``clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)`` returns
the keys cond, pooled_output, attention_mask, conditioning_mt5xl, attention_mask_mt5xl:

- cond: BERT last hidden state, [1, 77, BERT width] (here 48); more rows for longer prompts.
- attention_mask: [1, 77] int64, 1 for [CLS], the tokens and [SEP] (inclusive), 0 for the pads.
- conditioning_mt5xl: mT5 encoder output after its final RMSNorm, [1, 256, mT5 width] (here 32).
- attention_mask_mt5xl: [1, 256] int64, 1 for the tokens and EOS (inclusive), 0 for the pads.
- pooled_output: None (ComfyUI's BertModel returns no pooled vector; nothing uses one).

Padding rows are NOT zero in either encoder (zero_out_masked is off): they are the encoders'
outputs at pad tokens (which the encoders' own attention masks hide from the other tokens).

How it reaches the DiT: CLIPTextEncode puts the dict's extra keys in the CONDITIONING;
model_base.HunyuanDiT.extra_conds maps cross_attn (cond) -> c_crossattn (the DiT's `context`),
attention_mask -> text_embedding_mask, conditioning_mt5xl -> encoder_hidden_states_t5,
attention_mask_mt5xl -> text_embedding_mask_t5, plus image_meta_size = [[height, width,
target_height, target_width, 0, 0]] (768 each unless the conditioning carries them; only v1.0
reads it). Both masks are used by the DiT only to choose padding rows (no attention masking).

How the DiT builds text_states (HunYuanDiT.forward, comfy/ldm/hydit/models.py ~315-330), with
text_len 77 and text_len_t5 256:

1. t5 = mlp_t5(conditioning_mt5xl): Linear(mT5 width -> 4·mT5 width), SiLU, Linear(-> BERT
   width), on every mT5 row (padding rows included).
2. BERT part: in the LAST 77 rows of cond, each row whose attention_mask is 0 is replaced by the
   same-position row of text_embedding_padding[0:77] (row i of a 77-row cond -> padding[i]).
3. mT5 part: in the LAST 256 rows of t5, each row whose mask is 0 is replaced by
   text_embedding_padding[77:333] (row j -> padding[77 + j]).
4. text_states = cat([BERT part, mT5 part], rows): [B, 77 + 256 = 333, BERT width] for prompts
   within the minimum lengths. [SEP] and EOS have mask 1: they are kept, not replaced. A longer
   prompt gives more rows (e.g. "cat " * 100: 102 + 256 = 358), and then its cond and the
   negative's differ in length, so CFG runs them as two batches of one.

Every block's attn2 (CrossAttention) reads text_states through one fused weight
``blocks.N.attn2.kv_proj`` [2·width, BERT width] + bias [2·width]: output rows 0:width are K
(then per-head LayerNorm k_norm), rows width:2·width are V; within each half, head h is rows
h·head_dim:(h+1)·head_dim. Nothing else reads text_states.

The mT5 rows also reach the DiT through a pooled path that does NOT go through text_states:
``pooler`` (AttentionPool, 8 heads, positional_embedding [257, mT5 width]) reads the RAW
conditioning_mt5xl (no mlp_t5, no mask, no padding replacement; its first 256 rows, padding rows
included), prepends their mean, and its q_proj / k_proj / v_proj / c_proj give a [B, 1024] vector
that extra_embedder (Linear 1024 [+ 6·256 + width for v1.0] -> 4·width, SiLU, Linear -> width)
adds to the timestep embedding: the conditioning vector of every block's default_modulation and
of the final layer's adaLN. The BERT rows have no pooled path.

Tiny sizes: DiT width 64, 2 heads of 32 (head_dim must be a multiple of 8 for the attentions and
of 4 for the 2D RoPE), depth 4 (blocks with index > depth // 2 take a skip from the first half:
block 3 gets block 0's output; an even depth pairs them), mlp_ratio 4, patch 2; BERT width 48
(2 layers, 3 heads, feed-forward 96); mT5 width 32 (2 layers, 4 heads of 16, gated-GELU
feed-forward 64; the pooler's 8 heads need a multiple of 8). Three different widths, so that a
transposed weight cannot go unnoticed.

Weights come from `tiny_models.init_text_dit_` (seeded per tensor name; norms weight 1 / bias 0)
with seeded N(0, TEXT_BIAS_STD) biases on the maps that read text (`text_map_names()`: mlp_t5.0,
mlp_t5.2 and every block's attn2.kv_proj), and text_embedding_padding seeded N(0, PADDING_STD = 1)
so that replaced rows are recognisable. The encoders are randomised like `tiny_t5_families` (mT5
relative attention bias N(0, 1)).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .comfy_env import import_comfyui
from .tiny_llm_families import tiny_gemma_spiece_model
from .tiny_models import TinyFamilyModel, _seeded_normal, init_text_dit_, model_patcher
from .tiny_t5_families import _init_text_encoder_

FAMILY = "hunyuan_dit"

DIT_WIDTH = 64
DIT_HEADS = 2
DIT_DEPTH = 4

# Overrides of ComfyUI's hydit_clip.json (Chinese RoBERTa-wwm-ext-large; vocabulary 47020 and
# 512 positions kept: ComfyUI's bundled BERT tokenizer). Passed as model_options["hydit_clip_model_config"].
TINY_BERT_CONFIG = {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 3, "num_hidden_layers": 2}
# Overrides of ComfyUI's mt5_config_xl.json (vocabulary 250112 kept). Passed as
# model_options["mt5xl_model_config"].
TINY_MT5_CONFIG = {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 4, "num_layers": 2}

TEXT_STATES_DIM = TINY_BERT_CONFIG["hidden_size"]  # width of text_states (the DiT's text_states_dim)
TEXT_STATES_DIM_T5 = TINY_MT5_CONFIG["d_model"]
BERT_TOKENS = {"start": 101, "end": 102, "pad": 0}
MT5_TOKENS = {"end": 1, "pad": 0}
BERT_MIN_LENGTH = 77  # = the DiT's text_len
MT5_MIN_LENGTH = 256  # = the DiT's text_len_t5
POOLER_WIDTH = 1024  # AttentionPool output, fixed in the DiT

# The DiT's MLP from mT5 rows to text_states rows (Linear, SiLU, Linear).
TEXT_MLP = ("mlp_t5.0", "mlp_t5.2")
TEXT_BIAS_STD = 0.25
PADDING_STD = 1.0

# Patcher keys of the fused cross-attention K/V projections (rows 0:width K, width:2·width V).
KV_PROJ_KEY = re.compile(r"^diffusion_model\.blocks\.(\d+)\.attn2\.kv_proj\.weight$")


def hunyuan_dit_unet_config(v1_0: bool = False) -> dict:
    """The unet_config of the tiny DiT (keys as comfy.model_detection writes them, plus the widths)."""
    config = {
        "image_model": "hydit1" if v1_0 else "hydit",
        "hidden_size": DIT_WIDTH,
        "depth": DIT_DEPTH,
        "num_heads": DIT_HEADS,
        "text_states_dim": TEXT_STATES_DIM,
        "text_states_dim_t5": TEXT_STATES_DIM_T5,
    }
    if v1_0:
        config["size_cond"] = True
        config["use_style_cond"] = True
    return config


def hunyuan_dit_model(seed: int = 0, v1_0: bool = False) -> TinyFamilyModel:
    """Build a reduced random HunyuanDiT MODEL + CLIP in memory (family "hunyuan_dit").

    Model config comfy.supported_models.HunyuanDiT (v1.1 / v1.2), or HunyuanDiT1 when `v1_0`
    (size and style conditions); DiT of `hunyuan_dit_unet_config(v1_0)`: width 64, 2 heads, 4
    blocks (0.67 M parameters; 1.08 M for v1.0). Text maps: mlp_t5.0 [128, 32] + bias, mlp_t5.2
    [48, 128] + bias, per block attn2.kv_proj [128, 48] + bias; text_embedding_padding [333, 48].
    CLIP: see `hunyuan_dit_clip`. See the module docstring for the text layout.
    """
    import_comfyui()
    import comfy.supported_models

    config_class = comfy.supported_models.HunyuanDiT1 if v1_0 else comfy.supported_models.HunyuanDiT
    tag = f"{FAMILY}{'_v1_0' if v1_0 else ''}.dit"

    def init(dit: torch.nn.Module) -> None:
        init_text_dit_(dit, seed, tag, text_map_names(DIT_DEPTH), bias_std=TEXT_BIAS_STD)
        with torch.no_grad():
            padding = dit.text_embedding_padding
            padding.copy_(_seeded_normal(padding.shape, PADDING_STD, seed, f"{tag}.text_embedding_padding"))

    model = model_patcher(config_class, hunyuan_dit_unet_config(v1_0), init)
    return TinyFamilyModel(model=model, clip=hunyuan_dit_clip(seed), family=FAMILY)


def hunyuan_dit_clip(seed: int = 0) -> Any:
    """ComfyUI's HunyuanDiT text encoder (HyditTokenizer / HyditModel), reduced, as a comfy.sd.CLIP.

    float32 (ComfyUI's CPU default would be fp16). BERT of `TINY_BERT_CONFIG` (2.3 M parameters,
    nearly all the 47020-token embedding) with ComfyUI's bundled tokenizer; mT5 of
    `TINY_MT5_CONFIG` (8.0 M, nearly all the 250112-token embedding) with
    `tiny_gemma_spiece_model()` as tokenizer_data["mt5xl.spiece_model"]. Weights seeded by seed.
    """
    import_comfyui()
    import comfy.sd
    import comfy.supported_models

    target = comfy.supported_models.HunyuanDiT(hunyuan_dit_unet_config()).clip_target()
    options = {
        "dtype": torch.float32,
        "hydit_clip_model_config": dict(TINY_BERT_CONFIG),
        "mt5xl_model_config": dict(TINY_MT5_CONFIG),
    }
    tokenizer_data = {"mt5xl.spiece_model": tiny_gemma_spiece_model()}
    clip = comfy.sd.CLIP(target, model_options=options, tokenizer_data=tokenizer_data)
    _init_text_encoder_(clip.cond_stage_model, FAMILY, seed)
    return clip


def text_map_names(depth: int = DIT_DEPTH) -> tuple[str, ...]:
    """Module names of the maps that read text: TEXT_MLP, then each block's attn2.kv_proj."""
    return TEXT_MLP + tuple(f"blocks.{i}.attn2.kv_proj" for i in range(depth))


def kv_proj_keys(model: Any) -> tuple[str, ...]:
    """Patcher keys ``diffusion_model.blocks.N.attn2.kv_proj.weight`` of a HunyuanDiT MODEL, by block."""
    matches = (KV_PROJ_KEY.match(key) for key in model.model_state_dict())
    return tuple(m.group(0) for m in sorted((m for m in matches if m), key=lambda m: int(m.group(1))))


def split_kv(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, V) halves of a fused kv_proj weight [2·width, ...] or bias [2·width]: rows 0:width are K."""
    half = weight.shape[0] // 2
    return weight[:half], weight[half:]


def encode(clip: Any, text: str) -> dict:
    """``clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)``."""
    return clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)


def text_states(model: Any, clip: Any, text: str) -> torch.Tensor:
    """The [rows, text_states_dim] text_states that every block's attn2 reads for one prompt.

    Encodes `text` with `clip`, loads `model` the way KSampler does (so patches on mlp_t5 or
    text_embedding_padding count), then repeats HunYuanDiT.forward's steps with the model's own
    modules: mlp_t5 on the mT5 rows, masked rows of the last text_len BERT rows / last text_len_t5
    mT5 rows replaced by text_embedding_padding[:text_len] / [text_len:], BERT part first.
    Returns a float32 CPU tensor (333 rows for prompts within 77 BERT / 256 mT5 tokens).
    """
    import comfy.model_management
    import comfy.ops

    out = encode(clip, text)
    comfy.model_management.load_models_gpu([model])
    base = model.model
    dit = base.diffusion_model
    dtype = base.manual_cast_dtype if base.manual_cast_dtype is not None else base.get_dtype()
    device = model.load_device
    with torch.no_grad():
        bert = out["cond"].to(device, dtype).clone()
        bert_mask = out["attention_mask"].to(device).bool()
        t5 = out["conditioning_mt5xl"].to(device, dtype)
        t5_mask = out["attention_mask_mt5xl"].to(device).bool()
        b, rows_t5, width_t5 = t5.shape
        t5 = dit.mlp_t5(t5.view(-1, width_t5)).view(b, rows_t5, -1)
        padding = comfy.ops.cast_to_input(dit.text_embedding_padding, bert)
        n, n_t5 = dit.text_len, dit.text_len_t5
        bert[:, -n:] = torch.where(bert_mask[:, -n:].unsqueeze(2), bert[:, -n:], padding[:n])
        t5[:, -n_t5:] = torch.where(t5_mask[:, -n_t5:].unsqueeze(2), t5[:, -n_t5:], padding[n:])
        return torch.cat([bert, t5], dim=1)[0].to("cpu", torch.float32)
