"""The tiny LTX-Video / PixArt α / PixArt Σ / Cosmos Predict2 builders give models that ComfyUI's own classes and nodes run."""

from __future__ import annotations

import functools

import pytest
import torch
from uce_devtools import comfy_env
from uce_devtools import tiny_xattn_families as xf
from uce_devtools.graph import run_node

FAMILIES = xf.FAMILIES
BUILDERS = {
    "ltxv": xf.ltxv_model,
    "pixart_alpha": xf.pixart_alpha_model,
    "pixart_sigma": xf.pixart_sigma_model,
    "cosmos_predict2": xf.cosmos_predict2_model,
}
W, T5 = 96, 64  # DiT width, T5 width
# Shapes (weight, bias or None) of the caption MLP and the block-0 text maps.
TEXT_MAP_SHAPES = {
    "ltxv": {
        "caption_projection.linear_1": ((W, T5), (W,)),
        "caption_projection.linear_2": ((W, W), (W,)),
        "transformer_blocks.0.attn2.to_k": ((W, W), (W,)),
        "transformer_blocks.0.attn2.to_v": ((W, W), (W,)),
    },
    "pixart_alpha": {
        "y_embedder.y_proj.fc1": ((W, T5), (W,)),
        "y_embedder.y_proj.fc2": ((W, W), (W,)),
        "blocks.0.cross_attn.kv_linear": ((2 * W, W), (2 * W,)),
    },
    "cosmos_predict2": {
        "blocks.0.cross_attn.k_proj": ((W, T5), None),
        "blocks.0.cross_attn.v_proj": ((W, T5), None),
    },
}
TEXT_MAP_SHAPES["pixart_sigma"] = TEXT_MAP_SHAPES["pixart_alpha"]
CROSS_ATTENTION_KEYS = {
    "ltxv": [f"diffusion_model.transformer_blocks.{i}.attn2.to_{kv}.weight" for i in (0, 1) for kv in "kv"],
    "pixart_alpha": [f"diffusion_model.blocks.{i}.cross_attn.kv_linear.weight" for i in (0, 1)],
    "cosmos_predict2": [f"diffusion_model.blocks.{i}.cross_attn.{kv}_proj.weight" for i in (0, 1) for kv in "kv"],
}
CROSS_ATTENTION_KEYS["pixart_sigma"] = CROSS_ATTENTION_KEYS["pixart_alpha"]
A_CAT = [3, 9, 1712, 1]  # T5: "▁", "a", "▁cat", EOS
# The latent node of each family's ComfyUI workflows and the sampled latent's shape (Cosmos: Wan 2.1
# latents are 3-D, KSampler unsqueezes the empty 4-D latent).
LATENT = {
    "ltxv": ("EmptyLTXVLatentVideo", {"width": 64, "height": 64, "length": 9}, (1, 128, 2, 2, 2)),
    "pixart_alpha": ("EmptyLatentImage", {"width": xf.PIXART_MIN_SIZE, "height": xf.PIXART_MIN_SIZE}, (1, 4, 34, 34)),
    "pixart_sigma": ("EmptyLatentImage", {"width": xf.PIXART_MIN_SIZE, "height": xf.PIXART_MIN_SIZE}, (1, 4, 34, 34)),
    "cosmos_predict2": ("EmptySD3LatentImage", {"width": 64, "height": 64}, (1, 16, 1, 8, 8)),
}


@pytest.fixture(scope="module")
def extra_nodes(comfy):
    comfy_env.init_extra_nodes()  # EmptyLTXVLatentVideo, EmptySD3LatentImage live in comfy_extras


@pytest.fixture(scope="module")
def built(comfy):
    """Each family's tiny MODEL + CLIP, built on first use (its own copies: the determinism checks read raw
    module weights, which sampling in other modules leaves patched)."""
    return functools.cache(lambda family: BUILDERS[family]())


def encode(clip, text):
    return clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)


def sample(tiny, positive, negative, seed=0):
    node, size, _ = LATENT[tiny.family]
    latent = run_node(node, batch_size=1, **size)[0]
    return run_node(
        "KSampler", model=tiny.model, seed=seed, steps=2, cfg=4.0, sampler_name="euler", scheduler="simple",
        positive=positive, negative=negative, latent_image=latent, denoise=1.0,
    )[0]["samples"]  # fmt: skip


def text_conditioning(clip, text):
    return run_node("CLIPTextEncode", clip=clip, text=text)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_config_class_text_maps_and_biases(built, family):
    tiny = built(family)
    assert tiny.family == family and xf.family_of(tiny) == family and xf.family_of(tiny.model) == family
    assert type(tiny.model.model.model_config).__name__ == xf.CONFIG_CLASS[family]
    assert tiny.model.model.get_dtype() == torch.float32
    state = tiny.model.model_state_dict()
    for name, (weight_shape, bias_shape) in TEXT_MAP_SHAPES[family].items():
        assert tuple(state[f"diffusion_model.{name}.weight"].shape) == weight_shape, name
        bias = state.get(f"diffusion_model.{name}.bias")
        assert (None if bias is None else tuple(bias.shape)) == bias_shape, name
    assert xf.cross_attention_keys(tiny.model) == CROSS_ATTENTION_KEYS[family]
    assert xf.cross_attention_keys(tiny) == CROSS_ATTENTION_KEYS[family]
    maps = xf.text_maps(family)
    assert maps[: len(xf.TEXT_MLP[family])] == xf.TEXT_MLP[family]
    assert (
        sorted(f"diffusion_model.{m}.weight" for m in maps[len(xf.TEXT_MLP[family]) :]) == CROSS_ATTENTION_KEYS[family]
    )
    biased = [m for m in maps if f"diffusion_model.{m}.bias" in state]
    assert len(biased) == (0 if family == "cosmos_predict2" else len(maps))
    for name in biased:
        bias = state[f"diffusion_model.{name}.bias"]
        assert bias.abs().min() > 0, name
        assert 0.5 < bias.std().item() / xf.TEXT_BIAS_STD < 1.5, name
    norm_weights = [v for k, v in state.items() if k.endswith(("norm.weight", "norm_final.weight")) and v.ndim == 1]
    assert all(torch.equal(w, torch.ones_like(w)) for w in norm_weights)
    assert family != "ltxv" or len(norm_weights) == 8  # attn1 / attn2 q_norm and k_norm per block


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_layout(built, family):
    layout = xf.T5_LAYOUT[family]
    tokens = built(family).clip.tokenize("a cat", return_word_ids=True)
    assert list(tokens) == [layout.tokenizer_key]
    (chunk,) = tokens[layout.tokenizer_key]
    ids = [token for token, _, _ in chunk]
    assert len(ids) == max(layout.min_length, len(A_CAT))
    assert ids[: len(A_CAT)] == A_CAT and A_CAT[-1] == layout.eos
    assert set(ids[len(A_CAT) :]) <= {layout.pad}
    # A long prompt stays one chunk (no truncation, no 77-token windows), EOS at its end.
    (long_chunk,) = built(family).clip.tokenize("cat " * 600)[layout.tokenizer_key]
    assert len(long_chunk) == 601 and long_chunk[-1][0] == layout.eos


@pytest.mark.parametrize("family", FAMILIES)
def test_conditioning_shape_padding_and_mask(built, family):
    layout = xf.T5_LAYOUT[family]
    out = encode(built(family).clip, "a cat")
    cond = out["cond"]
    length = max(layout.min_length, len(A_CAT))
    assert tuple(cond.shape) == (1, length, T5) and cond.dtype == torch.float32
    assert out["pooled_output"] is None
    assert torch.isfinite(cond).all()
    # Real rows: T5's final RMSNorm with weight 1 gives unit RMS.
    torch.testing.assert_close(cond[0, : len(A_CAT)].pow(2).mean(-1), torch.ones(len(A_CAT)), rtol=1e-3, atol=1e-3)
    padding = cond[0, len(A_CAT) :]
    if layout.zero_padding:
        assert padding.abs().max() == 0
    elif length > len(A_CAT):
        assert (padding.abs().amax(-1) > 0).all()
    if layout.attention_mask:
        assert out["attention_mask"].tolist() == [[1] * len(A_CAT) + [0] * (length - len(A_CAT))]
    else:
        assert "attention_mask" not in out
    conditioning = text_conditioning(built(family).clip, "a cat")
    assert ("attention_mask" in conditioning[0][1]) == layout.attention_mask


@pytest.mark.parametrize("family", ["ltxv", "pixart_alpha", "cosmos_predict2"])
def test_rows_depend_on_text_and_token_order(built, family):
    clip = built(family).clip
    cat, dog = encode(clip, "a cat")["cond"], encode(clip, "a dog")["cond"]
    assert not torch.allclose(cat[0, :4], dog[0, :4])
    cat_dog, dog_cat = encode(clip, "cat dog")["cond"][0], encode(clip, "dog cat")["cond"][0]
    # "▁cat", "▁dog", EOS: the same tokens swapped. Without T5's relative attention bias the rows
    # would only swap too.
    assert not torch.allclose(cat_dog[[0, 1, 2]], dog_cat[[1, 0, 2]], atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_text_path_reads_rows_at_their_scale(built, family):
    """Each map's W·x has std about 1 on what it reads, so the seeded biases matter and nothing blows up."""
    tiny = built(family)
    dit = tiny.model.model.diffusion_model
    x = encode(tiny.clip, "a photo of a cat")["cond"][:, :7]
    for name in xf.TEXT_MLP[family]:
        layer = dit.get_submodule(name)
        response = torch.nn.functional.linear(x, layer.weight)
        assert 0.3 < response.std().item() < 3.0, name
        x = torch.nn.functional.gelu(layer(x), approximate="tanh") if name.endswith(("linear_1", "fc1")) else layer(x)
    for name in xf.text_maps(family)[len(xf.TEXT_MLP[family]) :]:
        response = torch.nn.functional.linear(x, dit.get_submodule(name).weight)
        assert torch.isfinite(response).all()
        assert 0.3 < response.std().item() < 3.0, name


def test_builders_are_deterministic_per_seed(built, comfy):
    first = built("pixart_alpha").model.model_state_dict()
    again = xf.pixart_alpha_model(seed=0)
    other = xf.pixart_alpha_model(seed=1).model.model_state_dict()
    second = again.model.model_state_dict()
    assert set(first) == set(second) and "diffusion_model.y_embedder.y_embedding" in first
    assert all(torch.equal(first[key], second[key]) for key in first)
    key = "diffusion_model.blocks.0.cross_attn.kv_linear.bias"
    assert not torch.equal(first[key], other[key])
    cat = encode(built("pixart_alpha").clip, "a cat")["cond"]
    torch.testing.assert_close(encode(again.clip, "a cat")["cond"], cat, rtol=0, atol=0)


def test_pixart_sigma_has_no_micro_conditioning(built):
    alpha, sigma = (set(built(f).model.model_state_dict()) for f in ("pixart_alpha", "pixart_sigma"))
    assert any(key.startswith("diffusion_model.ar_embedder.") for key in alpha)
    assert not any(key.startswith(("diffusion_model.ar_embedder.", "diffusion_model.csize_embedder.")) for key in sigma)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_on_the_cpu_is_finite_and_prompt_dependent(built, extra_nodes, family):
    tiny = built(family)
    negative = text_conditioning(tiny.clip, "")
    cat = sample(tiny, text_conditioning(tiny.clip, "a cat"), negative)
    dog = sample(tiny, text_conditioning(tiny.clip, "a dog"), negative)
    assert tuple(cat.shape) == LATENT[family][2]
    assert torch.isfinite(cat).all() and torch.isfinite(dog).all()
    assert (cat - dog).abs().max() > 1e-3 * cat.abs().max()


@pytest.mark.parametrize("family", ["ltxv", "cosmos_predict2"])
def test_padding_rows_reach_the_sampler_unless_masked(built, extra_nodes, family):
    """LTXV masks the padded keys of every attn2 (the conditioning's attention_mask); Cosmos reads them."""
    tiny = built(family)
    negative = text_conditioning(tiny.clip, "")
    ((cond, extra),) = text_conditioning(tiny.clip, "a cat")
    noisy = cond.clone()
    noisy[:, len(A_CAT) :] = torch.randn(noisy[:, len(A_CAT) :].shape, generator=torch.Generator().manual_seed(0))
    base = sample(tiny, [[cond, extra]], negative)
    changed = sample(tiny, [[noisy, extra]], negative)
    if xf.T5_LAYOUT[family].dit_masks_padding:
        torch.testing.assert_close(changed, base, rtol=1e-5, atol=1e-5)
    else:
        assert (changed - base).abs().max() > 1e-3 * base.abs().max()
