"""Batched encoding equals ComfyUI's one-by-one conditioning; the row cache is reused, bounded and invalidated."""

from __future__ import annotations

import pytest
import torch
from uce_devtools.graph import run_node

PROMPTS = [
    "",
    "cat",
    "a painting by Claude Monet",
    "portrait of a firefighter in the rain, dramatic light",
    "Katsushika Hokusai",
    "photo of a red bicycle leaning on a wall",
] + [f"picture number {i} of a lighthouse" for i in range(14)]


@pytest.fixture
def text_rows(pack):
    return pack.nodes.text_rows


@pytest.fixture
def cache_module(pack):
    return pack.nodes.text_cache


def one_by_one(clip, text):
    return clip.encode_from_tokens(clip.tokenize(text), return_dict=True)["cond"][0].float()


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_batched_encoding_gives_the_sampler_conditioning(request, text_rows, family):
    clip = request.getfixturevalue("sd15")[1] if family == "sd15" else request.getfixturevalue("sdxl_family").clip
    batched = text_rows.encode_prompts(clip, PROMPTS, batch_size=8, cache=None)
    for text in PROMPTS:
        expected = one_by_one(clip, text)
        got = batched[text].rows
        assert got.shape == expected.shape
        # same math, other batch sizes: only float32 summation order may differ
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_repeated_encoding_reuses_the_cache_and_a_changed_clip_misses(text_rows, cache_module, sd15):
    model, clip, _ = sd15
    cache = cache_module.RowCache()
    first = text_rows.encode_prompts(clip, PROMPTS, cache=cache)
    assert cache.misses == len(PROMPTS) and cache.hits == 0
    again = text_rows.encode_prompts(clip, PROMPTS, cache=cache)
    assert all(again[t] is first[t] for t in PROMPTS)  # nothing was encoded again
    assert cache.hits == len(PROMPTS)

    skipped = run_node("CLIPSetLastLayer", clip=clip, stop_at_clip_layer=-2)[0]
    patched = clip.clone()  # as a LoRA on the text encoder does
    key = next(k for k in clip.patcher.model_state_dict() if k.endswith("layers.10.mlp.fc2.weight"))
    weight = clip.patcher.model_state_dict()[key]
    patched.add_patches({key: ("diff", (0.5 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)),))})
    for changed in (skipped, patched):
        misses = cache.misses
        rows = text_rows.encode_prompts(changed, PROMPTS[:3], cache=cache)
        assert cache.misses == misses + 3
        assert not torch.allclose(rows["cat"].rows, first["cat"].rows)
        torch.testing.assert_close(rows["cat"].rows, one_by_one(changed, "cat"), rtol=1e-4, atol=1e-3)


def test_row_cache_stays_within_its_bound(text_rows, cache_module, sd15):
    clip = sd15[1]
    one_prompt = 77 * 768 * 4
    cache = cache_module.RowCache(max_bytes=3 * one_prompt)
    text_rows.encode_prompts(clip, PROMPTS, cache=cache)
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    assert cache.contains((cache_module.encoder_key(clip), PROMPTS[-1]))  # the most recent stay
    assert not cache.contains((cache_module.encoder_key(clip), PROMPTS[0]))


def test_repeated_edit_encodes_nothing_again(pack, sd15):
    model, clip, _ = sd15
    cache = pack.nodes.text_cache.ROW_CACHE
    values = dict(
        concepts="Claude Monet", concept_type="custom", guide="art", preserve="Pablo Picasso\nFrida Kahlo",
        expand_prompts=False, erase_scale=1.0, preserve_scale=-1.0, lamb=0.5, token_mode="paper",
        projections="keys+values", strength=1.0,
    )
    with torch.inference_mode():
        run_node("UCEEraseConcepts", model=model, clip=clip, **values)
        misses = cache.misses
        _, report, _ = run_node("UCEEraseConcepts", model=model, clip=clip, **{**values, "erase_scale": 2.0})  # a tweak of the same edit
    assert cache.misses == misses
    assert "preserve: 3 prompts, 231 rows" in report


@pytest.mark.parametrize("family", ["flux", "chroma", "z_image", "lumina2", "flux2"])
def test_batched_encoding_of_dit_families_gives_the_sampler_conditioning(pack, text_rows, tiny_family, family):
    """Prompts of equal token length share an encoder pass (Chroma's and the LLMs' lengths vary: grouped)."""
    clip = tiny_family(family).clip
    prompt_format = pack.nodes.families.family_of_clip(text_rows.clip_encoders(clip)).prompt_format
    batched = text_rows.encode_prompts(clip, PROMPTS, batch_size=8, cache=None)
    for text in PROMPTS:
        expected = one_by_one(clip, prompt_format.format(text))
        got = batched[text].rows
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_pooled_vectors_come_one_prompt_per_pass(text_rows, tiny_family):
    """ComfyUI returns only the first chunk's pooled vector, so prompts that need theirs are encoded one by one."""
    clip = tiny_family("flux").clip
    encoded = text_rows.encode_prompts(clip, PROMPTS[:4], pooled=True, cache=None)
    for text in PROMPTS[:4]:
        expected = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)["pooled_output"][0]
        torch.testing.assert_close(encoded[text].pooled, expected.float(), rtol=1e-5, atol=1e-5)
