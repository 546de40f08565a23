"""What the pack knows about each model family, as data: one entry per family.

An entry says which weights of the diffusion model read text-encoder output
(``TextMap``: a patcher-key pattern; the row source: the conditioning, the
pooled vector, an extra encoder output and the layer each block reads, or
several outputs joined (``RowPart``); a bias; what the model applies to the rows
first: an RMSNorm, its own text MLP or its learned padding rows; the input
columns the text occupies; K and V fused in one weight), how one prompt's rows
are laid out and where its last content token is (``TextSegment`` per text
encoder), which CLIP belongs to the family (its tokenizer keys) and the family's
defaults. Everything else in the pack reads this table; adding a family means
adding an entry (and its test). Keys and layouts are those of ComfyUI 0.3.75.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

# Where a map's input rows come from. Any other source names an extra output of the text encoder
# (e.g. HiDream's "conditioning_llama3": [layers, tokens, width] per prompt).
COND = "cond"  # the per-token conditioning rows (what CLIPTextEncode puts in the conditioning)
POOLED = "pooled"  # the pooled text vector (one row per prompt)

# How a segment's last content token is found.
CLIP_RULE = "clip"  # one 77-slot chunk [BOS, tokens, EOS, pad]: the slot before the first EOS; empty: BOS
T5_RULE = "t5"  # [tokens, EOS, pad]: the row before EOS; empty prompt: no content row (EOS stands in)
TEMPLATE_RULE = "template"  # an LLM chat template around the text: the row before the template's suffix
BOS_PAD_RULE = "bos_pad"  # [BOS, tokens, pad …] without EOS (ComfyUI's Llama-3): the slot before the first pad; empty: BOS


@dataclass(frozen=True)
class TextSegment:
    """The rows one text encoder adds to a prompt's conditioning, in order.

    ``encoders``: the tokenizer keys whose tokens make these rows (CLIP-L and
    CLIP-G rows are concatenated side by side, so SDXL's segment has both).
    ``rule``: how the last content token is found (CLIP_RULE, T5_RULE, TEMPLATE_RULE).
    ``masked_padding``: the model masks the rows after EOS out of attention (LTX-Video),
    so they are not text it reads; only a family's last segment can say so.
    """

    encoders: tuple[str, ...]
    rule: str
    masked_padding: bool = False


# Activations of the text MLPs (``TextMLP``) a model applies before its per-block maps.
GELU_TANH = "gelu_tanh"
SILU = "silu"


@dataclass(frozen=True)
class TextMLP:
    """The model's own MLP on the text rows before its maps: Linear, activation, Linear, ….

    ``linears``: module names (patcher key prefixes) of its linear layers, in order;
    the activation is applied between them.
    """

    linears: tuple[str, ...]
    activation: str = GELU_TANH


@dataclass(frozen=True)
class RowPart:
    """One encoder output in the rows of a map that reads several of them joined in order
    (HunyuanDiT: the BERT rows, then the model's MLP on the mT5 rows).

    ``segment``: the layout of an extra output (COND: the family's segments).
    ``padding``: (parameter, offset): the model puts rows ``offset + i`` of that
    parameter (patcher key) in place of the rows after the part's end token.
    """

    source: str
    segment: Optional[TextSegment] = None
    mlp: Optional[TextMLP] = None
    padding: Optional[tuple[str, int]] = None


@dataclass(frozen=True)
class TextMap:
    """Weights of the diffusion model that read text rows.

    ``pattern`` matches patcher keys (``diffusion_model.….weight``); a named
    group ``kv`` (k or v) lets the ``projections`` option pick keys or values.
    ``bias``: the map adds a bias (the edit keeps it; targets are W0·c without it).
    ``norm``: module (patcher key prefix) of an RMSNorm the model applies to the
    rows before this map; its effective weight is applied to the rows the solve uses.
    ``mlp``: the model's text MLP between the encoder rows and this map (WAN's
    text_embedding …); the solve reads its output, computed with its effective weights.
    ``columns``: the input columns the text occupies when the map reads more than
    text (SDXL's label_emb reads the pooled vector, then size embeddings).
    ``fused``: the parts stacked along the weight's outputs in equal slices
    (PixArt's kv_linear: ("k", "v")); the ``projections`` option picks slices.
    ``segment``: the layout of the rows of an extra encoder output (``source``).
    ``layers``: an attribute of the diffusion model listing, per block (the pattern's
    ``block`` group), the layer of ``source`` that block's weight reads; weights of
    blocks past the list are not this map's. A weight belongs to the first map that
    claims it.
    ``parts``: the map reads several encoder outputs joined (then ``source``,
    ``segment`` and ``mlp`` are unused).
    """

    label: str
    pattern: str
    source: str = COND
    bias: bool = False
    norm: Optional[str] = None
    mlp: Optional[TextMLP] = None
    columns: Optional[tuple[int, int]] = None
    fused: tuple[str, ...] = ()
    segment: Optional[TextSegment] = None
    layers: Optional[str] = None
    parts: tuple[RowPart, ...] = ()

    def matches(self, key: str) -> Optional[re.Match]:
        return re.fullmatch(self.pattern, key)

    @property
    def per_block_kv(self) -> bool:
        """Keys and values of the model's attention (the ``projections`` option applies)."""
        return "(?P<kv>" in self.pattern or bool(self.fused)

    @property
    def shown(self) -> str:
        """The weights' names as the README writes them, e.g. ``blocks.N.cross_attn.k``."""
        if self is UNET_KV:
            return "attn2.to_k"
        name = self.pattern.removeprefix(r"diffusion_model\.").removesuffix(r"\.weight")
        name = name.replace("(?P<kv>[kv])", "k")
        name = re.sub(r"\(\?P<\w+>([^)]*)\)", r"\1", name)  # other named groups: their pattern
        name = name.replace(r"\d+", "N").replace(r"\.", ".")
        return re.sub(r"\(\?:[^)]*\)\?", "", name)


@dataclass(frozen=True)
class Family:
    """One model family: the weights an edit changes and how its text rows are read."""

    name: str
    config_classes: tuple[str, ...]  # ComfyUI model_config classes (subclasses match too)
    encoders: Optional[frozenset[str]]  # tokenizer keys of its CLIP; None: any CLIP of the right width
    segments: tuple[TextSegment, ...]
    maps: tuple[TextMap, ...]
    pooled_default: bool = False
    prompt_format: str = "{}"  # what the family's usual text node encodes around the user's prompt
    batch_encode: bool = False  # many prompts per encoder pass (equal-length chunks, cond = chunks one after another)
    notes: str = ""

    @property
    def has_pooled(self) -> bool:
        return any(m.source == POOLED for m in self.maps)

    @property
    def extra_sources(self) -> dict[str, TextSegment]:
        """The extra encoder outputs its maps read, with their row layouts."""
        sources = [(m.source, m.segment) for m in self.maps] + [(p.source, p.segment) for m in self.maps for p in m.parts]
        return {source: segment for source, segment in sources if source not in (COND, POOLED)}


UNET_KV = TextMap(
    "cross-attention",
    r"diffusion_model\..+\.attn2\.to_(?P<kv>[kv])\.weight",
)
CLIP_SEGMENT = TextSegment(("l",), CLIP_RULE)

# The system prompt ComfyUI's CLIPTextEncodeLumina2 puts before the user's text ("superior", its default).
LUMINA2_SYSTEM_PROMPT = (
    "You are an assistant designed to generate superior images with the superior degree of image-text "
    "alignment based on textual prompts or user prompts. <Prompt Start> {}"
)

FAMILIES: tuple[Family, ...] = (
    Family("SD1.x", ("SD15",), frozenset({"l"}), (CLIP_SEGMENT,), (UNET_KV,), batch_encode=True),
    Family("SD2.x", ("SD20",), frozenset({"h"}), (TextSegment(("h",), CLIP_RULE),), (UNET_KV,), batch_encode=True),
    Family(
        "SDXL",
        ("SDXL",),
        frozenset({"g", "l"}),
        (TextSegment(("g", "l"), CLIP_RULE),),
        (
            UNET_KV,
            # label_emb reads [CLIP-G pooled (1280) | size embeddings (1536)]: only the pooled columns are text.
            TextMap("label_emb (pooled)", r"diffusion_model\.label_emb\.0\.0\.weight", POOLED, bias=True, columns=(0, 1280)),
        ),
        batch_encode=True,
        notes="pooled off by default so the paper's results are reproduced; turn it on for concepts that survive the K/V edit",
    ),
    Family(
        "SD3",
        ("SD3",),
        frozenset({"g", "l", "t5xxl"}),
        (TextSegment(("g", "l"), CLIP_RULE), TextSegment(("t5xxl",), T5_RULE)),
        (
            TextMap("context_embedder", r"diffusion_model\.context_embedder\.weight", bias=True),
            TextMap("y_embedder (pooled)", r"diffusion_model\.y_embedder\.mlp\.0\.weight", POOLED, bias=True),
        ),
        pooled_default=True,
        notes="rows: 77 CLIP-L|G rows (zero-padded to 4096), then the T5 rows",
    ),
    Family(
        "Flux.1",
        ("Flux",),
        frozenset({"l", "t5xxl"}),
        (TextSegment(("t5xxl",), T5_RULE),),
        (
            TextMap("txt_in", r"diffusion_model\.txt_in\.weight", bias=True),
            TextMap("vector_in (pooled)", r"diffusion_model\.vector_in\.in_layer\.weight", POOLED, bias=True),
        ),
        pooled_default=True,
        batch_encode=True,
        notes="T5 rows padded to 256 (tokenizer options can change it), all read by the model",
    ),
    Family(
        "Flux.2",
        ("Flux2",),
        frozenset({"mistral3_24b"}),
        (TextSegment(("mistral3_24b",), TEMPLATE_RULE),),
        (TextMap("txt_in", r"diffusion_model\.txt_in\.weight"),),
        batch_encode=True,
        notes="rows: BOS, the system prompt, [INST], the prompt, [/INST] (hidden layers 10, 20, 30 side by side)",
    ),
    Family(
        "Chroma",
        ("Chroma",),
        frozenset({"t5xxl"}),
        (TextSegment(("t5xxl",), T5_RULE),),
        (TextMap("txt_in", r"diffusion_model\.txt_in\.weight", bias=True),),
        batch_encode=True,
    ),
    Family(
        "Qwen-Image",
        ("QwenImage",),
        frozenset({"qwen25_7b"}),
        (TextSegment(("qwen25_7b",), TEMPLATE_RULE),),
        (TextMap("txt_in", r"diffusion_model\.txt_in\.weight", bias=True, norm="diffusion_model.txt_norm"),),
    ),
    Family(
        "Z-Image",
        ("ZImage",),
        frozenset({"qwen3_4b"}),
        (TextSegment(("qwen3_4b",), TEMPLATE_RULE),),
        (TextMap("cap_embedder", r"diffusion_model\.cap_embedder\.1\.weight", bias=True, norm="diffusion_model.cap_embedder.0"),),
        batch_encode=True,
    ),
    Family(
        "Lumina 2",
        ("Lumina2",),
        frozenset({"gemma2_2b"}),
        (TextSegment(("gemma2_2b",), TEMPLATE_RULE),),
        (TextMap("cap_embedder", r"diffusion_model\.cap_embedder\.1\.weight", bias=True, norm="diffusion_model.cap_embedder.0"),),
        prompt_format=LUMINA2_SYSTEM_PROMPT,
        batch_encode=True,
        notes="prompts are encoded as CLIPTextEncodeLumina2 does with its default 'superior' system prompt",
    ),
    # One caption projection per block, each on a Llama hidden layer (llama_layers), and one on the T5 rows.
    Family(
        "HiDream",
        ("HiDream",),
        frozenset({"g", "l", "t5xxl", "llama"}),
        (TextSegment(("t5xxl",), T5_RULE),),
        (
            TextMap(
                "caption_projection (Llama)",
                r"diffusion_model\.caption_projection\.(?P<block>\d+)\.linear\.weight",
                source="conditioning_llama3",
                segment=TextSegment(("llama",), BOS_PAD_RULE),
                layers="llama_layers",
            ),
            TextMap("caption_projection (T5)", r"diffusion_model\.caption_projection\.(?P<block>\d+)\.linear\.weight"),
            TextMap(
                "p_embedder (pooled)", r"diffusion_model\.p_embedder\.pooled_embedder\.linear_1\.weight", POOLED, bias=True
            ),
        ),
        notes="T5 rows padded to 128 (all read); Llama rows BOS, prompt, padding to 128 (all read), one layer per block",
    ),
    # Per-block cross-attention on the BERT rows joined with the model's MLP on the mT5 rows.
    Family(
        "HunyuanDiT",
        ("HunyuanDiT",),
        frozenset({"hydit_clip", "mt5xl"}),
        (TextSegment(("hydit_clip",), CLIP_RULE),),
        (
            TextMap(
                "cross-attention",
                r"diffusion_model\.blocks\.\d+\.attn2\.kv_proj\.weight",
                bias=True,
                fused=("k", "v"),
                parts=(
                    RowPart(COND, padding=("diffusion_model.text_embedding_padding", 0)),
                    RowPart(
                        "conditioning_mt5xl",
                        TextSegment(("mt5xl",), T5_RULE),
                        TextMLP(("diffusion_model.mlp_t5.0", "diffusion_model.mlp_t5.2"), SILU),
                        padding=("diffusion_model.text_embedding_padding", 77),
                    ),
                ),
            ),
        ),
        notes="rows: 77 BERT rows, then mlp_t5 of 256 mT5 rows; padding rows are the model's text_embedding_padding",
    ),
    # Per-block cross-attention on the rows of the model's own text MLP.
    Family(
        "WAN",
        ("WAN21_T2V",),
        frozenset({"umt5xxl"}),
        (TextSegment(("umt5xxl",), T5_RULE),),
        (
            TextMap(
                "cross-attention",
                r"diffusion_model\.(?:vace_)?blocks\.\d+\.cross_attn\.(?P<kv>[kv])\.weight",
                bias=True,
                mlp=TextMLP(("diffusion_model.text_embedding.0", "diffusion_model.text_embedding.2")),
            ),
        ),
        batch_encode=True,
        notes="UMT5 rows padded to 512 (zeros, then text_embedding); the image-context k_img / v_img are not text",
    ),
    Family(
        "LTX-Video",
        ("LTXV",),
        frozenset({"t5xxl"}),
        (TextSegment(("t5xxl",), T5_RULE, masked_padding=True),),
        (
            TextMap(
                "cross-attention",
                r"diffusion_model\.transformer_blocks\.\d+\.attn2\.to_(?P<kv>[kv])\.weight",
                bias=True,
                mlp=TextMLP(("diffusion_model.caption_projection.linear_1", "diffusion_model.caption_projection.linear_2")),
            ),
        ),
        batch_encode=True,
        notes="T5 rows padded to 128 and masked after EOS: the rows up to EOS, then caption_projection",
    ),
    Family(
        "PixArt",
        ("PixArtAlpha",),
        frozenset({"t5xxl"}),
        (TextSegment(("t5xxl",), T5_RULE),),
        (
            TextMap(
                "cross-attention",
                r"diffusion_model\.blocks\.\d+\.cross_attn\.kv_linear\.weight",
                bias=True,
                mlp=TextMLP(("diffusion_model.y_embedder.y_proj.fc1", "diffusion_model.y_embedder.y_proj.fc2")),
                fused=("k", "v"),
            ),
        ),
        batch_encode=True,
        notes="T5 rows without padding, then y_embedder; K and V share one kv_linear weight",
    ),
    Family(
        "Cosmos Predict2",
        ("CosmosT2IPredict2",),
        frozenset({"t5xxl"}),
        (TextSegment(("t5xxl",), T5_RULE),),
        (TextMap("cross-attention", r"diffusion_model\.blocks\.\d+\.cross_attn\.(?P<kv>[kv])_proj\.weight"),),
        batch_encode=True,
        notes="T5 (1024-wide) rows padded to 512, read by every block",
    ),
)

# Any other UNet with cross-attention (SD1.x/SD2.x/SDXL relatives: refiners, inpainting, v-prediction …).
UNET_FALLBACK = Family("UNet cross-attention", (), None, (TextSegment((), CLIP_RULE),), (UNET_KV,), batch_encode=True)


class UnsupportedModelError(ValueError):
    """The MODEL belongs to a family the pack cannot edit."""


def config_class_names(model) -> list[str]:
    """The MODEL's ComfyUI config class and its base classes, most specific first."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    if config is None:
        return [type(getattr(model, "model", model)).__name__]
    return [cls.__name__ for cls in type(config).__mro__]


def model_family_name(model) -> str:
    """Name of the model's ComfyUI config class (SD15, SDXL, Flux, QwenImage …)."""
    return config_class_names(model)[0]


def family_of_model(model, keys) -> Family:
    """The family entry of a MODEL: by its config class (or a base class), else a UNet with cross-attention.

    ``keys``: the MODEL's patcher keys. Raises UnsupportedModelError naming the
    model's class when no entry applies.
    """
    for name in config_class_names(model):
        for family in FAMILIES:
            if name in family.config_classes:
                return family
    if any(UNET_KV.matches(key) for key in keys):
        return UNET_FALLBACK
    supported = ", ".join(f.name for f in FAMILIES)
    raise UnsupportedModelError(
        f"this MODEL ({model_family_name(model)}) is not a family UCE can edit: it has no UNet cross-attention "
        f"K/V projections (attn2.to_k / to_v) and no entry in the pack's family table; supported: {supported}"
    )


def families_with_encoders(encoders) -> list[Family]:
    """Families whose CLIP has exactly these tokenizer keys."""
    wanted = frozenset(encoders)
    return [f for f in FAMILIES if f.encoders == wanted]


def family_of_clip(clip_encoders) -> Family:
    """The family a CLIP belongs to, from its tokenizer keys (the UNet fallback if none matches)."""
    found = families_with_encoders(clip_encoders)
    return found[0] if found else UNET_FALLBACK


def describe_encoders(encoders) -> str:
    """A CLIP described by its encoders and the families it belongs to, e.g. "t5xxl (Chroma)"."""
    names = [f.name for f in families_with_encoders(encoders)]
    keys = " + ".join(sorted(encoders))
    return f"{keys} ({' / '.join(names)})" if names else keys
