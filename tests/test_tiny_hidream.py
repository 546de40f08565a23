"""The tiny HiDream builder gives a MODEL + CLIP that ComfyUI's own classes and nodes run, with the
text layout that uce_devtools.tiny_hidream documents."""

from __future__ import annotations

import pytest
import torch
from uce_devtools import comfy_env
from uce_devtools import tiny_hidream as th
from uce_devtools.graph import run_node

PROMPT_KEY = "diffusion_model.caption_projection.{}.linear.weight"
CAPTION_SHAPES = {PROMPT_KEY.format(i): (64, 32) for i in range(4)} | {PROMPT_KEY.format(4): (64, 64)}
SOURCES = {PROMPT_KEY.format(i): ("llama", layer) for i, layer in enumerate((0, 1, 2, 2))} | {
    PROMPT_KEY.format(4): ("t5", None)
}
# Sampler settings of ComfyUI's HiDream I1 workflows (ModelSamplingSD3 shift, cfg, scheduler);
# the tests run 2 euler steps instead of the workflows' sampler and step count.
SAMPLING = {
    "full": {"shift": 3.0, "cfg": 5.0, "scheduler": "simple"},
    "dev": {"shift": 6.0, "cfg": 1.0, "scheduler": "normal"},
    "fast": {"shift": 3.0, "cfg": 1.0, "scheduler": "normal"},
}


@pytest.fixture(scope="module")
def extra_nodes(comfy):
    comfy_env.init_extra_nodes()  # EmptySD3LatentImage and ModelSamplingSD3 live in comfy_extras


@pytest.fixture(scope="module")
def tiny(comfy):
    return th.hidream_model()


@pytest.fixture(scope="module")
def cat(tiny):
    return encode(tiny.clip, "a cat")


def encode(clip, text_or_tokens):
    tokens = clip.tokenize(text_or_tokens) if isinstance(text_or_tokens, str) else text_or_tokens
    return clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)


def sample(model, clip, text, variant, seed=0):
    settings = SAMPLING[variant]
    model = run_node("ModelSamplingSD3", model=model, shift=settings["shift"])[0]
    positive = run_node("CLIPTextEncode", clip=clip, text=text)[0]
    negative = run_node("CLIPTextEncode", clip=clip, text="")[0]
    latent = run_node("EmptySD3LatentImage", width=32, height=32, batch_size=1)[0]
    return run_node(
        "KSampler", model=model, seed=seed, steps=2, cfg=settings["cfg"], sampler_name="euler",
        scheduler=settings["scheduler"], positive=positive, negative=negative, latent_image=latent, denoise=1.0,
    )[0]  # fmt: skip


def test_model_config_caption_projections_and_biases(tiny):
    base = tiny.model.model
    assert tiny.family == "hidream"
    assert type(base.model_config).__name__ == "HiDream"
    assert type(base).__name__ == "HiDream" and base.get_dtype() == torch.float32
    assert base.latent_format.latent_channels == 16
    dit = base.diffusion_model
    assert list(dit.llama_layers) == list(th.LLAMA_LAYERS)
    assert len(dit.caption_projection) == th.NUM_LAYERS + th.NUM_SINGLE_LAYERS + 1

    state = tiny.model.model_state_dict()
    keys = th.caption_projection_keys(tiny.model)
    assert keys == list(CAPTION_SHAPES)
    assert {key: tuple(state[key].shape) for key in keys} == CAPTION_SHAPES
    assert not any(key.startswith("diffusion_model.caption_projection.") and key.endswith(".bias") for key in state)
    assert th.caption_projection_sources(tiny.model) == SOURCES
    for name in th.POOLED_MAPS:
        bias = state[f"diffusion_model.{name}.bias"]
        assert bias.abs().min() > 0
        assert 0.15 < bias.std().item() / th.TEXT_BIAS_STD < 1.5
    assert tuple(state["diffusion_model.p_embedder.pooled_embedder.linear_1.weight"].shape) == (64, 2048)


def test_default_shift_is_one_without_model_sampling_sd3(tiny, extra_nodes):
    # supported_models.HiDream sets sampling_settings twice; the second ({}) wins: shift 1.
    import comfy.model_base

    config = tiny.model.model.model_config
    assert config.sampling_settings == {}
    assert comfy.model_base.model_sampling(config, comfy.model_base.ModelType.FLOW).shift == 1.0
    patched = run_node("ModelSamplingSD3", model=tiny.model, shift=3.0)[0]
    assert patched.get_model_object("model_sampling").shift == 3.0


def test_token_layout(tiny):
    tokens = tiny.clip.tokenize("a cat", return_word_ids=True)
    assert list(tokens) == ["g", "l", "t5xxl", "llama"]
    assert {key: [len(chunk) for chunk in chunks] for key, chunks in tokens.items()} == {
        "g": [77], "l": [77], "t5xxl": [128], "llama": [128]
    }  # fmt: skip
    ids = {key: [t for t, _, _ in chunks[0]] for key, chunks in tokens.items()}
    assert ids["l"][:4] == [49406, 320, 2368, 49407] and set(ids["l"][4:]) == {49407}
    assert ids["g"][:4] == [49406, 320, 2368, 49407] and set(ids["g"][4:]) == {0}
    assert ids["t5xxl"][:4] == [3, 9, 1712, th.T5_EOS] and set(ids["t5xxl"][4:]) == {th.T5_PAD}
    assert ids["llama"][:3] == [th.LLAMA_BOS, 64, 8415] and set(ids["llama"][3:]) == {th.LLAMA_PAD}
    llama_word_ids = [w for _, _, w in tokens["llama"][0][:4]]
    assert llama_word_ids == [0, 1, 1, 0]  # BOS and padding are not words
    assert [w for _, _, w in tokens["t5xxl"][0][:4]] == [1, 1, 1, 0]


def test_long_prompts_keep_one_t5_chunk_and_one_unbounded_llama_chunk(tiny):
    tokens = tiny.clip.tokenize(" ".join(["a cat"] * 100))  # 200 prompt tokens for both T5 and Llama
    assert [len(chunk) for chunk in tokens["t5xxl"]] == [128]
    assert [len(chunk) for chunk in tokens["llama"]] == [201]
    assert tokens["llama"][0][0][0] == th.LLAMA_BOS and tokens["llama"][0][-1][0] == 8415  # no EOS
    assert tokens["t5xxl"][0][-1][0] == th.T5_EOS
    out = encode(tiny.clip, tokens)
    assert tuple(out["cond"].shape) == (1, 128, 64)
    assert tuple(out["conditioning_llama3"].shape) == (1, 3, 201, 32)


def test_llama3_tokenizer_is_byte_level(tiny):
    wrapper = tiny.clip.tokenizer.llama.tokenizer
    assert wrapper("a photo of a cat")["input_ids"] == [th.LLAMA_BOS, 64, 6685, 315, 264, 8415]
    assert th.fix_llama3_tokenizer_(tiny.clip) is False  # already fixed: no-op


def test_fix_llama3_tokenizer_gives_byte_level_ids(comfy):
    from types import SimpleNamespace

    from comfy.text_encoders import hidream

    clip = SimpleNamespace(tokenizer=hidream.HiDreamTokenizer())
    before = clip.tokenizer.llama.tokenizer("a cat")["input_ids"]
    changed = th.fix_llama3_tokenizer_(clip)
    assert changed == (before != [th.LLAMA_BOS, 64, 8415])  # transformers 5: [128000, 582 "ac", 266 "at"]
    assert clip.tokenizer.llama.tokenizer("a cat")["input_ids"] == [th.LLAMA_BOS, 64, 8415]
    assert [t for t, _ in clip.tokenizer.tokenize_with_weights("a cat")["llama"][0][:4]] == [
        th.LLAMA_BOS, 64, 8415, th.LLAMA_PAD
    ]  # fmt: skip


def test_encoding_keys_shapes_and_padding(tiny, cat):
    assert set(cat) == {"cond", "pooled_output", "conditioning_llama3"}  # no attention masks
    cond, pooled, llama = cat["cond"], cat["pooled_output"], cat["conditioning_llama3"]
    assert tuple(cond.shape) == (1, th.T5_LENGTH, th.T5_WIDTH)
    assert tuple(pooled.shape) == (1, th.POOLED_WIDTH)
    assert tuple(llama.shape) == (1, th.LLAMA_TINY["num_hidden_layers"], th.LLAMA_MIN_LENGTH, th.LLAMA_WIDTH)
    for tensor in (cond, pooled, llama):
        assert torch.isfinite(tensor).all()
    # Padding rows are computed, not zeroed (T5 rows 4.., Llama rows 3..).
    assert (cond[0, 4:].abs().amax(dim=-1) > 0).all()
    assert (llama[0, :, 3:].abs().amax(dim=-1) > 0).all()
    # T5 rows are after the final RMSNorm (weight 1): unit RMS.
    torch.testing.assert_close(cond[0].pow(2).mean(-1), torch.ones(th.T5_LENGTH))


def test_t5_padding_is_masked_inside_the_encoder(tiny, cat):
    tokens = tiny.clip.tokenize("a cat")
    tokens["t5xxl"] = [tokens["t5xxl"][0] + [(th.T5_PAD, 1.0)] * 32]  # 160 tokens
    longer = encode(tiny.clip, tokens)["cond"]
    assert tuple(longer.shape) == (1, 160, 64)
    torch.testing.assert_close(longer[:, :4], cat["cond"][:, :4])  # prompt and EOS rows unchanged


def test_llama_rows_are_hidden_states_1_to_L(tiny, cat):
    te = tiny.clip.cond_stage_model
    ids = [t for t, _ in tiny.clip.tokenize("a cat")["llama"][0]]
    with torch.inference_mode():
        states, _, extra = te.llama.encode([ids])
    layers = th.LLAMA_TINY["num_hidden_layers"]
    assert tuple(states.shape) == (1, layers + 1, 128, th.LLAMA_WIDTH)  # embeddings + every layer
    assert extra["attention_mask"][0, :4].tolist() == [1, 1, 1, 0]  # BOS and prompt attended, padding not
    embeddings = te.llama.transformer.model.embed_tokens.weight[ids].float()
    torch.testing.assert_close(states[0, 0], embeddings)
    torch.testing.assert_close(cat["conditioning_llama3"], states[:, 1:])  # index 0 (embeddings) cut
    final = cat["conditioning_llama3"][0, layers - 1]  # after the final RMSNorm (weight 1)
    torch.testing.assert_close(final.pow(2).mean(-1), torch.ones(128))


def test_llama_bos_row_is_prompt_independent_and_last_content_row_is_not(tiny, cat):
    dog = encode(tiny.clip, "a dog")
    tokens = [t for t, _ in tiny.clip.tokenize("a dog")["llama"][0]]
    assert tokens[:3] == [th.LLAMA_BOS, 64, 5679]
    bos_cat, bos_dog = cat["conditioning_llama3"][0, :, 0], dog["conditioning_llama3"][0, :, 0]
    torch.testing.assert_close(bos_cat, bos_dog)  # causal: BOS sees only itself
    torch.testing.assert_close(cat["conditioning_llama3"][0, :, 1], dog["conditioning_llama3"][0, :, 1])  # "a"
    last = (cat["conditioning_llama3"][0, :, 2] - dog["conditioning_llama3"][0, :, 2]).abs().amax(dim=-1)
    assert (last > 1e-3).all()  # "Ġcat" vs "Ġdog"
    assert not torch.allclose(cat["cond"][0, :3], dog["cond"][0, :3])
    assert not torch.allclose(cat["pooled_output"], dog["pooled_output"])


def test_caption_projections_read_rows_at_their_scale(tiny, cat):
    dit = tiny.model.model.diffusion_model
    for key, (source, layer) in th.caption_projection_sources(tiny.model).items():
        rows = cat["cond"] if source == "t5" else cat["conditioning_llama3"][:, layer]
        weight = dit.get_submodule(key.removeprefix("diffusion_model.").removesuffix(".weight")).weight
        response = torch.nn.functional.linear(rows.float(), weight.float())
        assert torch.isfinite(response).all()
        assert 0.3 < response.std().item() < 3.0, key


def test_dit_reads_the_documented_rows_while_sampling(tiny, cat, extra_nodes):
    """Each caption projection's input during KSampler is its documented source (cond batch entry)."""
    dit = tiny.model.model.diffusion_model
    inputs: dict[int, list[torch.Tensor]] = {}

    def recorder(index):
        return lambda module, args, output: inputs.setdefault(index, []).append(args[0].detach().clone())

    handles = [
        projection.linear.register_forward_hook(recorder(i)) for i, projection in enumerate(dit.caption_projection)
    ]
    try:
        sample(tiny.model, tiny.clip, "a cat", "full")
    finally:
        for handle in handles:
            handle.remove()

    assert sorted(inputs) == list(range(len(dit.caption_projection)))
    for i, (source, layer) in enumerate(th.caption_projection_sources(tiny.model).values()):
        expected = cat["cond"][0] if source == "t5" else cat["conditioning_llama3"][0, layer]
        for batch in inputs[i]:  # one call per step; batch = cond and uncond (cfg 5)
            assert batch.shape[0] == 2
            assert any(torch.allclose(row, expected) for row in batch), i


@pytest.mark.parametrize("variant", list(SAMPLING))
def test_sampling_is_finite_and_prompt_dependent(tiny, extra_nodes, variant):
    cat = sample(tiny.model, tiny.clip, "a cat", variant)["samples"]
    dog = sample(tiny.model, tiny.clip, "a dog", variant)["samples"]
    assert cat.shape == (1, 16, 4, 4)
    assert torch.isfinite(cat).all() and torch.isfinite(dog).all()
    assert (cat - dog).abs().max() > 1e-3 * cat.abs().max()


def test_builder_is_deterministic_per_seed(tiny):
    again, other = th.hidream_model(seed=0), th.hidream_model(seed=1)
    # DiT weights only: sampling leaves the shared model with the last ModelSamplingSD3 sigmas.
    first, second, third = (t.model.model_state_dict("diffusion_model.") for t in (tiny, again, other))
    assert all(torch.equal(first[key], second[key]) for key in first)
    bias = "diffusion_model.p_embedder.pooled_embedder.linear_1.bias"
    assert not torch.equal(first[bias], third[bias])
    clip_first, clip_again = tiny.clip.cond_stage_model.state_dict(), again.clip.cond_stage_model.state_dict()
    assert all(torch.equal(clip_first[key], clip_again[key]) for key in clip_first)
