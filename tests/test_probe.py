"""UCE Probe inside a real ComfyUI (CPU): its numbers against a naive float64 recomputation, its chart, its errors.

The expected numbers come from weights read as ComfyUI really loads them for sampling
(graph.live_weights) and from text rows the test encodes itself, one prompt at a time, with
ComfyUI's CLIP. Nothing is mocked.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from uce_devtools import tiny_models
from uce_devtools.graph import cross_attention_kv_keys, live_weights, run_node

from test_nodes import encode_one, run_uce_outputs

PRESERVE = ["Pablo Picasso", "Rembrandt van Rijn"]
UNRELATED = ["a photo of a dog on the grass", "a red car parked on a street"]
MOVEMENT_LINE = re.compile(r'^\s+(\S+)\s+(\d+)\s+(?:(\S+)\s+(\d+)\s+)?(\S+)\s+(".*")$')
CLOSENESS_LINE = re.compile(r'^\s+(\S+)\s+(\d+)\s+(".*") -> (".*")$')


def probe(original, edited, clip, prompts="", edit=None):
    """(chart IMAGE, table) of the UCE Probe node."""
    values = {"original_model": original, "edited_model": edited, "clip": clip, "prompts": prompts}
    if edit is not None:
        values["edit"] = edit
    return run_node("UCEProbe", **values)


def movements(table: str, mode: bool = False) -> dict:
    """prompt -> (movement, rows, kind) read back from the table; ``mode``: the token mode's columns instead."""
    found = {}
    for line in table.splitlines():
        match = MOVEMENT_LINE.match(line)
        if match and match.group(5) != "kind":
            value, rows = (match.group(3), match.group(4)) if mode else (match.group(1), match.group(2))
            found[json.loads(match.group(6))] = (float(value), int(rows), match.group(5))
    return found


def closeness(table: str) -> dict:
    """(concept, guide) -> (closeness, rows) read back from the table."""
    found = {}
    for line in table.splitlines():
        match = CLOSENESS_LINE.match(line)
        if match:
            found[(json.loads(match.group(3)), json.loads(match.group(4)))] = (float(match.group(1)), int(match.group(2)))
    return found


def assert_image(image):
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[3] == 3
    assert 400 <= image.shape[1] <= 4000 and 800 <= image.shape[2] <= 2000, tuple(image.shape)
    assert 0.0 <= image.min().item() and image.max().item() <= 1.0
    assert image.std().item() > 0.05  # something is drawn


@pytest.fixture(scope="module")
def erased(pack, sd15):
    """(edited MODEL, report, edit) of one erase on the tiny SD1.5 (no templates)."""
    model, clip, _ = sd15
    return run_uce_outputs(
        pack, "UCEEraseConcepts", model, clip, concepts="Van Gogh\nClaude Monet", concept_type="custom", guide="art",
        preserve="\n".join(PRESERVE), expand_prompts=False,
    )


@pytest.fixture(scope="module")
def probed(sd15, erased):
    """(chart, table) of the probe of that erase, default prompts plus the preserved and unrelated ones."""
    model, clip, _ = sd15
    edited, _, edit = erased
    return probe(model, edited, clip, edit=edit), probe(model, edited, clip, "\n".join(
        ["Van Gogh", "art", "", *PRESERVE, *UNRELATED]), edit=edit)


def test_numbers_equal_a_naive_float64_recomputation_from_live_weights(sd15, sd15_kv, erased, probed):
    model, clip, _ = sd15
    edited, _, _ = erased
    (_, default_table), (_, table) = probed
    after = live_weights(edited, sd15_kv)
    before = live_weights(model, sd15_kv)  # the original loaded last: the shared module is left unpatched
    w0 = {k: before[k].double() for k in sd15_kv}
    delta = {k: after[k].double() - w0[k] for k in sd15_kv}
    got = movements(table)
    assert set(got) == {"Van Gogh", "art", "", *PRESERVE, *UNRELATED}
    for text, (value, rows, _) in got.items():
        c, _ = encode_one(clip, text)
        c = c.double()
        moved = sum((c @ delta[k].T).square().sum() for k in sd15_kv)
        reference = sum((c @ w0[k].T).square().sum() for k in sd15_kv)
        expected = math.sqrt(moved / reference)
        assert rows == 77
        assert value == pytest.approx(expected, rel=2e-3, abs=1e-5), text
    pairs = closeness(default_table)
    assert set(pairs) == {("Van Gogh", "art"), ("Claude Monet", "art")}
    for (concept, guide), (value, rows) in pairs.items():
        (c, n_c), (g, n_g) = encode_one(clip, concept), encode_one(clip, guide)
        count = min(77 - n_c, 77 - n_g)  # the paper's rows: last concept token, EOS and padding, aligned
        c, g = c[n_c : n_c + count].double(), g[n_g : n_g + count].double()
        after_gap = sum((c @ (w0[k] + delta[k]).T - g @ w0[k].T).square().sum() for k in sd15_kv)
        before_gap = sum((c @ w0[k].T - g @ w0[k].T).square().sum() for k in sd15_kv)
        assert rows == count
        assert value == pytest.approx(math.sqrt(after_gap / before_gap), rel=2e-3, abs=1e-5), concept
    for text, (value, _, _) in movements(default_table).items():
        if text in got:
            assert value == pytest.approx(got[text][0], rel=1e-5, abs=1e-7)


def test_erased_concepts_move_toward_their_guides_and_preserved_prompts_move_little(probed):
    (_, default_table), (_, table) = probed
    pairs = closeness(default_table)
    assert all(value < 0.5 for value, _ in pairs.values()), pairs
    got = movements(table)
    assert got["Van Gogh"][2] == "edited" and got["art"][2] == "guide" and got[PRESERVE[0]][2] == "probe"
    edited_move = got["Van Gogh"][0]
    assert got[""][0] < 0.1 * edited_move  # the unconditional prompt is always preserved
    for text in PRESERVE:
        assert got[text][0] < 0.5 * edited_move, (text, got[text], edited_move)
    kinds = {kind for _, _, kind in movements(default_table).values()}
    assert {"edited", "guide", "unconditional", "preserved-style", "unrelated"} <= kinds


def test_last_token_mode_rows_unrelated_prompts_move_little(pack, sd15, sd15_kv):
    """With the last_token mode the table also measures each prompt's last content token (the row that mode
    edits and preserves): the concept's moves far, unrelated prompts' little, preserved prompts' hardly."""
    model, clip, _ = sd15
    edited, _, edit = run_uce_outputs(
        pack, "UCEEraseConcepts", model, clip, concepts="Van Gogh", concept_type="custom", guide="art",
        preserve="\n".join(PRESERVE), expand_prompts=False, token_mode="last_token",
    )
    _, table = probe(model, edited, clip, "\n".join(["Van Gogh", *PRESERVE, *UNRELATED]), edit=edit)
    got = movements(table, mode=True)
    assert all(rows == 1 for _, rows, _ in got.values())
    concept = got["Van Gogh"][0]
    for text in UNRELATED:
        assert got[text][0] < 0.5 * concept, (text, got)
    for text in [*PRESERVE, ""]:
        assert got[text][0] < 0.05 * concept, (text, got)
    (value, rows), = closeness(table).values()
    assert rows == 1 and value < 0.5
    assert "last_token token mode" in table
    after = live_weights(edited, sd15_kv)
    before = live_weights(model, sd15_kv)
    for text, (value, _, _) in got.items():
        c, n = encode_one(clip, text)
        row = c[n : n + 1].double()
        moved = sum((row @ (after[k].double() - before[k].double()).T).square().sum() for k in sd15_kv)
        reference = sum((row @ before[k].double().T).square().sum() for k in sd15_kv)
        assert value == pytest.approx(math.sqrt(moved / reference), rel=2e-3, abs=1e-5), text


def test_the_same_model_twice_gives_zeros(sd15, erased):
    model, clip, _ = sd15
    _, _, edit = erased
    image, table = probe(model, model, clip, edit=edit)
    assert all(value == 0.0 for value, _, _ in movements(table).values()), table
    assert all(value == 1.0 for value, _ in closeness(table).values()), table
    assert_image(image)
    image, table = probe(model, model, clip, "a cat\nart")  # no edit: every text-reading weight
    assert set(movements(table)) == {"a cat", "art", ""} and all(v == 0.0 for v, _, _ in movements(table).values())
    assert "8 text-reading weights" in table and not closeness(table)
    assert_image(image)


def test_chart_is_a_comfyui_image(probed):
    (image, _), _ = probed
    assert_image(image)
    # ComfyUI's own image preview takes it
    run_node("SaveImage", images=image, filename_prefix="uce_probe_chart")


def test_lora_on_the_edited_model_counts(pack, sd15, tiny_lora_name):
    """The probe reads effective weights: a LoRA alone is a movement, without any UCE edit."""
    model, clip, _ = sd15
    lora_model, _ = run_node(
        "LoraLoader", model=model, clip=clip, lora_name=tiny_lora_name, strength_model=1.0, strength_clip=0.0
    )
    _, table = probe(model, lora_model, clip, "a cat")
    assert movements(table)["a cat"][0] > 1e-4


def test_errors(pack, sd15, erased, tiny_family):
    model, clip, _ = sd15
    edited, _, edit = erased
    flux = tiny_family("flux")
    with pytest.raises(ValueError, match="prompts.*connect the edit"):
        probe(model, edited, clip, "  \n ")
    with pytest.raises(ValueError, match="original MODEL is SD1.x .* edited MODEL is Flux"):
        probe(model, flux.model, clip, "a cat")
    with pytest.raises(ValueError, match="does not match the MODEL"):
        probe(model, edited, flux.clip, "a cat")
    with pytest.raises(ValueError, match="edit was made on a SD1.x model"):
        probe(flux.model, flux.model, flux.clip, "a cat", edit=edit)
    import comfy.supported_models

    wide = tiny_models.model_patcher(
        comfy.supported_models.SD15, {**tiny_models.SD15_TINY_UNET_CONFIG, "model_channels": 640},
        lambda unet: tiny_models.randomize_(unet, 1, "probe.wide"),
    )
    with pytest.raises(ValueError, match=r"edited MODEL does not have the original MODEL's weights.*\(320, 768\)"):
        probe(model, wide, clip, "a cat")


@pytest.mark.parametrize("name", ["flux", "wan21_t2v"])
def test_dit_and_per_block_families(pack, tiny_family, name):
    tiny = tiny_family(name)
    edited, report, edit = run_uce_outputs(
        pack, "UCEEraseConcepts", tiny.model, tiny.clip, concepts="Van Gogh", concept_type="custom", guide="art",
        preserve="Rembrandt", expand_prompts=False,
    )
    image, table = probe(tiny.model, edited, tiny.clip, edit=edit)
    assert_image(image)
    (value, rows), = closeness(table).values()
    assert value < 0.5 and rows >= 1
    got = movements(table)
    assert got["Van Gogh"][0] > got[""][0]
    assert len(re.findall(r"diffusion_model\.\S+\.weight$", table, re.M)) == len(edit.deltas)
    remains = [float(x) for x in re.findall(r"([\d.]+)% of the distance to the targets remains", report)]
    if len(remains) == 1:  # one group of weights: the solver's own measure of the same rows
        assert 100 * value == pytest.approx(remains[0], abs=0.06), (value, report)
    image, table = probe(tiny.model, tiny.model, tiny.clip, "a cat")
    assert movements(table)["a cat"][0] == 0.0


@pytest.fixture(scope="module")
def sd15_kv(sd15):
    return sorted(cross_attention_kv_keys(sd15[0]))


def test_debias_edit_gives_its_prompts_and_attributes_and_no_closeness(pack, sd15):
    model, clip, _ = sd15
    edited, _, edit = run_uce_outputs(pack, "UCEDebias", model, clip)
    image, table = probe(model, edited, clip, edit=edit)
    got = movements(table)
    kinds = {kind for _, _, kind in got.values()}
    assert {"edited", "attribute", "unconditional", "unrelated"} <= kinds
    assert not closeness(table) and "movement per layer of the edited concepts" in table
    assert all(value > 0 for value, _, kind in got.values() if kind == "edited")
    assert_image(image)
