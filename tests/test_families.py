"""UCE on every DiT family of the family table, in a real ComfyUI, on tiny random-weight models.

For each family the test knows on its own (from ComfyUI's source, not from the pack) which weights
read text, where a prompt's last content token is and what the model applies before the map, encodes
its prompts itself with ComfyUI's CLIP, and checks the node against that knowledge: the patched keys,
the affine closed form (naive float64 reference, bias kept), the edited rows reaching the guide's
outputs bias included, preserved rows staying, strength, sampling, LoRA stacking, saving, and a CLIP
of another family being refused. Weights are read as ComfyUI loads them for sampling (live_weights).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest
import safetensors.torch
import torch
from uce_devtools import comfy_env, tiny_models
from uce_devtools.graph import live_weights, run_node

import uce_reference as ref

T5_EOS = 1


def t5_segments(tokens, key="t5xxl", start=0):
    """T5 rows: [tokens, EOS, pad …]; the last content token is the row before EOS (-1: none)."""
    ids = [t[0] for t in tokens[key][0]]
    return [(start, start + len(ids), ids.index(T5_EOS) - 1)]


def sd3_segments(tokens):
    """SD3 rows: 77 CLIP-L|G rows ([BOS, tokens, EOS, pad]) then the T5 rows."""
    ids = [t[0] for t in tokens["l"][0]]
    return [(0, 77, ids.index(49407, 1) - 1)] + t5_segments(tokens, start=77)


@dataclass(frozen=True)
class FamilyCase:
    config_class: str
    cond_map: str  # patcher key of a map that reads the per-token rows
    pooled_map: Optional[str]  # patcher key of the map that reads the pooled vector
    pooled_default: bool
    segments: Callable  # (tokens, row count) -> [(start, stop, last)]
    bias: bool = True
    norm: Optional[str] = None  # module whose RMSNorm the model applies to the rows before cond_map
    mlp: Optional[str] = None  # module: the model's text MLP between the encoder rows and the maps
    cond_keys: Optional[str] = None  # regex of every per-token map (per-block K/V), default: cond_map alone
    also: tuple[str, ...] = ()  # more per-token maps the closed-form test checks
    prompt_format: str = "{}"
    sampling: dict = field(default_factory=lambda: {"cfg": 2.0, "scheduler": "simple"})
    latent: str = "EmptySD3LatentImage"
    latent_inputs: dict = field(default_factory=lambda: {"width": 64, "height": 64, "batch_size": 1})
    # (model, clip, text) -> (rows the maps read, segments), where the model joins several encoder outputs
    joined_rows: Optional[Callable] = None

    def cond_maps(self, model) -> set[str]:
        if self.cond_keys is None:
            return {self.cond_map}
        return {key for key in model.model.state_dict() if re.fullmatch(self.cond_keys, key)}


CASES = {
    "flux": FamilyCase(
        "Flux", "diffusion_model.txt_in.weight", "diffusion_model.vector_in.in_layer.weight", True,
        lambda tokens, rows: t5_segments(tokens), sampling={"cfg": 1.0, "scheduler": "simple", "guidance": 3.5},
    ),
    "chroma": FamilyCase(
        "Chroma", "diffusion_model.txt_in.weight", None, False,
        lambda tokens, rows: t5_segments(tokens), sampling={"cfg": 4.0, "scheduler": "simple"},
    ),
    "sd3": FamilyCase(
        "SD3", "diffusion_model.context_embedder.weight", "diffusion_model.y_embedder.mlp.0.weight",
        True, lambda tokens, rows: sd3_segments(tokens), sampling={"cfg": 4.5, "scheduler": "sgm_uniform"},
    ),
}


def template_segments(suffix):
    """LLM rows: whatever template rows come before the prompt, the prompt, then ``suffix`` template rows."""
    return lambda tokens, rows: [(0, rows, max(rows - 1 - suffix, -1))]


def lumina2_format():
    """What ComfyUI's CLIPTextEncodeLumina2 encodes with its default system prompt."""
    import comfy_extras.nodes_lumina2 as lumina2

    return lumina2.CLIPTextEncodeLumina2.SYSTEM_PROMPT["superior"] + " <Prompt Start> {}"


CASES.update(
    {
        # cond: the prompt, then "<|im_end|>\n<|im_start|>assistant\n" (the prefix is cut off by the encoder)
        "qwen_image": FamilyCase(
            "QwenImage", "diffusion_model.txt_in.weight", None, False, template_segments(5),
            norm="diffusion_model.txt_norm", sampling={"cfg": 2.5, "scheduler": "simple"},
        ),
        # cond: "<|im_start|>user\n", the prompt, the same 5-token suffix
        "z_image": FamilyCase(
            "ZImage", "diffusion_model.cap_embedder.1.weight", None, False, template_segments(5),
            norm="diffusion_model.cap_embedder.0", sampling={"cfg": 1.0, "scheduler": "simple"},
        ),
        # cond: BOS, the system prompt, "<Prompt Start>", the prompt (no suffix)
        "lumina2": FamilyCase(
            "Lumina2", "diffusion_model.cap_embedder.1.weight", None, False, template_segments(0),
            norm="diffusion_model.cap_embedder.0", prompt_format="lumina2", sampling={"cfg": 4.0, "scheduler": "simple"},
        ),
        # cond: BOS, [SYSTEM_PROMPT] … [/SYSTEM_PROMPT], [INST], the prompt, [/INST]; txt_in has no bias
        "flux2": FamilyCase(
            "Flux2", "diffusion_model.txt_in.weight", None, False, template_segments(1), bias=False,
            sampling={"cfg": 1.0, "scheduler": "simple", "guidance": 4.0}, latent="EmptyFlux2LatentImage",
        ),
    }
)
WAN_KV = r"diffusion_model\.blocks\.\d+\.cross_attn\.[kv]\.weight"
CASES.update(
    {
        # Per-block cross-attention K/V (+bias) on the output of WAN's text_embedding MLP; UMT5 rows padded to 512.
        "wan21_t2v": FamilyCase(
            "WAN21_T2V", "diffusion_model.blocks.1.cross_attn.v.weight", None, False,
            lambda tokens, rows: t5_segments(tokens, key="umt5xxl"), mlp="diffusion_model.text_embedding",
            cond_keys=WAN_KV, also=("diffusion_model.blocks.0.cross_attn.k.weight",),
            sampling={"cfg": 5.0, "scheduler": "simple"}, latent="EmptyHunyuanLatentVideo",
            latent_inputs={"width": 32, "height": 32, "length": 5, "batch_size": 1},
        ),
        "wan22_ti2v": FamilyCase(
            "WAN22_T2V", "diffusion_model.blocks.0.cross_attn.k.weight", None, False,
            lambda tokens, rows: t5_segments(tokens, key="umt5xxl"), mlp="diffusion_model.text_embedding",
            cond_keys=WAN_KV, sampling={"cfg": 5.0, "scheduler": "simple"}, latent="Wan22ImageToVideoLatent",
            latent_inputs={"vae": None, "width": 64, "height": 64, "length": 5, "batch_size": 1},
        ),
        # LTX-Video masks the T5 padding out of attention: its rows are the prompt and EOS, then caption_projection.
        "ltxv": FamilyCase(
            "LTXV", "diffusion_model.transformer_blocks.1.attn2.to_k.weight", None, False,
            lambda tokens, rows: [(0, end + 1, end - 1) for end in [[t[0] for t in tokens["t5xxl"][0]].index(T5_EOS)]],
            mlp="diffusion_model.caption_projection",
            cond_keys=r"diffusion_model\.transformer_blocks\.\d+\.attn2\.to_[kv]\.weight",
            also=("diffusion_model.transformer_blocks.0.attn2.to_v.weight",),
            sampling={"cfg": 4.0, "scheduler": "simple"}, latent="EmptyLTXVLatentVideo",
            latent_inputs={"width": 64, "height": 64, "length": 9, "batch_size": 1},
        ),
        # PixArt: K and V fused in one kv_linear per block, on the output of y_embedder's MLP; T5 without padding.
        "pixart_alpha": FamilyCase(
            "PixArtAlpha", "diffusion_model.blocks.1.cross_attn.kv_linear.weight", None, False,
            lambda tokens, rows: t5_segments(tokens), mlp="diffusion_model.y_embedder.y_proj",
            cond_keys=r"diffusion_model\.blocks\.\d+\.cross_attn\.kv_linear\.weight",
            sampling={"cfg": 4.0, "scheduler": "simple"}, latent="EmptyLatentImage",
            latent_inputs={"width": 272, "height": 272, "batch_size": 1},  # ComfyUI's PixArt needs >= 264 px
        ),
        "pixart_sigma": FamilyCase(
            "PixArtSigma", "diffusion_model.blocks.0.cross_attn.kv_linear.weight", None, False,
            lambda tokens, rows: t5_segments(tokens), mlp="diffusion_model.y_embedder.y_proj",
            cond_keys=r"diffusion_model\.blocks\.\d+\.cross_attn\.kv_linear\.weight",
            sampling={"cfg": 4.0, "scheduler": "simple"}, latent="EmptyLatentImage",
            latent_inputs={"width": 272, "height": 272, "batch_size": 1},
        ),
        # Cosmos Predict2: every block's k_proj / v_proj (no bias) read the (old, 1024-wide) T5 rows directly.
        "cosmos_predict2": FamilyCase(
            "CosmosT2IPredict2", "diffusion_model.blocks.1.cross_attn.v_proj.weight", None, False,
            lambda tokens, rows: t5_segments(tokens), bias=False,
            cond_keys=r"diffusion_model\.blocks\.\d+\.cross_attn\.[kv]_proj\.weight",
            also=("diffusion_model.blocks.0.cross_attn.k_proj.weight",),
            sampling={"cfg": 4.0, "scheduler": "simple"},
        ),
        # HiDream: caption_projection.N (no bias) per block on Llama layer llama_layers[N], the last one on the
        # T5 rows (the generic tests use that one; test_hidream_* below check the Llama ones).
        "hidream": FamilyCase(
            "HiDream", "diffusion_model.caption_projection.4.linear.weight",
            "diffusion_model.p_embedder.pooled_embedder.linear_1.weight", False,
            lambda tokens, rows: t5_segments(tokens), bias=False,
            cond_keys=r"diffusion_model\.caption_projection\.\d+\.linear\.weight",
            sampling={"cfg": 5.0, "scheduler": "simple"},
        ),
        # HunyuanDiT: every block's fused attn2.kv_proj (+bias) reads 77 BERT rows joined with the model's mlp_t5
        # on 256 mT5 rows, padding rows replaced by the model's text_embedding_padding.
        "hunyuan_dit": FamilyCase(
            "HunyuanDiT", "diffusion_model.blocks.1.attn2.kv_proj.weight", None, False, None,
            cond_keys=r"diffusion_model\.blocks\.\d+\.attn2\.kv_proj\.weight",
            also=("diffusion_model.blocks.3.attn2.kv_proj.weight",), joined_rows=lambda *a: hunyuan_dit_rows(*a),
            sampling={"cfg": 6.0, "scheduler": "sgm_uniform"}, latent="EmptyLatentImage",
            latent_inputs={"width": 32, "height": 32, "batch_size": 1},
        ),
    }
)
FAMILIES = list(CASES)
T5_ONLY = {"chroma", "ltxv", "pixart_alpha", "pixart_sigma", "cosmos_predict2"}  # CLIPs with one T5 encoder


@pytest.fixture(scope="module")
def extra_nodes(comfy):
    comfy_env.init_extra_nodes()  # EmptySD3LatentImage, FluxGuidance, ModelSave, LoraLoaderModelOnly …


@pytest.fixture
def tiny(pack, tiny_family, request):
    """(name, what the test knows of the family, its tiny MODEL + CLIP built once per session)."""
    return request.param, CASES[request.param], tiny_family(request.param)


def families(*names):
    return pytest.mark.parametrize("tiny", names or FAMILIES, indirect=True)


def node_defaults(pack, class_name="UCEEraseConcepts") -> dict:
    node = pack.nodes.NODE_CLASSES[class_name].INPUT_TYPES()
    sections = {**node["required"], **node.get("optional", {})}
    return {name: spec[1]["default"] for name, spec in sections.items() if len(spec) > 1 and "default" in spec[1]}


def erase(pack, model, clip, **values):
    inputs = {
        **node_defaults(pack), "concept_type": "custom", "guide": "", "expand_prompts": False,
        "concepts": "a red sports car", "preserve": "a bicycle\na lighthouse", **values,
    }
    return run_node("UCEEraseConcepts", model=model, clip=clip, **inputs)[:2]  # (edited MODEL, report)


def encode(case: FamilyCase, clip, text):
    """(rows float64, segments, pooled float64) of one prompt, encoded by ComfyUI alone."""
    prompt_format = lumina2_format() if case.prompt_format == "lumina2" else case.prompt_format
    tokens = clip.tokenize(prompt_format.format(text))
    out = clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
    rows = out["cond"][0].double()
    pooled = out.get("pooled_output")
    segments = case.segments(tokens, rows.shape[0])
    rows = rows[: segments[-1][1]]  # LTX-Video: the padding it masks is not read
    return rows, segments, None if pooled is None else pooled.double()


def map_inputs(case: FamilyCase, model, rows):
    """What the cond maps read: the rows, after the model's RMSNorm or its own text MLP where it has one."""
    if case.norm is not None:
        weight = live_weights(model, [case.norm + ".weight"])[case.norm + ".weight"].double()
        eps = model.model.get_submodule(case.norm).eps
        rows = rows * torch.rsqrt(rows.square().mean(dim=-1, keepdim=True) + eps) * weight
    if case.mlp is not None:  # ComfyUI's own module, in float64, with the weights as patched
        mlp = copy.deepcopy(model.model.get_submodule(case.mlp)).double()
        names = [f"{case.mlp}.{name}" for name, _ in mlp.named_parameters()]
        live = live_weights(model, names)
        mlp.load_state_dict({name.removeprefix(case.mlp + "."): live[name].double() for name in names})
        with torch.no_grad():
            rows = mlp(rows)
    return rows


def bias_of(model, key):
    """The map's bias as the sampler sees it (zero for a map without bias)."""
    bias_key = key.removesuffix("weight") + "bias"
    if bias_key not in model.model.state_dict():
        return torch.zeros(model.model.state_dict()[key].shape[0], dtype=torch.float64)
    return live_weights(model, [bias_key])[bias_key].double()


def expected_erase(case, model, clip, concepts, guide, preserve, mode, key, pooled=False, **scales):
    """The naive affine closed form for one map, from rows the test encodes itself."""
    def prompt(text):
        if case.joined_rows is not None and not pooled:
            return case.joined_rows(model, clip, text)
        rows, segments, pooled_row = encode(case, clip, text)
        if pooled:
            return pooled_row.reshape(1, -1), [(0, 1, 0)]
        return map_inputs(case, model, rows), segments

    w0 = live_weights(model, [key])[key]
    pairs = [(prompt(c), prompt(guide)) for c in concepts]
    kept = [prompt(p) for p in preserve]
    expected = ref.reference_erase_affine(
        {key: w0}, {key: bias_of(model, key)}, pairs, kept, mode,
        scales.get("erase_scale", 1.0), scales["preserve_scale"], scales.get("lamb", 0.5),
    )
    return w0, expected[key]


def sample(case, model, clip, text, seed=3):
    positive = run_node("CLIPTextEncode", clip=clip, text=text)[0]
    negative = run_node("CLIPTextEncode", clip=clip, text="")[0]
    if "guidance" in case.sampling:
        positive = run_node("FluxGuidance", conditioning=positive, guidance=case.sampling["guidance"])[0]
    latent = run_node(case.latent, **case.latent_inputs)[0]
    out = run_node(
        "KSampler", model=model, seed=seed, steps=2, cfg=case.sampling["cfg"], sampler_name="euler",
        scheduler=case.sampling["scheduler"], positive=positive, negative=negative, latent_image=latent, denoise=1.0,
    )[0]
    return out["samples"].clone()


# -- which weights ----------------------------------------------------------------------------------


@families()
def test_patches_land_on_exactly_the_text_maps(pack, tiny):
    family, case, built = tiny
    assert type(built.model.model.model_config).__name__ == case.config_class
    cond_maps = case.cond_maps(built.model)
    assert cond_maps and case.cond_map in cond_maps
    edited, report = erase(pack, built.model, built.clip)
    expected = cond_maps | ({case.pooled_map} if case.pooled_default else set())
    assert set(edited.patches) == expected, report
    without_pooled, _ = erase(pack, built.model, built.clip, pooled="off")
    assert set(without_pooled.patches) == cond_maps
    with_pooled, report = erase(pack, built.model, built.clip, pooled="on")
    assert set(with_pooled.patches) == cond_maps | ({case.pooled_map} if case.pooled_map else set())
    if case.pooled_map is None:
        assert "has no pooled text input" in report
    state = built.model.model.state_dict()
    for key in set(with_pooled.patches):
        assert (key.removesuffix("weight") + "bias" in state) == (True if key == case.pooled_map else case.bias)


# -- the math -------------------------------------------------------------------------------------------


@families()
@pytest.mark.parametrize("mode", ["paper", "last_token"])
def test_edit_is_the_affine_closed_form(pack, tiny, mode):
    family, case, built = tiny
    concepts, preserve = ["a red sports car", "Van Gogh"], ["a bicycle", "a lighthouse", ""]
    edited, _ = erase(pack, built.model, built.clip, concepts="\n".join(concepts), token_mode=mode, pooled="on")
    maps = [(key, False) for key in (case.cond_map, *case.also)] + ([(case.pooled_map, True)] if case.pooled_map else [])
    for key, pooled in maps:
        w0, expected = expected_erase(
            case, built.model, built.clip, concepts, "", preserve, mode, key, pooled=pooled, preserve_scale=1 / 3
        )
        got = live_weights(edited, [key])[key].double() - w0
        error = (torch.linalg.norm(got - expected) / torch.linalg.norm(expected)).item()
        assert error < 1e-4, f"{family} {key} {mode}: relative error {error:.2e}"


@families()
def test_edited_rows_reach_the_guide_and_preserved_rows_stay(pack, tiny):
    """Small lamb, one row per prompt and segment, only the unconditional prompt preserved: the concept's
    full outputs (bias included) land on the guide's, the unconditional prompt's stay."""
    family, case, built = tiny
    edited, _ = erase(
        pack, built.model, built.clip, concepts="Van Gogh", guide="a photo of a lighthouse", preserve="",
        token_mode="last_token", lamb=1e-5, preserve_scale=1.0, pooled="on",
    )
    key = case.cond_map
    w0 = live_weights(built.model, [key])[key].double()
    w1 = live_weights(edited, [key])[key].double()
    b = bias_of(built.model, key)

    def last_rows(text):
        if case.joined_rows is not None:
            rows, segments = case.joined_rows(built.model, built.clip, text)
        else:
            rows, segments, _ = encode(case, built.clip, text)
            rows = map_inputs(case, built.model, rows)
        return torch.stack([rows[start + max(last, 0)] for start, _, last in segments])

    concept, guide, empty = last_rows("Van Gogh"), last_rows("a photo of a lighthouse"), last_rows("")
    target = guide @ w0.T + b
    assert torch.linalg.norm(concept @ w1.T + b - target) < 1e-3 * torch.linalg.norm(target)
    assert torch.linalg.norm(concept @ w0.T + b - target) > 0.1 * torch.linalg.norm(target)  # it really moved
    kept = empty @ w0.T + b
    assert torch.linalg.norm(empty @ w1.T + b - kept) < 1e-3 * torch.linalg.norm(kept)


# -- in a graph --------------------------------------------------------------------------------------------


@families()
def test_strength_zero_samples_like_the_original_and_the_edit_changes_images(pack, tiny, extra_nodes):
    family, case, built = tiny
    zero, _ = erase(pack, built.model, built.clip, concepts="Van Gogh", strength=0.0)
    full, _ = erase(pack, built.model, built.clip, concepts="Van Gogh")
    keys = sorted(full.patches)
    base = live_weights(built.model, keys)
    assert all(torch.equal(live_weights(zero, keys)[k], base[k]) for k in keys)
    original = sample(case, built.model, built.clip, "Van Gogh")
    assert torch.equal(sample(case, zero, built.clip, "Van Gogh"), original)
    edited = sample(case, full, built.clip, "Van Gogh")
    assert torch.isfinite(edited).all() and not torch.allclose(edited, original)


@families()
def test_loras_before_the_edit_are_edited_and_loras_after_it_stack(pack, tiny, extra_nodes, tmp_path):
    family, case, built = tiny
    key = case.cond_map
    lora = tiny_models.tiny_lora({key: tuple(built.model.model.state_dict()[key].shape)}, path=tmp_path / f"{family}.safetensors")
    comfy_env.register_lora_dir(tmp_path)
    with_lora = run_node("LoraLoaderModelOnly", model=built.model, lora_name=lora.name, strength_model=1.0)[0]
    base, lora_w = live_weights(built.model, [key])[key], live_weights(with_lora, [key])[key]
    assert not torch.equal(base, lora_w)

    edited, _ = erase(pack, with_lora, built.clip, pooled="off")
    w0, expected = expected_erase(
        case, with_lora, built.clip, ["a red sports car"], "", ["a bicycle", "a lighthouse", ""], "paper", key,
        preserve_scale=1 / 3,
    )
    assert torch.equal(w0.float(), lora_w)
    got = live_weights(edited, [key])[key].double() - w0
    assert torch.linalg.norm(got - expected) < 1e-4 * torch.linalg.norm(expected)

    plain, _ = erase(pack, built.model, built.clip, pooled="off")
    stacked = run_node("LoraLoaderModelOnly", model=plain, lora_name=lora.name, strength_model=1.0)[0]
    edit_delta = live_weights(plain, [key])[key] - base
    torch.testing.assert_close(live_weights(stacked, [key])[key], lora_w + edit_delta, rtol=1e-5, atol=1e-5)


MLP_FAMILIES = [name for name, case in CASES.items() if case.mlp is not None]


@families(*MLP_FAMILIES)
def test_a_lora_on_the_models_text_mlp_changes_the_rows_the_edit_uses(pack, tiny, extra_nodes, tmp_path):
    """The rows of per-block K/V are the model's text MLP output, with the MLP's weights as patched: a LoRA
    on the MLP gives the closed form on its rows (not on cached rows of the unpatched MLP)."""
    family, case, built = tiny
    mlp = built.model.model.get_submodule(case.mlp)
    name, weight = next((name, w) for name, w in mlp.named_parameters() if w.ndim == 2)  # its first linear
    first, shape = f"{case.mlp}.{name}", tuple(weight.shape)
    lora = tiny_models.tiny_lora({first: shape}, path=tmp_path / f"{family}-mlp.safetensors", scale=0.5)
    comfy_env.register_lora_dir(tmp_path)
    with_lora = run_node("LoraLoaderModelOnly", model=built.model, lora_name=lora.name, strength_model=1.0)[0]
    key = case.cond_map
    plain, _ = erase(pack, built.model, built.clip)
    edited, _ = erase(pack, with_lora, built.clip)
    w0, expected = expected_erase(
        case, with_lora, built.clip, ["a red sports car"], "", ["a bicycle", "a lighthouse", ""], "paper", key,
        preserve_scale=1 / 3,
    )
    got = live_weights(edited, [key])[key].double() - w0
    assert torch.linalg.norm(got - expected) < 1e-4 * torch.linalg.norm(expected)
    unpatched = live_weights(plain, [key])[key].double() - w0
    assert torch.linalg.norm(unpatched - got) > 0.05 * torch.linalg.norm(got)


def test_wan_i2v_edits_the_text_keys_and_values_not_the_image_context(pack, tiny_family):
    """WAN image-to-video blocks also have k_img / v_img on CLIP-vision features: those are not text."""
    built = tiny_family("wan21_i2v")
    state = built.model.model.state_dict()
    assert any(".cross_attn.k_img." in key for key in state)
    edited, report = erase(pack, built.model, built.clip)
    assert set(edited.patches) == CASES["wan21_t2v"].cond_maps(built.model), report
    values_only, _ = erase(pack, built.model, built.clip, projections="values")
    assert set(values_only.patches) == {k for k in CASES["wan21_t2v"].cond_maps(built.model) if ".v." in k}


def hunyuan_dit_rows(model, clip, text):
    """What HunyuanDiT's blocks read for one prompt (ComfyUI's own mlp_t5 and padding, weights as patched),
    with the test's segments: the BERT rows ([CLS] … [SEP] 102, pad), then the mT5 rows (… EOS 1, pad)."""
    from uce_devtools import tiny_hunyuan_dit

    rows = tiny_hunyuan_dit.text_states(model, clip, text).double()
    tokens = clip.tokenize(text)
    bert, mt5 = ([t[0] for t in tokens[name][0]] for name in ("hydit_clip", "mt5xl"))
    return rows, [(0, len(bert), bert.index(102) - 1), (len(bert), len(bert) + len(mt5), mt5.index(T5_EOS) - 1)]


LLAMA_PAD = 128009  # ComfyUI's Llama-3 tokenizer: BOS, the prompt, no EOS, then this pad token


def llama_prompt(clip, text, layer):
    """(rows float64, segments) of one Llama hidden layer of a HiDream prompt, encoded by ComfyUI alone:
    every row is read (the DiT has no mask); the last content token is the slot before the first pad."""
    tokens = clip.tokenize(text)
    out = clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
    rows = out["conditioning_llama3"][0, layer].double()
    ids = [t[0] for t in tokens["llama"][0]]
    return rows, [(0, rows.shape[0], ids.index(LLAMA_PAD, 1) - 1)]


@pytest.mark.parametrize("mode", ["paper", "last_token"])
def test_hidream_each_caption_projection_is_the_closed_form_on_its_own_llama_layer(pack, tiny_family, mode):
    """caption_projection.N reads Llama hidden layer llama_layers[N] (the test reads the list off the DiT):
    each is the naive closed form on that layer's rows; projections on the same layer share one solve."""
    from uce_devtools import tiny_hidream

    built = tiny_family("hidream")
    layers = list(built.model.model.diffusion_model.llama_layers)
    assert len(set(layers)) < len(layers)  # two blocks read one layer
    concepts, preserve = ["a red sports car", "Van Gogh"], ["a bicycle", "a lighthouse", ""]
    edited, report = erase(pack, built.model, built.clip, concepts="\n".join(concepts), token_mode=mode)
    assert set(edited.patches) == set(tiny_hidream.caption_projection_keys(built.model))
    assert f"{len(layers)} caption_projection (Llama) on {len(set(layers))} source layers" in report, report
    for block, layer in enumerate(layers):
        key = f"diffusion_model.caption_projection.{block}.linear.weight"
        w0 = live_weights(built.model, [key])[key]
        expected = ref.reference_erase_affine(
            {key: w0}, {key: torch.zeros(w0.shape[0], dtype=torch.float64)},
            [(llama_prompt(built.clip, c, layer), llama_prompt(built.clip, "", layer)) for c in concepts],
            [llama_prompt(built.clip, t, layer) for t in preserve], mode, 1.0, 1 / 3, 0.5,
        )[key]
        got = live_weights(edited, [key])[key].double() - w0.double()
        error = (torch.linalg.norm(got - expected) / torch.linalg.norm(expected)).item()
        assert error < 1e-4, f"block {block} (layer {layer}) {mode}: relative error {error:.2e}"


@pytest.mark.parametrize("family", ["pixart_alpha", "hunyuan_dit"])
def test_projections_pick_the_halves_of_a_fused_kv_weight(pack, tiny_family, family):
    """PixArt's kv_linear and HunyuanDiT's kv_proj stack K (first half of the outputs) over V: `keys` / `values`
    edit one half, and each half is what the keys+values edit gives it (each output row is solved on its own)."""
    built = tiny_family(family)
    key = CASES[family].cond_map
    w0 = live_weights(built.model, [key])[key].double()
    half = w0.shape[0] // 2
    both, _ = erase(pack, built.model, built.clip)
    delta = live_weights(both, [key])[key].double() - w0
    for projections, edited_half in (("keys", slice(0, half)), ("values", slice(half, None))):
        one, report = erase(pack, built.model, built.clip, projections=projections)
        got = live_weights(one, [key])[key].double() - w0
        untouched = slice(half, None) if edited_half.start == 0 else slice(0, half)
        assert torch.count_nonzero(got[untouched]) == 0, projections
        assert torch.linalg.norm(got[edited_half]) > 0, projections
        torch.testing.assert_close(got[edited_half], delta[edited_half], rtol=1e-4, atol=1e-5)
        assert "edited as a whole" not in report


@families()
def test_model_save_writes_the_edited_weights(pack, tiny, extra_nodes, comfy):
    import folder_paths

    family, case, built = tiny
    edited, _ = erase(pack, built.model, built.clip)
    prefix = f"uce_families/{family}"
    run_node("ModelSave", model=edited, filename_prefix=prefix)
    (saved_file,) = Path(folder_paths.get_output_directory(), "uce_families").glob(f"{family}_*.safetensors")
    saved = safetensors.torch.load_file(saved_file)
    live = live_weights(edited, sorted(edited.patches))
    for key, weight in live.items():
        (stored_key,) = [k for k in saved if k.endswith(key.removeprefix("diffusion_model."))]
        torch.testing.assert_close(saved[stored_key].float(), weight.to(saved[stored_key].dtype).float())


# -- bad input ---------------------------------------------------------------------------------------------


@families()
def test_a_clip_of_another_family_is_refused_naming_both(pack, tiny, tiny_family, sd15):
    family, case, built = tiny
    with pytest.raises(ValueError, match=rf"the CLIP gives 768-wide text conditioning but this {case.config_class} MODEL"):
        erase(pack, built.model, sd15[1])
    other = "flux" if family in T5_ONLY else "chroma"
    with pytest.raises(ValueError, match="the CLIP does not match the MODEL") as refused:
        erase(pack, built.model, tiny_family(other).clip)
    assert case.config_class in str(refused.value) and "t5xxl" in str(refused.value)


def test_the_edit_follows_the_clips_t5_padding_options(pack, tiny_family, extra_nodes):
    """T5 rows depend on the padding (Flux reads all of them): the edit uses the CLIP's own tokenizer
    options, so a CLIP after T5TokenizerOptions gets an edit computed on its shorter rows."""
    flux = tiny_family("flux")
    short = run_node("T5TokenizerOptions", clip=flux.clip, min_padding=0, min_length=8)[0]
    rows = pack.nodes.text_rows.encode_prompts(short, ["Van Gogh"], cache=None)["Van Gogh"].rows
    assert rows.shape[0] == 8
    key = CASES["flux"].cond_map
    padded, _ = erase(pack, flux.model, flux.clip, concepts="Van Gogh", pooled="off")
    shortened, _ = erase(pack, flux.model, short, concepts="Van Gogh", pooled="off")
    base = live_weights(flux.model, [key])[key].double()
    w0, expected = expected_erase(
        CASES["flux"], flux.model, short, ["Van Gogh"], "", ["a bicycle", "a lighthouse", ""], "paper", key,
        preserve_scale=1 / 3,
    )
    got = live_weights(shortened, [key])[key].double() - base
    assert torch.linalg.norm(got - expected) < 1e-4 * torch.linalg.norm(expected)
    other = live_weights(padded, [key])[key].double() - base
    assert torch.linalg.norm(other - got) > 0.1 * torch.linalg.norm(got)


# -- the README's table is the family table ---------------------------------------------------------------


def test_readme_families_table_matches_the_family_table(pack):
    """Every family entry has its README row: its ComfyUI class, every map it edits, its pooled default."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Supported families", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ") and "`" in line.split("|")[1]]
    by_class = {}
    for cells in rows:
        for name in cells[0].split("`")[1::2]:
            by_class[name] = [cell.strip() for cell in cells]
    for family in pack.nodes.families.FAMILIES:
        (config_class,) = family.config_classes
        assert config_class in by_class, f"{family.name} has no row in the README's families table"
        name_cell, weights, rows_read, paper_mode, pooled, loaders = by_class[config_class]
        for text_map in family.maps:
            shown = text_map.shown
            assert shown in weights, f"{family.name}: {shown} missing from {weights!r}"
            if text_map is not pack.nodes.families.UNET_KV:
                assert ("+bias" in weights.split(shown, 1)[1].split(";")[0]) == text_map.bias, family.name
            if text_map.mlp is not None:
                mlp = text_map.mlp.linears[0].removeprefix("diffusion_model.").rsplit(".", 1)[0]
                assert f"`{mlp}`" in weights, f"{family.name}: the text MLP {mlp} is not named in {weights!r}"
        expected = ("on" if family.pooled_default else "off") if family.has_pooled else "—"
        assert pooled == expected, f"{family.name}: README says pooled {pooled!r}, the table {expected!r}"
