"""The tiny WAN builders (Wan 2.1 T2V / I2V, Wan 2.2 TI2V-5B) give models that ComfyUI's own classes and nodes run."""

from __future__ import annotations

import functools

import pytest
import torch
from uce_devtools import comfy_env
from uce_devtools import tiny_wan_families as wan
from uce_devtools.graph import run_node
from uce_devtools.tiny_llm_families import tiny_gemma_spiece_model

FAMILIES = ("wan21_t2v", "wan21_i2v", "wan22_ti2v")
BUILDERS = {"wan21_t2v": wan.wan21_t2v_model, "wan21_i2v": wan.wan21_i2v_model, "wan22_ti2v": wan.wan22_ti2v_model}
CONFIG_CLASS = {"wan21_t2v": "WAN21_T2V", "wan21_i2v": "WAN21_I2V", "wan22_ti2v": "WAN22_T2V"}
MODEL_CLASS = {"wan21_t2v": "WAN21", "wan21_i2v": "WAN21", "wan22_ti2v": "WAN22"}
IN_OUT_DIM = {"wan21_t2v": (16, 16), "wan21_i2v": (36, 16), "wan22_ti2v": (48, 48)}
DIM = wan.DIT_WIDTH
TEXT_DIM = wan.TINY_UMT5_CONFIG["d_model"]
CROSS_ATTENTION_KEYS = tuple(f"diffusion_model.blocks.{n}.cross_attn.{kv}.weight" for n in range(2) for kv in "kv")
EOS, PAD = 1, 0


@pytest.fixture(scope="module")
def extra_nodes(comfy):
    comfy_env.init_extra_nodes()  # EmptyHunyuanLatentVideo, WanImageToVideo, Wan22ImageToVideoLatent


@pytest.fixture(scope="module")
def built(comfy):
    """Each family's tiny MODEL + CLIP, built on first use (its own copies: the determinism checks read raw
    module weights, which sampling in other modules leaves patched)."""
    return functools.cache(lambda family: BUILDERS[family]())


def encode(clip, text):
    return clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)


def sample(tiny, text, clip_vision_seed=0):
    """KSampler, 2 euler steps, cfg 5, on the latent node of each family's ComfyUI workflow."""
    positive = run_node("CLIPTextEncode", clip=tiny.clip, text=text)[0]
    negative = run_node("CLIPTextEncode", clip=tiny.clip, text="")[0]
    if tiny.family == "wan21_i2v":
        positive, negative, latent = run_node(
            "WanImageToVideo", positive=positive, negative=negative, vae=None, width=32, height=32, length=5,
            batch_size=1, clip_vision_output=wan.clip_vision_output(clip_vision_seed),
        )  # fmt: skip
    elif tiny.family == "wan22_ti2v":  # 16 x spatial VAE: 64 px is a 4 x 4 latent
        latent = run_node("Wan22ImageToVideoLatent", vae=None, width=64, height=64, length=5, batch_size=1)[0]
    else:
        latent = run_node("EmptyHunyuanLatentVideo", width=32, height=32, length=5, batch_size=1)[0]
    return run_node(
        "KSampler", model=tiny.model, seed=0, steps=2, cfg=5.0, sampler_name="euler", scheduler="simple",
        positive=positive, negative=negative, latent_image=latent, denoise=1.0,
    )[0]["samples"]  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_config_class_and_text_map_shapes(built, family):
    tiny = built(family)
    assert tiny.family == family
    assert type(tiny.model.model.model_config).__name__ == CONFIG_CLASS[family]
    assert type(tiny.model.model).__name__ == MODEL_CLASS[family]
    assert tiny.model.model.get_dtype() == torch.float32
    state = tiny.model.model_state_dict()
    in_dim, out_dim = IN_OUT_DIM[family]
    assert tuple(state["diffusion_model.patch_embedding.weight"].shape) == (DIM, in_dim, 1, 2, 2)
    assert tuple(state["diffusion_model.head.head.weight"].shape) == (4 * out_dim, DIM)

    assert wan.cross_attention_keys(tiny.model) == CROSS_ATTENTION_KEYS
    shapes = {key: tuple(state[key].shape) for key in CROSS_ATTENTION_KEYS}
    shapes["diffusion_model.text_embedding.0.weight"] = tuple(state["diffusion_model.text_embedding.0.weight"].shape)
    shapes["diffusion_model.text_embedding.2.weight"] = tuple(state["diffusion_model.text_embedding.2.weight"].shape)
    assert shapes == {**dict.fromkeys(CROSS_ATTENTION_KEYS, (DIM, DIM)),
                      "diffusion_model.text_embedding.0.weight": (DIM, TEXT_DIM),
                      "diffusion_model.text_embedding.2.weight": (DIM, DIM)}  # fmt: skip

    image_keys = {key for key in state if "_img" in key or key.startswith("diffusion_model.img_emb.")}
    if family == "wan21_i2v":
        for n in range(2):
            for name in ("k_img", "v_img"):
                assert tuple(state[f"diffusion_model.blocks.{n}.cross_attn.{name}.weight"].shape) == (DIM, DIM)
                assert tuple(state[f"diffusion_model.blocks.{n}.cross_attn.{name}.bias"].shape) == (DIM,)
            assert torch.equal(state[f"diffusion_model.blocks.{n}.cross_attn.norm_k_img.weight"], torch.ones(DIM))
        assert tuple(state["diffusion_model.img_emb.proj.3.weight"].shape) == (DIM, wan.CLIP_VISION_WIDTH)
    else:
        assert image_keys == set()


@pytest.mark.parametrize("family", FAMILIES)
def test_text_maps_have_seeded_biases_and_norms_are_unit(built, family):
    state = built(family).model.model_state_dict()
    maps = [f"diffusion_model.{name}" for name in wan.text_map_names()]
    assert [m + ".weight" for m in maps[2:]] == list(CROSS_ATTENTION_KEYS)
    assert maps[:2] == [f"diffusion_model.{name}" for name in wan.WAN_TEXT_EMBEDDING]
    for name in maps:
        bias = state[name + ".bias"]
        assert bias.abs().min() > 0, name
        assert 0.5 < bias.std().item() / wan.TEXT_BIAS_STD < 1.5, name
    # Maps that do not read text keep randomize_'s zero bias; RMSNorm (QK norm) weights are 1.
    assert state["diffusion_model.blocks.0.cross_attn.q.bias"].abs().max() == 0
    norms = [key for key in state if key.endswith((".norm_q.weight", ".norm_k.weight"))]
    assert len(norms) == 2 * 2 * 2
    assert all(torch.equal(state[key], torch.ones(DIM)) for key in norms)


def test_umt5_tokens_end_with_eos_then_pad_to_512(built):
    clip = built("wan21_t2v").clip
    tokens = clip.tokenize("a cat", return_word_ids=True)
    assert list(tokens) == ["umt5xxl"]
    (chunk,) = tokens["umt5xxl"]
    assert len(chunk) == wan.UMT5_MIN_LENGTH == 512
    ids = [t for t, _, _ in chunk]
    import sentencepiece

    spiece = sentencepiece.SentencePieceProcessor(model_proto=tiny_gemma_spiece_model())
    assert [spiece.id_to_piece(t) for t in ids[:2]] == ["▁a", "▁cat"]  # no start token
    assert ids[2:] == [EOS] + [PAD] * 509
    assert [w for _, _, w in chunk[:4]] == [1, 1, 0, 0]
    assert all(weight == 1.0 for _, weight, _ in chunk)
    # max_length 99999999: a long prompt stays one chunk, longer than 512 (EOS, no padding).
    (long_chunk,) = clip.tokenize("cat " * 600)["umt5xxl"]
    assert len(long_chunk) == 601 and long_chunk[-1][0] == EOS and long_chunk[-2][0] != EOS


def test_umt5_conditioning_is_zero_after_eos_and_prompt_dependent(built):
    clip = built("wan21_t2v").clip
    cat, dog = encode(clip, "a cat"), encode(clip, "a dog")
    assert set(cat) == {"cond", "pooled_output"}  # no attention_mask: the padding is in the rows
    assert cat["pooled_output"] is None
    cond = cat["cond"]
    assert tuple(cond.shape) == (1, 512, TEXT_DIM) and cond.dtype == torch.float32
    assert torch.isfinite(cond).all()
    assert (cond[0, :3].abs().amax(dim=-1) > 0.1).all()  # "▁a", "▁cat", EOS
    assert cond[0, 3:].abs().max() == 0  # zero_out_masked
    assert 0.5 < cond[0, :3].std().item() < 2.0  # final RMSNorm: unit-scale rows
    assert not torch.allclose(cond[0, :3], dog["cond"][0, :3])


def test_umt5_rows_depend_on_token_order(built):
    """Relative attention bias: the EOS row of "a cat" and "cat a" (same tokens) differ."""
    clip = built("wan21_t2v").clip
    forward, backward = encode(clip, "a cat")["cond"][0], encode(clip, "cat a")["cond"][0]
    assert (forward[2] - backward[2]).abs().max() > 1e-2 * forward[2].abs().max()
    assert (forward[1] - backward[0]).abs().max() > 1e-2 * forward[1].abs().max()  # "▁cat" at 1 and 0


def test_text_embedding_turns_padding_into_one_bias_row(built):
    """WAN's text MLP maps the 509 zero rows to GELU(b0)·W2ᵀ + b2: one non-zero row, shared."""
    tiny = built("wan21_t2v")
    rows = tiny.model.model.diffusion_model.text_embedding(encode(tiny.clip, "a cat")["cond"])[0]
    padding = rows[3:]
    assert torch.equal(padding, padding[:1].expand_as(padding))
    assert padding[0].abs().max() > 0.1
    assert (rows[:3] - padding[0]).abs().amax(dim=-1).min() > 0.1


def test_clip_is_the_same_for_every_family_and_seeded(built, comfy):
    """Same architecture everywhere; weights depend on (seed, family) and a rebuild is identical."""
    t2v, ti2v = built("wan21_t2v"), built("wan22_ti2v")
    assert type(t2v.clip.cond_stage_model).__name__ == type(ti2v.clip.cond_stage_model).__name__ == "WanTEModel"
    again = wan.wan21_t2v_model(seed=0)
    other = wan.wan21_t2v_model(seed=1)
    first_state, again_state = t2v.model.model_state_dict(), again.model.model_state_dict()
    assert all(torch.equal(first_state[key], again_state[key]) for key in first_state)
    assert torch.equal(encode(t2v.clip, "a cat")["cond"], encode(again.clip, "a cat")["cond"])
    bias = "diffusion_model.blocks.0.cross_attn.k.bias"
    assert not torch.equal(first_state[bias], other.model.model_state_dict()[bias])
    assert not torch.allclose(encode(t2v.clip, "a cat")["cond"], encode(other.clip, "a cat")["cond"])


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_on_the_cpu_is_finite_and_prompt_dependent(built, extra_nodes, family):
    tiny = built(family)
    cat, dog = sample(tiny, "a cat"), sample(tiny, "a dog")
    channels = IN_OUT_DIM[family][1]
    assert cat.shape == (1, channels, 2, 4, 4)  # 5 frames -> 2 latent frames
    assert torch.isfinite(cat).all() and torch.isfinite(dog).all()
    assert cat.std() > 0.1
    assert (cat - dog).abs().max() > 1e-3 * cat.abs().max()


def test_i2v_sampling_reads_the_clip_vision_context(built, extra_nodes):
    tiny = built("wan21_i2v")
    first, second = sample(tiny, "a cat", clip_vision_seed=0), sample(tiny, "a cat", clip_vision_seed=1)
    assert torch.isfinite(second).all()
    assert (first - second).abs().max() > 1e-3 * first.abs().max()
