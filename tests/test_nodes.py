"""The UCE nodes inside a real ComfyUI (CPU): weights, sampling, LoRA, saving, families, errors.

Expected updates come from the naive reference (tests/uce_reference.py) fed with text rows that
the test encodes itself, one prompt at a time, with ComfyUI's CLIP; edited weights are read as
ComfyUI really loads them for sampling (graph.live_weights). Nothing is mocked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import safetensors.torch
import torch
from uce_devtools import comfy_env, tiny_models
from uce_devtools.graph import cross_attention_kv_keys, live_weights, run_node

import uce_reference as ref

END_TOKEN = 49407
ART_TEMPLATES = ["painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}"]


def node_defaults(pack, class_name: str) -> dict:
    """Widget defaults a node declares (what a freshly added node holds)."""
    required = pack.nodes.NODE_CLASSES[class_name].INPUT_TYPES()["required"]
    return {name: spec[1]["default"] for name, spec in required.items() if len(spec) > 1 and "default" in spec[1]}


def run_uce(pack, class_name, model, clip, **values):
    """(edited MODEL, report) of a UCE node run with its defaults and ``values``."""
    return run_uce_outputs(pack, class_name, model, clip, **values)[:2]


def run_uce_outputs(pack, class_name, model, clip, **values):
    """All outputs of a UCE node: (edited MODEL, report, edit)."""
    inputs = {**node_defaults(pack, class_name), **values}
    return run_node(class_name, model=model, clip=clip, **inputs)


def encode_one(clip, text):
    """(rows [77, d], last-token slot) of one prompt, straight from ComfyUI's CLIP."""
    tokens = clip.tokenize(text)
    cond = clip.encode_from_tokens(tokens, return_dict=True)["cond"]
    assert cond.shape[1] == 77, f"{text!r} should fit one chunk"
    ids = [t[0] for t in next(iter(tokens.values()))[0]]
    return cond[0].float(), ids.index(END_TOKEN, 1) - 1


def expected_erase(clip, w0, pairs, preserve, mode="paper", erase_scale=1.0, preserve_scale=None, lamb=0.5):
    encoded = {t: encode_one(clip, t) for t in {*preserve, *(t for pair in pairs for t in pair)}}
    if preserve_scale is None:
        preserve_scale = max(0.1, 1 / len(preserve))
    return ref.reference_erase(
        w0, [(encoded[c], encoded[g]) for c, g in pairs], [encoded[p] for p in preserve], mode,
        erase_scale, preserve_scale, lamb,
    )


def assert_deltas_match(edited, base, expected, tolerance=1e-3):
    """edited - base equals the expected ΔW on every key, relative to ΔW's norm."""
    for key, delta in expected.items():
        got = edited[key].double() - base[key].double()
        error = (torch.linalg.norm(got - delta) / torch.linalg.norm(delta)).item()
        assert error < tolerance, f"{key}: relative error {error:.2e}"


def sample(model, clip, text, seed=7):
    positive = run_node("CLIPTextEncode", clip=clip, text=text)[0]
    negative = run_node("CLIPTextEncode", clip=clip, text="")[0]
    latent = run_node("EmptyLatentImage", width=64, height=64, batch_size=1)[0]
    out = run_node(
        "KSampler", model=model, seed=seed, steps=2, cfg=7.0, sampler_name="euler", scheduler="normal",
        positive=positive, negative=negative, latent_image=latent, denoise=1.0,
    )[0]
    return out["samples"].clone()


@pytest.fixture(scope="module")
def sd15_kv(sd15):
    return sorted(cross_attention_kv_keys(sd15[0]))


@pytest.fixture(scope="module")
def van_gogh(pack, sd15):
    """One art erase on the tiny SD1.5, shared by the tests that inspect it."""
    model, clip, _ = sd15
    before = {"patches": {k: list(v) for k, v in model.patches.items()}, "uuid": model.patches_uuid}
    edited, report = run_uce(
        pack, "UCEEraseConcepts", model, clip, concepts="Van Gogh", concept_type="art", guide="art",
        preserve="Pablo Picasso\nRembrandt van Rijn", expand_prompts=True,
    )
    return edited, report, before


def test_erase_edits_exactly_the_kv_weights_by_the_closed_form(sd15, sd15_kv, van_gogh):
    model, clip, _ = sd15
    edited, report, _ = van_gogh
    base = live_weights(model, model.model.state_dict().keys())
    after = live_weights(edited, base.keys())
    prompts = ["Van Gogh"] + [t.format("Van Gogh") for t in ART_TEMPLATES]
    expected = expected_erase(
        clip, {k: base[k] for k in sd15_kv}, [(p, "art") for p in prompts], ["Pablo Picasso", "Rembrandt van Rijn", ""]
    )
    assert_deltas_match(after, base, expected)
    assert set(edited.patches) == set(sd15_kv)
    for key in base.keys() - set(sd15_kv):
        assert torch.equal(after[key], base[key]), f"{key} changed"
    assert "6 edited prompts" in report and "preserve: 3 prompts, 231 rows" in report


def test_input_model_is_bit_for_bit_unchanged(sd15, van_gogh):
    model, clip, _ = sd15
    edited, _, before = van_gogh
    assert {k: list(v) for k, v in model.patches.items()} == before["patches"]
    assert model.patches_uuid == before["uuid"]
    keys = list(model.model.state_dict().keys())
    original = live_weights(model, keys)
    live_weights(edited, keys)  # patches the shared module for the edited clone ...
    restored = live_weights(model, keys)  # ... and loading the original must give it back exactly
    assert all(torch.equal(original[k], restored[k]) for k in keys)


def test_strength_is_linear_and_zero_samples_exactly_like_the_original(pack, sd15, sd15_kv, van_gogh):
    model, clip, _ = sd15
    edited, _, _ = van_gogh
    half, _ = run_uce(
        pack, "UCEEraseConcepts", model, clip, concepts="Van Gogh", concept_type="art", guide="art",
        preserve="Pablo Picasso\nRembrandt van Rijn", strength=0.5,
    )
    zero, _ = run_uce(
        pack, "UCEEraseConcepts", model, clip, concepts="Van Gogh", concept_type="art", guide="art",
        preserve="Pablo Picasso\nRembrandt van Rijn", strength=0.0,
    )
    base, full, halfway = (live_weights(m, sd15_kv) for m in (model, edited, half))
    for key in sd15_kv:
        torch.testing.assert_close(halfway[key] - base[key], 0.5 * (full[key] - base[key]), rtol=1e-4, atol=1e-6)
    prompt = "a painting by Van Gogh"
    original = sample(model, clip, prompt)
    assert torch.equal(sample(zero, clip, prompt), original)
    assert not torch.allclose(sample(edited, clip, prompt), original)


def test_lora_and_clip_skip_applied_upstream_are_part_of_the_edit(pack, sd15, sd15_kv, tiny_lora_name):
    model, clip, _ = sd15
    lora_model, lora_clip = run_node(
        "LoraLoader", model=model, clip=clip, lora_name=tiny_lora_name, strength_model=1.0, strength_clip=1.0
    )
    skipped_clip = run_node("CLIPSetLastLayer", clip=lora_clip, stop_at_clip_layer=-2)[0]
    edited, _ = run_uce(
        pack, "UCEEraseConcepts", lora_model, skipped_clip, concepts="Claude Monet", concept_type="custom",
        guide="", preserve="a landscape", expand_prompts=False,
    )
    w0 = live_weights(lora_model, sd15_kv)
    assert not torch.equal(w0[sd15_kv[0]], live_weights(model, sd15_kv)[sd15_kv[0]])  # the LoRA is in W0
    expected = expected_erase(skipped_clip, w0, [("Claude Monet", "")], ["a landscape", ""])
    assert_deltas_match(live_weights(edited, sd15_kv), w0, expected)
    unskipped = expected_erase(lora_clip, w0, [("Claude Monet", "")], ["a landscape", ""])
    key = sd15_kv[0]
    assert torch.linalg.norm(unskipped[key] - expected[key]) > 1e-3 * torch.linalg.norm(expected[key])


def test_checkpoint_save_stores_the_edited_weights(comfy, sd15, sd15_kv, van_gogh):
    import folder_paths

    _, clip, vae = sd15
    edited, _, _ = van_gogh
    comfy_env.init_extra_nodes()  # CheckpointSave lives in comfy_extras
    run_node("CheckpointSave", model=edited, clip=clip, vae=vae, filename_prefix="checkpoints/uce_saved")
    (saved_file,) = Path(folder_paths.get_output_directory(), "checkpoints").glob("uce_saved*.safetensors")
    saved = safetensors.torch.load_file(saved_file)
    live = live_weights(edited, sd15_kv)
    for key in sd15_kv:
        stored = saved["model." + key]
        torch.testing.assert_close(stored.float(), live[key].to(stored.dtype).float())


def test_moderate_and_values_only(pack, sd15, sd15_kv):
    model, clip, _ = sd15
    edited, report = run_uce(pack, "UCEModerate", model, clip, concepts="nudity", projections="values")
    values = [k for k in sd15_kv if k.endswith("to_v.weight")]
    assert set(edited.patches) == set(values)
    base = live_weights(model, sd15_kv)
    expected = expected_erase(clip, {k: base[k] for k in values}, [("nudity", "")], [""], preserve_scale=1.0)
    assert_deltas_match(live_weights(edited, sd15_kv), base, expected)
    assert report.startswith("UCE moderate")


def test_debias_matches_the_reference(pack, sd15, sd15_kv):
    model, clip, _ = sd15
    edited, _ = run_uce(
        pack, "UCEDebias", model, clip, professions="doctor\nnurse", attributes="male\nfemale",
        attribute_weights="-0.05, 0.05\n0.04, -0.04", use_templates=False, preserve="teacher", token_mode="last_token",
    )
    base = live_weights(model, sd15_kv)
    enc = {t: encode_one(clip, t) for t in ["doctor", "nurse", "male", "female", "teacher", ""]}
    items = [
        (enc["doctor"], [enc["male"], enc["female"]], [-0.05, 0.05]),
        (enc["nurse"], [enc["male"], enc["female"]], [0.04, -0.04]),
    ]
    expected = ref.reference_debias(base, items, [enc["teacher"], enc[""]], "last_token", 1.0, 0.1, 0.5)
    assert_deltas_match(live_weights(edited, sd15_kv), base, expected)


@pytest.mark.parametrize("family, width", [("sd2", 1024), ("sdxl", 2048)])
def test_other_families_are_edited_by_the_closed_form(pack, request, family, width):
    tiny = request.getfixturevalue(f"{family}_family")
    keys = sorted(cross_attention_kv_keys(tiny.model))
    assert {shape[1] for shape in cross_attention_kv_keys(tiny.model).values()} == {width}
    edited, report = run_uce(
        pack, "UCEEraseConcepts", tiny.model, tiny.clip, concepts="a red sports car", concept_type="object",
        guide="", preserve="a bicycle", expand_prompts=False,
    )
    base = live_weights(tiny.model, keys)
    expected = expected_erase(tiny.clip, base, [("a red sports car", "")], ["a bicycle", ""])
    assert_deltas_match(live_weights(edited, keys), base, expected)
    assert set(edited.patches) == set(keys)


def test_sdxl_tokenizers_agree_on_the_last_token(pack, sdxl_family):
    clip = sdxl_family.clip
    for text in ["", "cat", "a painting by Katsushika Hokusai", "Hokusai's great wave, woodblock print, 1831"]:
        tokens = clip.tokenize(text)
        slots = {name: [t[0] for t in chunks[0]].index(END_TOKEN, 1) - 1 for name, chunks in tokens.items()}
        assert set(slots) == {"g", "l"} and slots["g"] == slots["l"]
        assert pack.nodes.text_rows.last_token_slot(clip, text, tokens) == slots["g"]


def test_prompt_weighting_syntax_is_read_literally(pack, sd15):
    clip = sd15[1]
    tokens = pack.nodes.text_rows.tokenize(clip, "(Van Gogh:1.5)")
    assert all(weight == 1.0 for _, weight in tokens["l"][0])
    assert len(tokens["l"][0]) == 77


# --- clear errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"concepts": "  \n \n"}, "concepts: write at least one concept"),
        ({"concepts": "cat\ndog\nbird", "guide": "animal\nplant"}, "guide: 2 lines for 3 concepts"),
    ],
)
def test_bad_erase_texts_are_refused_before_any_work(pack, sd15, values, message):
    node = pack.nodes.NODE_CLASSES["UCEEraseConcepts"]
    inputs = {**node_defaults(pack, "UCEEraseConcepts"), **values}
    assert message in node.validation(concepts=inputs["concepts"], guide=inputs["guide"])
    with pytest.raises(ValueError, match=message):
        run_node("UCEEraseConcepts", model=sd15[0], clip=sd15[1], **inputs)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lamb": 0.0}, "lamb: 0 is out of range: use a number from 1e-05 to 100"),
        ({"strength": float("nan")}, "strength: must be a finite number from 0 to 2, got nan"),
        ({"strength": "nan"}, "strength: must be a finite number from 0 to 2, got nan"),
        ({"erase_scale": float("inf")}, "erase_scale: must be a finite number from 0 to 100, got inf"),
        ({"preserve_scale": "-inf"}, "preserve_scale: must be a finite number from -1 to 100, got -inf"),
        ({"lamb": [1, 2]}, "lamb: must be a number from 1e-05 to 100, got list"),
        ({"concepts": ["cat", "dog"]}, "concepts: must be text with one entry per line, got a list"),
        ({"guide": 3}, "guide: must be text with one entry per line, got int"),
        ({"concepts": "cat " * 2_500_000}, r"concepts: is 10,000,000 characters, more than the 1,000,000"),
        ({"preserve": "dog\n" + "x" * 70_000}, r"preserve: line 2 is 70,000 characters, .*'xxxx.*… \(70,000 characters\)"),
    ],
)
def test_bad_values_are_refused_naming_the_input_when_run_directly(pack, sd15, values, message):
    """Through /prompt the same checks answer HTTP 400 (tests/test_hostile_inputs.py); values that arrive by
    a link or a direct call are checked when the node runs, before any work."""
    node = pack.nodes.NODE_CLASSES["UCEEraseConcepts"]
    assert re.search(message, node.validation(**values))
    with pytest.raises(ValueError, match=message):
        run_uce(pack, "UCEEraseConcepts", sd15[0], sd15[1], **values)


@pytest.mark.parametrize(
    "weights, message",
    [
        ("-0.03; 0.03", "attribute_weights: must be numbers"),
        ("0.1, 0.2, 0.3", "one number per attribute"),
        ("0.1, 0.2\n0.1, 0.2\n0.1, 0.2", "give one line for all professions or one line per profession"),
        ("nan, 0.1", "finite"),
    ],
)
def test_malformed_debias_weights_are_refused(pack, weights, message):
    node = pack.nodes.NODE_CLASSES["UCEDebias"]
    assert message in node.validation(professions="doctor\nnurse", attributes="male\nfemale", attribute_weights=weights)


def test_clip_of_another_family_is_refused_with_both_widths(pack, sd15, sdxl_family):
    with pytest.raises(ValueError, match=r"CLIP gives 768-wide .* SDXL MODEL's cross-attention expects 2048.*SD1.5 CLIP"):
        run_uce(pack, "UCEEraseConcepts", sdxl_family.model, sd15[1], concepts="cat", concept_type="object", guide="")


def test_model_of_an_unsupported_family_is_refused_with_its_family(pack, sd15):
    auraflow = tiny_models.unsupported_family_model()
    with pytest.raises(ValueError, match=r"this MODEL \(AuraFlow\) is not a family UCE can edit.*supported: SD1.x"):
        run_uce(pack, "UCEEraseConcepts", auraflow, sd15[1], concepts="cat")


def test_prompt_longer_than_one_chunk_is_refused(pack, sd15):
    long_concept = " ".join(["castle"] * 80)
    with pytest.raises(ValueError, match="longer than one 77-token chunk"):
        run_uce(pack, "UCEEraseConcepts", sd15[0], sd15[1], concepts=long_concept, concept_type="custom", guide="")


def test_non_finite_weights_give_a_clear_error(pack, sd15, sd15_kv):
    model, clip, _ = sd15
    broken = model.clone()
    nan_diff = torch.full(model.model.state_dict()[sd15_kv[0]].shape, float("nan"))
    broken.add_patches({sd15_kv[0]: ("diff", (nan_diff,))})
    with pytest.raises(ValueError, match="NaN or infinite"):
        run_uce(pack, "UCEEraseConcepts", broken, clip, concepts="cat", concept_type="custom", guide="", preserve="dog")


def test_sdxl_pooled_option_edits_only_the_pooled_columns_of_label_emb(pack, sdxl_family):
    """pooled on: label_emb's first linear map, on the CLIP-G pooled columns only (the size
    embeddings after them stay), by the closed form on the pooled vectors; off by default."""
    model, clip = sdxl_family.model, sdxl_family.clip
    key = "diffusion_model.label_emb.0.0.weight"
    values = dict(concepts="a red sports car", concept_type="object", guide="", preserve="a bicycle", expand_prompts=False)
    default, _ = run_uce(pack, "UCEEraseConcepts", model, clip, **values)
    assert key not in default.patches
    edited, report = run_uce(pack, "UCEEraseConcepts", model, clip, **values, pooled="on")
    assert key in edited.patches and "label_emb (pooled)" in report
    base = live_weights(model, [key])[key]
    delta = live_weights(edited, [key])[key].double() - base.double()
    assert delta.shape == (base.shape[0], 2816) and delta[:, 1280:].abs().max() == 0

    def pooled(text):
        out = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)
        return out["pooled_output"].float(), 0

    expected = ref.reference_erase(
        {key: base[:, :1280]}, [(pooled("a red sports car"), pooled(""))], [pooled("a bicycle"), pooled("")],
        "last_token", 1.0, 0.5, 0.5,
    )[key]
    assert torch.linalg.norm(delta[:, :1280] - expected) < 1e-4 * torch.linalg.norm(expected)


def test_report_merges_a_map_solved_per_source_layer(pack):
    """HiDream's caption projections are solved per Llama layer: the report shows them as one map, the
    target gaps combined over the layers (root of the sum of squares, as within one solve), the worst shift."""
    report = pack.nodes.report
    effect = pack.uce_solver.EditEffect

    def result(label, map_label, gap_before, gap_after, shift, weights=1):
        return report.GroupResult(
            label=label, weights=weights, low_rank=0, blocks=1, edit_rows=5, preserve_rows=7,
            effect=effect(gap_before, gap_after, shift, 5, 7), solve_seconds=1.0, measure_seconds=0.5, map_label=map_label,
        )

    merged = report.by_map([
        result("llama layer 0", "llama", 3.0, 0.3, 0.01),
        result("llama layer 1", "llama", 4.0, 0.4, 0.02, weights=2),
        result("t5", "", 1.0, 0.1, 0.005),
    ])
    assert [g.label for g in merged] == ["llama", "t5"]
    llama = merged[0]
    assert (llama.weights, llama.layers, llama.solve_seconds) == (3, 2, 2.0)
    assert llama.effect.target_gap_before == pytest.approx(5.0) and llama.effect.target_gap_after == pytest.approx(0.5)
    assert llama.effect.preserve_shift == 0.02


# --- costs bounded, results that cannot be silently wrong ---------------------------------------


def test_a_text_longer_than_any_tokenizer_reads_is_refused_before_tokenizing(pack, sd15, monkeypatch):
    text_rows = pack.nodes.text_rows
    real_tokenize, long_texts = text_rows.tokenize, []

    def tokenize(clip, text):
        if len(text) > 1000:
            long_texts.append(text)
        return real_tokenize(clip, text)

    monkeypatch.setattr(text_rows, "tokenize", tokenize)
    limit = text_rows.character_limit(sd15[1])
    assert limit == 77 * 32  # one CLIP chunk of tokens, each at most the vocabulary's longest entry
    concept = "castles " * 400
    with pytest.raises(ValueError, match=rf"prompt 'castles castles .*… \(3,199 characters\) is longer than this CLIP's text encoders read in one prompt \(at most {limit:,} characters\)"):
        run_uce(pack, "UCEEraseConcepts", sd15[0], sd15[1], concepts=concept, concept_type="custom", guide="")
    assert long_texts == []


def test_a_prompt_made_too_long_by_a_template_names_the_template(pack, sd15):
    concept = " ".join(["castle"] * 74)  # fits one chunk alone; "painting by" adds two tokens
    with pytest.raises(ValueError, match=r"longer than one 77-token chunk.*the art template 'painting by \{\}' made it "
                       r"from the concept 'castle castle.*turn expand_prompts off"):
        run_uce(pack, "UCEEraseConcepts", sd15[0], sd15[1], concepts=concept, concept_type="art", guide="art")


def test_interrupt_stops_the_edit_while_prompts_are_still_being_tokenized(pack, sd15, monkeypatch):
    import comfy.model_management as mm

    text_rows = pack.nodes.text_rows
    tokenized = []
    real_tokenize = text_rows.tokenize

    def tokenize(clip, text):
        tokenized.append(text)
        if len(tokenized) == 100:
            mm.interrupt_current_processing(True)  # the user presses Cancel while prompts are checked
        return real_tokenize(clip, text)

    monkeypatch.setattr(text_rows, "tokenize", tokenize)
    preserve = "\n".join(f"preserved prompt number {i}" for i in range(1000))
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_uce(pack, "UCEEraseConcepts", sd15[0], sd15[1], concepts="cat", concept_type="custom", preserve=preserve)
    finally:
        mm.interrupt_current_processing(False)
    assert 100 <= len(tokenized) < 200


def test_edit_rows_beyond_the_memory_budget_are_refused_before_encoding_them_all(pack, sd15, monkeypatch):
    monkeypatch.setenv("UCE_EDIT_MEMORY_MB", "1")  # 77 x 768 float32 rows (and the pooled vector) are ~231 KiB per prompt: "cat", "dog", 5 templates each, guide ""
    with pytest.raises(ValueError, match=r"this edit has 13 prompts .* about 5.9 MiB of memory \(23\d\.\d KiB each, held for the solve\), more than the 1.0 MiB .*edit fewer concepts per node"):
        run_uce(pack, "UCEEraseConcepts", sd15[0], sd15[1], concepts="cat\ndog", concept_type="object", guide="")


def test_debias_weights_that_would_break_the_model_are_refused_and_large_ones_flagged(pack, sd15):
    values = dict(professions="doctor", preserve="teacher\nfarmer")
    with pytest.raises(ValueError, match=r"moves the preserved prompts' cross-attention outputs by [\d,]+% of their norm: "
                       r"it would break what it should keep .*lower attribute_weights"):
        run_uce(pack, "UCEDebias", sd15[0], sd15[1], attribute_weights="-1e6, 1e6", **values)
    _, report = run_uce(pack, "UCEDebias", sd15[0], sd15[1], attribute_weights="-30, 30", **values)
    assert report.startswith("WARNING: the edit moves the preserved prompts' cross-attention outputs by")
    _, report = run_uce(pack, "UCEDebias", sd15[0], sd15[1], attribute_weights="-0.03, 0.03", **values)
    assert "WARNING" not in report
