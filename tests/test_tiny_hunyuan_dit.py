"""The tiny HunyuanDiT builder gives models that ComfyUI's own classes and nodes run, with the documented text layout."""

from __future__ import annotations

import pytest
import torch
from uce_devtools import tiny_hunyuan_dit as hy
from uce_devtools.graph import run_node
from uce_devtools.tiny_llm_families import tiny_gemma_spiece_model

WIDTH = hy.DIT_WIDTH
BERT = hy.TEXT_STATES_DIM
MT5 = hy.TEXT_STATES_DIM_T5
ROWS = 77 + 256
KV_KEYS = tuple(f"diffusion_model.blocks.{n}.attn2.kv_proj.weight" for n in range(hy.DIT_DEPTH))
CONFIG_CLASS = {False: "HunyuanDiT", True: "HunyuanDiT1"}


@pytest.fixture(scope="module")
def built(comfy):
    """The tiny MODEL + CLIP of each version (v1_0 False / True), built on first use."""
    cache = {}

    def get(v1_0=False):
        if v1_0 not in cache:
            cache[v1_0] = hy.hunyuan_dit_model(v1_0=v1_0)
        return cache[v1_0]

    return get


def sample(tiny, text, negative_text="", size=32):
    """KSampler as in ComfyUI's HunyuanDiT example workflow (euler, sgm_uniform, cfg 6), 2 steps."""
    positive = run_node("CLIPTextEncode", clip=tiny.clip, text=text)[0]
    negative = run_node("CLIPTextEncode", clip=tiny.clip, text=negative_text)[0]
    latent = run_node("EmptyLatentImage", width=size, height=size, batch_size=1)[0]
    return run_node(
        "KSampler", model=tiny.model, seed=0, steps=2, cfg=6.0, sampler_name="euler", scheduler="sgm_uniform",
        positive=positive, negative=negative, latent_image=latent, denoise=1.0,
    )[0]["samples"]  # fmt: skip


@pytest.fixture(scope="module")
def seen(built):
    """What blocks 0 / 3 attn2, block 0's k_norm and the pooler receive while sampling "a cat" (negative "")."""
    tiny = built()
    dit = tiny.model.model.diffusion_model
    captured = {"attn2.0": [], "attn2.3": [], "k_norm.0": [], "pooler": []}

    def keep(name, index):
        return lambda module, args: captured[name].append(args[index].detach().clone())

    hooks = [
        dit.blocks[0].attn2.register_forward_pre_hook(keep("attn2.0", 1)),  # (x, text_states, freqs)
        dit.blocks[3].attn2.register_forward_pre_hook(keep("attn2.3", 1)),
        dit.blocks[0].attn2.k_norm.register_forward_pre_hook(keep("k_norm.0", 0)),
        dit.pooler.register_forward_pre_hook(keep("pooler", 0)),
    ]
    try:
        captured["samples"] = sample(tiny, "a cat")
    finally:
        for hook in hooks:
            hook.remove()
    return captured


@pytest.mark.parametrize("v1_0", [False, True])
def test_config_class_keys_and_shapes(built, v1_0):
    tiny = built(v1_0)
    base = tiny.model.model
    assert tiny.family == "hunyuan_dit"
    assert type(base.model_config).__name__ == CONFIG_CLASS[v1_0]
    assert type(base).__name__ == "HunyuanDiT"
    assert base.get_dtype() == torch.float32
    state = tiny.model.model_state_dict()
    shape = {key: tuple(value.shape) for key, value in state.items()}

    assert hy.kv_proj_keys(tiny.model) == KV_KEYS
    for key in KV_KEYS:
        assert shape[key] == (2 * WIDTH, BERT)  # K and V fused
        assert shape[key.replace(".weight", ".bias")] == (2 * WIDTH,)
    assert shape["diffusion_model.mlp_t5.0.weight"] == (4 * MT5, MT5)
    assert shape["diffusion_model.mlp_t5.2.weight"] == (BERT, 4 * MT5)
    assert shape["diffusion_model.text_embedding_padding"] == (ROWS, BERT)
    assert shape["diffusion_model.pooler.positional_embedding"] == (257, MT5)
    assert shape["diffusion_model.pooler.c_proj.weight"] == (hy.POOLER_WIDTH, MT5)
    extra_in = hy.POOLER_WIDTH + (6 * 256 + WIDTH if v1_0 else 0)
    assert shape["diffusion_model.extra_embedder.0.weight"] == (4 * WIDTH, extra_in)
    assert ("diffusion_model.style_embedder.weight" in shape) == v1_0
    skips = sorted(key for key in shape if key.endswith("skip_linear.weight"))
    assert skips == ["diffusion_model.blocks.3.skip_linear.weight"]  # fed by block 0

    dit = base.diffusion_model
    assert dit.blocks[0].attn2.attn_precision == (None if v1_0 else torch.float32)
    assert (dit.size_cond, dit.use_style_cond) == (v1_0, v1_0)
    # Scaled-linear betas from 0.00085 to 0.018 (HunyuanDiT) or 0.03 (HunyuanDiT1, v1.0): sigma_max 45.4 or 420.
    assert base.model_sampling.sigmas[-1].item() == pytest.approx(420 if v1_0 else 45.4, rel=0.01)


def test_text_maps_have_seeded_biases_and_padding_is_unit_normal(built):
    state = built().model.model_state_dict()
    for name in hy.text_map_names():
        bias = state[f"diffusion_model.{name}.bias"]
        assert bias.abs().min() > 0, name
        assert 0.5 < bias.std().item() / hy.TEXT_BIAS_STD < 1.5, name
    assert [f"diffusion_model.{name}.weight" for name in hy.text_map_names()[2:]] == list(KV_KEYS)
    assert state["diffusion_model.blocks.0.attn2.q_proj.bias"].abs().max() == 0
    assert torch.equal(state["diffusion_model.blocks.0.attn2.k_norm.weight"], torch.ones(WIDTH // hy.DIT_HEADS))
    padding = state["diffusion_model.text_embedding_padding"]
    assert 0.9 < padding.std().item() < 1.1 and abs(padding.mean().item()) < 0.05


def test_tokens(built):
    clip = built().clip
    tokens = clip.tokenize("a cat")
    assert list(tokens) == ["hydit_clip", "mt5xl"]
    (bert,) = tokens["hydit_clip"]
    assert [t for t, _ in bert] == [101, 143, 10165, 102] + [0] * 73  # [CLS] a cat [SEP], pad 0 to 77
    assert clip.tokenizer.hydit_clip.tokenizer.convert_ids_to_tokens([101, 143, 10165, 102, 0]) == [
        "[CLS]", "a", "cat", "[SEP]", "[PAD]",
    ]  # fmt: skip
    (mt5,) = tokens["mt5xl"]
    import sentencepiece

    spiece = sentencepiece.SentencePieceProcessor(model_proto=tiny_gemma_spiece_model())
    ids = [t for t, _ in mt5]
    assert [spiece.id_to_piece(t) for t in ids[:2]] == ["▁a", "▁cat"]  # no start token
    assert ids[2:] == [1] + [0] * 253  # EOS 1, pad 0 to 256
    long = clip.tokenize("cat " * 300)
    assert [len(c) for c in long["hydit_clip"]] == [302] and [len(c) for c in long["mt5xl"]] == [301]


def test_encoding_layout(built):
    clip = built().clip
    cat, dog = hy.encode(clip, "a cat"), hy.encode(clip, "a dog")
    assert set(cat) == {"cond", "pooled_output", "attention_mask", "conditioning_mt5xl", "attention_mask_mt5xl"}
    assert cat["pooled_output"] is None
    assert tuple(cat["cond"].shape) == (1, 77, BERT) and cat["cond"].dtype == torch.float32
    assert tuple(cat["conditioning_mt5xl"].shape) == (1, 256, MT5)
    assert cat["attention_mask"].dtype == cat["attention_mask_mt5xl"].dtype == torch.int64
    assert cat["attention_mask"][0].tolist() == [1] * 4 + [0] * 73  # [CLS], a, cat, [SEP] count
    assert cat["attention_mask_mt5xl"][0].tolist() == [1] * 3 + [0] * 253  # ▁a, ▁cat, EOS count
    for key in ("cond", "conditioning_mt5xl"):
        rows = cat[key][0]
        assert torch.isfinite(rows).all()
        assert (rows.abs().amax(dim=-1) > 0.1).all(), key  # padding rows are not zeroed
        assert not torch.allclose(rows[:3], dog[key][0][:3]), key


def test_text_states_is_what_attn2_reads(built, seen):
    tiny = built()
    cat, empty = hy.text_states(tiny.model, tiny.clip, "a cat"), hy.text_states(tiny.model, tiny.clip, "")
    assert tuple(cat.shape) == (ROWS, BERT)
    dit = tiny.model.model.diffusion_model
    padding = dit.text_embedding_padding.detach()
    encoded = hy.encode(tiny.clip, "a cat")
    # BERT part: 4 encoder rows kept ([CLS] a cat [SEP]), then padding rows 4..76.
    assert torch.equal(cat[:4], encoded["cond"][0, :4])
    assert torch.equal(cat[4:77], padding[4:77])
    # mT5 part: mlp_t5 of 3 rows (▁a ▁cat EOS), then padding rows 77 + 3 .. 332.
    with torch.no_grad():
        t5 = dit.mlp_t5(encoded["conditioning_mt5xl"][0, :3])
    torch.testing.assert_close(cat[77:80], t5)
    assert torch.equal(cat[80:], padding[80:])

    received = seen["attn2.0"]
    assert len(received) == 2 and all(tuple(x.shape) == (2, ROWS, BERT) for x in received)  # 2 steps, cond + uncond
    for x in received:
        order = [0, 1] if torch.allclose(x[0], cat, atol=1e-5) else [1, 0]
        torch.testing.assert_close(x[order[0]], cat, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x[order[1]], empty, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(received, seen["attn2.3"]))  # every block reads the same


def test_text_states_of_a_long_prompt(built):
    """102 BERT rows (no padding: all kept), then the 256 mT5 rows; padding replaced in the mT5 part only."""
    tiny = built()
    text = "cat " * 100
    states, encoded = hy.text_states(tiny.model, tiny.clip, text), hy.encode(tiny.clip, text)
    assert tuple(encoded["cond"].shape) == (1, 102, BERT) and encoded["attention_mask"].all()
    assert tuple(states.shape) == (102 + 256, BERT)
    assert torch.equal(states[:102], encoded["cond"][0])
    padding = tiny.model.model.diffusion_model.text_embedding_padding.detach()
    assert torch.equal(states[102 + 101 :], padding[77 + 101 :])  # 100 x "▁cat" + EOS kept


def test_kv_proj_first_half_is_k(built, seen):
    """k_norm (per-head LayerNorm on K) receives (text_states @ W[:width].T + b[:width]) split into heads."""
    dit = built().model.model.diffusion_model
    weight, bias = dit.blocks[0].attn2.kv_proj.weight.detach(), dit.blocks[0].attn2.kv_proj.bias.detach()
    (k_weight, _), (k_bias, _) = hy.split_kv(weight), hy.split_kv(bias)
    text = seen["attn2.0"][0]
    expected = (text @ k_weight.T + k_bias).view(2, ROWS, hy.DIT_HEADS, WIDTH // hy.DIT_HEADS)
    torch.testing.assert_close(seen["k_norm.0"][0], expected, atol=1e-5, rtol=1e-5)


def test_pooler_reads_raw_mt5_rows(built, seen):
    tiny = built()
    cat, empty = hy.encode(tiny.clip, "a cat"), hy.encode(tiny.clip, "")
    x = seen["pooler"][0]
    assert tuple(x.shape) == (2, 256, MT5)
    # The batch holds each prompt's unmodified mT5 output (no mlp_t5, padding rows not replaced).
    first = 0 if torch.allclose(x[0], cat["conditioning_mt5xl"][0], atol=1e-6) else 1
    torch.testing.assert_close(x[first], cat["conditioning_mt5xl"][0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x[1 - first], empty["conditioning_mt5xl"][0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("v1_0", [False, True])
def test_sampling_is_finite_and_prompt_dependent(built, seen, v1_0):
    tiny = built(v1_0)
    cat = seen["samples"] if not v1_0 else sample(tiny, "a cat")
    dog = sample(tiny, "a dog")
    assert cat.shape == (1, 4, 4, 4)  # 32 px -> 4 x 4 latent -> 2 x 2 patches
    assert torch.isfinite(cat).all() and torch.isfinite(dog).all()
    assert cat.std() > 0.1
    assert (cat - dog).abs().max() > 1e-3 * cat.abs().max()


def test_smallest_latent_samples(built):
    """EmptyLatentImage's minimum (16 px: a 2 x 2 latent, one patch) samples."""
    out = sample(built(), "a cat", size=16)
    assert out.shape == (1, 4, 2, 2) and torch.isfinite(out).all()


def test_build_is_seeded(built):
    tiny, again, other = built(), hy.hunyuan_dit_model(seed=0), hy.hunyuan_dit_model(seed=1)
    first, second = tiny.model.model_state_dict(), again.model.model_state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert torch.equal(hy.encode(tiny.clip, "a cat")["cond"], hy.encode(again.clip, "a cat")["cond"])
    key = "diffusion_model.blocks.0.attn2.kv_proj.bias"
    assert not torch.equal(first[key], other.model.model_state_dict()[key])
    assert not torch.allclose(hy.encode(tiny.clip, "a cat")["cond"], hy.encode(other.clip, "a cat")["cond"])
