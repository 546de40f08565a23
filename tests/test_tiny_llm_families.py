"""The tiny Qwen-Image / Z-Image / Lumina 2 / Flux.2 builders give models that ComfyUI's own classes and nodes run."""

from __future__ import annotations

import psutil
import pytest
import torch
from uce_devtools import comfy_env
from uce_devtools import tiny_llm_families as llm
from uce_devtools.graph import run_node

FAMILIES = ("qwen_image", "z_image", "lumina2", "flux2")
BUILDERS = {
    "qwen_image": llm.qwen_image_model,
    "z_image": llm.z_image_model,
    "lumina2": llm.lumina2_model,
    "flux2": llm.flux2_model,
}
CONFIG_CLASS = {"qwen_image": "QwenImage", "z_image": "ZImage", "lumina2": "Lumina2", "flux2": "Flux2"}
TOKEN_KEY = {"qwen_image": "qwen25_7b", "z_image": "qwen3_4b", "lumina2": "gemma2_2b", "flux2": "mistral3_24b"}
COND_WIDTH = {"qwen_image": 64, "z_image": 64, "lumina2": 64, "flux2": 96}
TEXT_MAP_SHAPE = {"qwen_image": (64, 64), "z_image": (256, 64), "lumina2": (64, 64), "flux2": (64, 96)}
# Qwen2 token ids: <|im_start|> 151644, <|im_end|> 151645, "\n" 198, "user" 872, "assistant" 77091,
# "a" 64, " cat" 8251.
CHAT_SUFFIX = [151645, 198, 151644, 77091, 198]
# Sampler settings of each family's ComfyUI workflows (Flux.2: FluxGuidance, cfg 1). Qwen-Image's
# latent format (Wan 2.1) is 3-D: KSampler unsqueezes the empty 4-D latent (comfy/sample.py:46).
SAMPLING = {
    "qwen_image": {"cfg": 2.5, "latent": "EmptySD3LatentImage", "shape": (1, 16, 1, 8, 8), "guidance": None},
    "z_image": {"cfg": 1.0, "latent": "EmptySD3LatentImage", "shape": (1, 16, 8, 8), "guidance": None},
    "lumina2": {"cfg": 4.0, "latent": "EmptySD3LatentImage", "shape": (1, 16, 8, 8), "guidance": None},
    "flux2": {"cfg": 1.0, "latent": "EmptyFlux2LatentImage", "shape": (1, 128, 4, 4), "guidance": 4.0},
}
ENGLISH_PROMPTS = [
    "a photo of a cat",
    "",
    "Van Gogh",
    "a painting in the style of Kelly McKernan, Greg Rutkowski and Thomas Kinkade",
    "portrait of a firefighter (dramatic:1.2) in the rain; 35mm, f/1.8 -- 4K!",
    "Zdzisław Beksiński, Hayao Miyazaki's Totoro & Amélie Poulain",
    "a sign that says \"OPEN 24/7\"\nnew line\ttab",
]


@pytest.fixture(scope="module")
def extra_nodes(comfy):
    comfy_env.init_extra_nodes()  # EmptySD3LatentImage, EmptyFlux2LatentImage, CLIPTextEncodeLumina2, FluxGuidance


@pytest.fixture(scope="module")
def built(comfy):
    """Each family's tiny MODEL + CLIP, built on first use; also the RSS growth of each build."""
    cache = {}
    rss_growth = {}

    def get(family):
        if family not in cache:
            before = psutil.Process().memory_info().rss
            cache[family] = BUILDERS[family]()
            rss_growth[family] = psutil.Process().memory_info().rss - before
        return cache[family]

    get.rss_growth = rss_growth
    return get


def encode(clip, text):
    return clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)


def token_ids(clip, family, text):
    chunks = clip.tokenize(text, return_word_ids=True)[TOKEN_KEY[family]]
    assert len(chunks) == 1
    return [token for token, _, _ in chunks[0]], [word for _, _, word in chunks[0]]


def sample(tiny, text, family, seed=0):
    settings = SAMPLING[family]
    positive = run_node("CLIPTextEncode", clip=tiny.clip, text=text)[0]
    negative = run_node("CLIPTextEncode", clip=tiny.clip, text="")[0]
    if settings["guidance"] is not None:
        positive = run_node("FluxGuidance", conditioning=positive, guidance=settings["guidance"])[0]
    latent = run_node(settings["latent"], width=64, height=64, batch_size=1)[0]
    return run_node(
        "KSampler", model=tiny.model, seed=seed, steps=2, cfg=settings["cfg"], sampler_name="euler",
        scheduler="simple", positive=positive, negative=negative, latent_image=latent, denoise=1.0,
    )[0]["samples"]


@pytest.mark.parametrize("family", FAMILIES)
def test_model_config_dtype_and_text_map(built, family):
    tiny = built(family)
    assert tiny.family == family
    assert type(tiny.model.model.model_config).__name__ == CONFIG_CLASS[family]
    assert tiny.model.model.get_dtype() == torch.float32
    state = tiny.model.model_state_dict()
    weight_key = llm.text_map_key(family)
    assert tuple(state[weight_key].shape) == TEXT_MAP_SHAPE[family]
    bias = state.get(weight_key.removesuffix(".weight") + ".bias")
    if family == "flux2":
        assert bias is None  # Flux.2 has no biases (ops_bias False)
        assert llm.text_norm_key(family) is None
    else:
        assert bias.abs().min() > 0
        assert 0.5 < bias.std().item() / llm.TEXT_BIAS_STD < 1.5
        norm = state[llm.text_norm_key(family)]
        assert tuple(norm.shape) == (TEXT_MAP_SHAPE[family][1],)
        assert (norm - 1).abs().max() > 0.1
        assert 0.5 < (norm - 1).std().item() / llm.TEXT_NORM_STD < 1.5


@pytest.mark.parametrize("family", FAMILIES)
def test_conditioning_is_finite_prompt_dependent_and_has_no_pooled_output(built, family):
    clip = built(family).clip
    cat, dog = encode(clip, "a cat"), encode(clip, "a dog")
    assert cat["cond"].ndim == 3 and cat["cond"].shape[0] == 1 and cat["cond"].shape[2] == COND_WIDTH[family]
    assert cat["pooled_output"] is None
    assert torch.isfinite(cat["cond"]).all()
    assert not torch.allclose(cat["cond"], dog["cond"])
    if family == "qwen_image":
        assert "attention_mask" not in cat  # all ones: QwenImageTEModel drops it
    else:
        assert torch.equal(cat["attention_mask"], torch.ones(1, cat["cond"].shape[1], dtype=torch.long))


@pytest.mark.parametrize("family", FAMILIES)
def test_text_map_reads_rows_at_its_scale(built, family):
    """W·norm(x) has std about 1 on real conditioning rows, so the seeded bias is not negligible.

    Flux.2 reads raw Mistral hidden states (no norm): their RMS grows with depth (about 2.6, 3.7
    and 5 for states 10, 20 and 30), as a real LLM's residual stream does.
    """
    tiny = built(family)
    rows = encode(tiny.clip, "a cat")["cond"].float()
    dit = tiny.model.model.diffusion_model
    if family in llm.TEXT_NORMS:
        rows = dit.get_submodule(llm.TEXT_NORMS[family])(rows)
    layer = dit.get_submodule(llm.TEXT_MAPS[family])
    response = torch.nn.functional.linear(rows, layer.weight.float())
    assert torch.isfinite(response).all()
    assert 0.5 < response.std().item() / rows.pow(2).mean().sqrt().item() < 2.0
    if family in llm.TEXT_NORMS:
        assert 0.3 < response.std().item() < 3.0


def test_qwen_image_keeps_the_prompt_and_a_five_token_chat_suffix(built):
    clip = built("qwen_image").clip
    ids, words = token_ids(clip, "qwen_image", "a cat")
    assert ids[:2] == [151644, 8948]  # <|im_start|>system: the template comes first
    assert ids[-7:] == [64, 8251] + CHAT_SUFFIX
    assert set(words) == {1}  # one weight segment: word ids do not mark the template
    empty_ids, _ = token_ids(clip, "qwen_image", "")
    assert empty_ids[-8:] == [151644, 872, 198] + CHAT_SUFFIX
    assert encode(clip, "a cat")["cond"].shape[1] == 2 + 5
    assert encode(clip, "")["cond"].shape[1] == 5


def test_z_image_keeps_the_whole_chat_template(built):
    clip = built("z_image").clip
    ids, words = token_ids(clip, "z_image", "a cat")
    assert ids == [151644, 872, 198, 64, 8251] + CHAT_SUFFIX
    assert set(words) == {1}
    assert encode(clip, "a cat")["cond"].shape[1] == len(ids) == 10
    assert encode(clip, "")["cond"].shape[1] == 8


def test_lumina2_rows_are_bos_then_the_prompt(built, extra_nodes):
    clip = built("lumina2").clip
    ids, words = token_ids(clip, "lumina2", "a cat")
    assert ids[0] == 2 and len(ids) == 3 and words == [0, 1, 1]
    assert token_ids(clip, "lumina2", "") == ([2], [0])
    assert encode(clip, "a cat")["cond"].shape[1] == 3

    node_cond = run_node("CLIPTextEncodeLumina2", clip=clip, user_prompt="a cat", system_prompt="superior")[0]
    system = lumina2_system_prompt("superior")
    expected = encode(clip, f"{system} <Prompt Start> a cat")["cond"]
    assert node_cond[0][0].shape == expected.shape and expected.shape[1] > 3
    torch.testing.assert_close(node_cond[0][0], expected)
    plain_cond = run_node("CLIPTextEncode", clip=clip, text="a cat")[0]
    torch.testing.assert_close(plain_cond[0][0], encode(clip, "a cat")["cond"])


def lumina2_system_prompt(name):
    import comfy_extras.nodes_lumina2

    return comfy_extras.nodes_lumina2.CLIPTextEncodeLumina2.SYSTEM_PROMPT[name]


def test_flux2_rows_are_bos_system_prompt_and_instruction(built):
    clip = built("flux2").clip
    ids, words = token_ids(clip, "flux2", "a cat")
    assert ids[:2] == [1, 17]  # <s> [SYSTEM_PROMPT]
    prompt = clip.tokenizer.mistral3_24b.tokenizer("a cat")["input_ids"][1:]  # "a", " cat" (after <s>)
    assert len(prompt) == 2 and ids[-4:] == [3, *prompt, 4]  # [INST] a cat [/INST]
    assert 18 in ids and words[0] == 0 and set(words[1:]) == {1}
    assert token_ids(clip, "flux2", "")[0] == ids[:-3] + [4]
    assert encode(clip, "a cat")["cond"].shape[1] == len(ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_english_prompts_tokenize_without_unknown_tokens(built, family):
    clip = built(family).clip
    unknown = {"lumina2": 3, "flux2": 0}.get(family)
    for text in ENGLISH_PROMPTS:
        ids, _ = token_ids(clip, family, text)
        assert unknown not in ids, text
    assert token_ids(clip, family, ENGLISH_PROMPTS[2]) != token_ids(clip, family, ENGLISH_PROMPTS[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_equal_length_chunks_encode_like_one_prompt_each(built, family):
    """Several prompts as chunks of one token list give their rows concatenated along dim 1.

    Qwen-Image cuts the template prefix found in the first chunk from the whole output, so the
    later chunks keep theirs (qwen_image.py:61-79).
    """
    clip = built(family).clip
    key = TOKEN_KEY[family]
    cat, dog = clip.tokenize("a cat")[key][0], clip.tokenize("a dog")[key][0]
    assert len(cat) == len(dog)
    together = clip.encode_from_tokens({key: [cat, dog]}, return_dict=True)
    one_by_one = [encode(clip, text)["cond"] for text in ("a cat", "a dog")]
    if family == "qwen_image":
        assert together["cond"].shape[1] == one_by_one[0].shape[1] + len(dog)
        torch.testing.assert_close(together["cond"][:, : one_by_one[0].shape[1]], one_by_one[0], rtol=1e-4, atol=1e-4)
    else:
        torch.testing.assert_close(together["cond"], torch.cat(one_by_one, dim=1), rtol=1e-4, atol=1e-4)
        assert together["attention_mask"].shape == (1, 2 * len(cat))


def test_qwen_image_vision_tower_is_not_resident(built):
    """Qwen2.5-VL's 659 M-parameter vision tower (2.6 GB in fp32) is allocated but never touched."""
    tiny = built("qwen_image")
    visual = tiny.clip.cond_stage_model.qwen25_7b.transformer.visual
    assert sum(p.numel() for p in visual.parameters()) > 600_000_000
    assert built.rss_growth["qwen_image"] < 1024**3


def test_builders_are_deterministic_per_seed(built):
    first = built("flux2")
    again, other = llm.flux2_model(seed=0), llm.flux2_model(seed=1)
    state, state_again = first.model.model_state_dict(), again.model.model_state_dict()
    assert all(torch.equal(state[key], state_again[key]) for key in state)
    assert torch.equal(encode(first.clip, "a cat")["cond"], encode(again.clip, "a cat")["cond"])
    assert not torch.equal(encode(first.clip, "a cat")["cond"], encode(other.clip, "a cat")["cond"])
    assert llm.tiny_gemma_spiece_model.__wrapped__() == llm.tiny_gemma_spiece_model()
    assert llm.tiny_tekken_json.__wrapped__() == llm.tiny_tekken_json()


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_on_the_cpu_is_finite_and_prompt_dependent(built, extra_nodes, family):
    tiny = built(family)
    cat = sample(tiny, "a cat", family)
    dog = sample(tiny, "a dog", family)
    assert cat.shape == SAMPLING[family]["shape"]
    assert torch.isfinite(cat).all() and torch.isfinite(dog).all()
    assert (cat - dog).abs().max() > 1e-3 * cat.abs().max()
