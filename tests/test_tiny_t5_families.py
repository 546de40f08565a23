"""The tiny Flux / Chroma / SD3 builders give models that ComfyUI's own classes and nodes run."""

from __future__ import annotations

import functools

import pytest
import torch
from uce_devtools import comfy_env
from uce_devtools import tiny_t5_families as t5f
from uce_devtools.graph import run_node

FAMILIES = ("flux", "chroma", "sd3")
CONFIG_CLASS = {"flux": "Flux", "chroma": "Chroma", "sd3": "SD3"}
# cond and pooled shapes of "a cat" (Chroma's T5: "▁", "a", "▁cat", EOS; no pooled output).
COND_SHAPE = {"flux": (1, 256, 64), "chroma": (1, 4, 64), "sd3": (1, 77 + 77, 4096)}
POOLED_SHAPE = {"flux": (1, 768), "chroma": None, "sd3": (1, 2048)}
TEXT_MAP_SHAPES = {
    "flux": {"diffusion_model.txt_in.weight": (64, 64), "diffusion_model.vector_in.in_layer.weight": (64, 768)},
    "chroma": {"diffusion_model.txt_in.weight": (64, 64)},
    "sd3": {
        "diffusion_model.context_embedder.weight": (128, 4096),
        "diffusion_model.y_embedder.mlp.0.weight": (128, 2048),
    },
}
# The sampler settings of each family's ComfyUI workflows (Flux: FluxGuidance, cfg 1).
SAMPLING = {
    "flux": {"cfg": 1.0, "scheduler": "simple", "guidance": 3.5},
    "chroma": {"cfg": 4.0, "scheduler": "simple", "guidance": None},
    "sd3": {"cfg": 4.5, "scheduler": "sgm_uniform", "guidance": None},
}


@pytest.fixture(scope="module")
def extra_nodes(comfy):
    comfy_env.init_extra_nodes()  # EmptySD3LatentImage and FluxGuidance live in comfy_extras


@pytest.fixture(scope="module")
def built(comfy):
    """Each family's tiny MODEL + CLIP, built on first use (its own copies: the determinism checks read raw
    module weights, which sampling in other modules leaves patched)."""
    builders = {"flux": t5f.flux_model, "chroma": t5f.chroma_model, "sd3": t5f.sd3_model}
    return functools.cache(lambda family: builders[family]())


@pytest.fixture(scope="module")
def sd3_checkpoint(comfy):
    """(MODEL, CLIP, VAE) of the cached tiny SD3 checkpoint, loaded by CheckpointLoaderSimple."""
    path = t5f.tiny_sd3_checkpoint()
    comfy_env.register_checkpoint_dir(path.parent)
    return run_node("CheckpointLoaderSimple", ckpt_name=path.name)


def encode(clip, text):
    return clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)


def sample(model, clip, text, family, seed=0):
    settings = SAMPLING[family]
    positive = run_node("CLIPTextEncode", clip=clip, text=text)[0]
    negative = run_node("CLIPTextEncode", clip=clip, text="")[0]
    if settings["guidance"] is not None:
        positive = run_node("FluxGuidance", conditioning=positive, guidance=settings["guidance"])[0]
    latent = run_node("EmptySD3LatentImage", width=64, height=64, batch_size=1)[0]
    return run_node(
        "KSampler", model=model, seed=seed, steps=2, cfg=settings["cfg"], sampler_name="euler",
        scheduler=settings["scheduler"], positive=positive, negative=negative, latent_image=latent, denoise=1.0,
    )[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_model_config_dtype_and_text_maps(built, family):
    tiny = built(family)
    assert tiny.family == family
    assert type(tiny.model.model.model_config).__name__ == CONFIG_CLASS[family]
    assert tiny.model.model.get_dtype() == torch.float32
    state = tiny.model.model_state_dict()
    assert {key: tuple(state[key].shape) for key in t5f.text_map_keys(family)} == TEXT_MAP_SHAPES[family]
    for key in t5f.text_map_keys(family):
        bias = state[key.removesuffix(".weight") + ".bias"].float()
        assert bias.abs().min() > 0
        assert 0.15 < bias.std().item() / t5f.TEXT_BIAS_STD < 1.5


@pytest.mark.parametrize("family", FAMILIES)
def test_conditioning_is_finite_prompt_dependent_and_shaped(built, family):
    clip = built(family).clip
    cat, dog = encode(clip, "a cat"), encode(clip, "a dog")
    assert tuple(cat["cond"].shape) == COND_SHAPE[family]
    pooled = cat["pooled_output"]
    assert (None if pooled is None else tuple(pooled.shape)) == POOLED_SHAPE[family]
    assert torch.isfinite(cat["cond"]).all()
    assert not torch.allclose(cat["cond"], dog["cond"])
    if pooled is not None:
        assert torch.isfinite(pooled).all() and not torch.allclose(pooled, dog["pooled_output"])


@pytest.mark.parametrize("family", FAMILIES)
def test_text_maps_read_rows_at_their_scale(built, family):
    """W·x has std about 1 on real conditioning rows, so the seeded biases are not negligible."""
    tiny = built(family)
    out = encode(tiny.clip, "a cat")
    dit = tiny.model.model.diffusion_model
    for name in t5f.TEXT_MAPS[family]:
        rows = out["pooled_output"] if name in ("vector_in.in_layer", "y_embedder.mlp.0") else out["cond"]
        layer = dit.get_submodule(name)
        response = torch.nn.functional.linear(rows.float(), layer.weight.float())
        assert torch.isfinite(response).all()
        assert 0.5 < response.std().item() < 2.0, name


def test_t5_padding_of_flux_sd3_and_chroma(built):
    flux_t5 = built("flux").clip.tokenize("a cat", return_word_ids=True)["t5xxl"]
    assert [len(chunk) for chunk in flux_t5] == [256]
    assert [t for t, _, _ in flux_t5[0][:5]] == [3, 9, 1712, 1, 0]  # "▁", "a", "▁cat", EOS, pad
    assert [w for _, _, w in flux_t5[0][:5]] == [1, 1, 1, 0, 0]
    chroma_t5 = built("chroma").clip.tokenize("a cat", return_word_ids=True)["t5xxl"]
    assert [(t, w) for t, _, w in chroma_t5[0]] == [(3, 1), (9, 1), (1712, 1), (1, 0)]
    sd3_tokens = built("sd3").clip.tokenize("a cat")
    assert {key: [len(chunk) for chunk in chunks] for key, chunks in sd3_tokens.items()} == {
        "g": [77], "l": [77], "t5xxl": [77]
    }


def test_sd3_cond_is_clip_rows_padded_to_4096_then_t5_rows(built):
    cond = encode(built("sd3").clip, "a cat")["cond"][0]
    assert cond[:77, 2048:].abs().max() == 0
    assert cond[:77, :2048].abs().min(dim=-1).values.max() > 0
    assert (cond[77:].abs().amax(dim=-1) > 0).all()


def test_builders_are_deterministic_per_seed(built, comfy):
    first = built("chroma").model.model_state_dict()
    again = t5f.chroma_model(seed=0).model.model_state_dict()
    other = t5f.chroma_model(seed=1).model.model_state_dict()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["diffusion_model.txt_in.bias"], other["diffusion_model.txt_in.bias"])


def test_flux_schnell_has_no_guidance_embedding(comfy):
    schnell = t5f.flux_model(schnell=True)
    assert type(schnell.model.model.model_config).__name__ == "FluxSchnell"
    assert not any(key.startswith("diffusion_model.guidance_in.") for key in schnell.model.model_state_dict())


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_on_the_cpu_is_finite_and_prompt_dependent(built, extra_nodes, family):
    tiny = built(family)
    cat = sample(tiny.model, tiny.clip, "a cat", family)["samples"]
    dog = sample(tiny.model, tiny.clip, "a dog", family)["samples"]
    assert cat.shape == (1, 16, 8, 8)
    assert torch.isfinite(cat).all() and torch.isfinite(dog).all()
    assert (cat - dog).abs().max() > 1e-3 * cat.abs().max()


def test_sd3_checkpoint_loads_as_sd3_and_samples(sd3_checkpoint, built, extra_nodes):
    model, clip, vae = sd3_checkpoint
    assert type(model.model.model_config).__name__ == "SD3"
    assert model.model.diffusion_model.hidden_size == 128
    assert clip.cond_stage_model.clip_g is None and clip.cond_stage_model.t5xxl is None
    out = encode(clip, "a cat")
    assert tuple(out["cond"].shape) == (1, 77, 4096) and tuple(out["pooled_output"].shape) == (1, 2048)
    assert torch.isfinite(out["cond"]).all()

    in_process = built("sd3").model.model_state_dict()
    loaded = model.model_state_dict()
    assert set(loaded) == set(in_process)
    for key in t5f.text_map_keys("sd3"):
        torch.testing.assert_close(loaded[key], in_process[key].half().float())

    latent = sample(model, clip, "a cat", "sd3")
    images = run_node("VAEDecode", samples=latent, vae=vae)[0]
    assert images.shape == (1, 64, 64, 3)
    assert torch.isfinite(images).all()
    assert images.std() > 0.02
