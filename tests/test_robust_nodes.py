"""Hardening and null-space preservation through the real UCE nodes (tiny SD1.5 and a DiT family)."""

from __future__ import annotations

import re

import pytest
import torch
from test_nodes import encode_one, run_uce, run_uce_outputs
from uce_devtools.graph import run_node

ERASE = dict(concepts="Van Gogh", concept_type="custom", guide="art", preserve="a dog\na cat\nMonet\nPicasso")


def residuals(report: str) -> list[float]:
    line = next(line for line in report.splitlines() if line.startswith("hardening on"))
    return [float(x) for x in re.findall(r"([\d.]+)%", line.split("within", 1)[1])]


def test_null_space_keeps_the_unconditional_outputs_exactly_and_moves_preserved_prompts_less(pack, sd15):
    model, clip, _ = sd15
    _, plain_report, plain = run_uce_outputs(pack, "UCEEraseConcepts", model, clip, **ERASE)
    _, report, record = run_uce_outputs(pack, "UCEEraseConcepts", model, clip, preservation="null_space", **ERASE)
    assert "null space: the cross-attention update uses" in report
    # the report sets it beside the plain edit, whose own report gives the same figures
    remains = re.search(r"([\d.]+)% of the distance to the targets remains", plain_report).group(1)
    moved = re.search(r"preserved rows moved by ([\d.]+)%", plain_report).group(1)
    assert f"would leave {remains}% of the distance to the targets, preserved rows moved by {moved}%" in report
    unconditional = encode_one(clip, "")[0].double()
    kept = torch.cat([encode_one(clip, t)[0] for t in ("a dog", "Monet")]).double()
    for key, delta in record.deltas.items():
        d = delta.dense().double()
        assert torch.linalg.norm(d @ unconditional.T) <= 1e-3 * torch.linalg.norm(d) * torch.linalg.norm(unconditional)
        plain_drift = torch.linalg.norm(plain.deltas[key].dense().double() @ kept.T)
        assert torch.linalg.norm(d @ kept.T) < plain_drift


def directions(report: str) -> int:
    return int(re.search(r"update uses (\d+) of", report).group(1))


def test_prior_filtering_frees_directions_and_prior_augmentation_takes_them_away(pack, sd15):
    model, clip, _ = sd15
    _, plain = run_uce(pack, "UCEEraseConcepts", model, clip, preservation="null_space", **ERASE)
    _, filtered, record = run_uce_outputs(
        pack, "UCEEraseConcepts", model, clip, preservation="null_space", prior_filtering=True, **ERASE
    )
    _, augmented = run_uce(pack, "UCEEraseConcepts", model, clip, preservation="null_space", prior_augmentation=2, **ERASE)
    kept = re.search(r"from (\d+) of (\d+) preserve prompts .* and (\d+) perturbed", filtered)
    assert 0 < int(kept.group(1)) < int(kept.group(2)) == 5 and kept.group(3) == "0"  # 4 prompts and ""
    # fewer rows can only free directions, copies only take them away (the cutoff is set by all preserve rows)
    assert directions(filtered) >= directions(plain) > directions(augmented)
    assert "from 5 of 5 preserve prompts" in augmented
    assert record.description["uce.preservation"] == "null_space (threshold 0.01, prior filtering)"


def test_hardening_raises_the_attack_residual_round_by_round(pack, sd15):
    model, clip, _ = sd15
    _, report = run_uce(pack, "UCEEraseConcepts", model, clip, harden_rounds=2, harden_lamb=1e-3, **ERASE)
    values = residuals(report)
    assert len(values) == 3
    assert values[-1] > values[0]
    assert "edited prompt, 225 rows" in report  # the concept's 75 rows, then 75 adversarial rows per round


def test_moderate_nudity_uses_rece_defaults_and_both_modes_together(pack, sd15):
    model, clip, _ = sd15
    _, report, record = run_uce_outputs(
        pack, "UCEModerate", model, clip, concepts="nudity", harden_rounds=-1, preservation="null_space",
        preserve="a person wearing clothes\na beach at sunset",
    )
    assert len(residuals(report)) == 4  # nudity: 3 rounds
    assert '"rounds": 3' in record.description["uce.hardening"]
    assert '"lamb_adv": 0.1' in record.description["uce.hardening"]
    assert record.description["uce.preservation"].startswith("null_space")


def test_hardened_edit_scales_with_strength_and_stacks_with_a_lora(pack, sd15, tiny_lora_name):
    model, clip, _ = sd15
    full, _, record = run_uce_outputs(pack, "UCEEraseConcepts", model, clip, harden_rounds=1, **ERASE)
    half, _, half_record = run_uce_outputs(pack, "UCEEraseConcepts", model, clip, harden_rounds=1, strength=0.5, **ERASE)
    assert half_record.strength == 0.5
    key = next(iter(record.deltas))
    assert torch.allclose(record.deltas[key].dense(), half_record.deltas[key].dense())
    stacked = run_node("LoraLoaderModelOnly", model=full, lora_name=tiny_lora_name, strength_model=1.0)[0]
    assert set(full.patches) <= set(stacked.patches)
    assert any(len(stacked.patches[k]) > len(full.patches.get(k, [])) for k in stacked.patches)


FAMILIES = (
    "flux", "chroma", "sd3", "qwen_image", "z_image", "lumina2", "flux2", "wan21_t2v", "wan22_ti2v", "ltxv",
    "pixart_alpha", "cosmos_predict2", "hidream", "hunyuan_dit",
)


@pytest.mark.parametrize("name", FAMILIES)
def test_null_space_and_hardening_work_on_every_dit_family(pack, tiny_family, name):
    built = tiny_family(name)
    _, report = run_uce(
        pack, "UCEEraseConcepts", built.model, built.clip, concepts="a red car", concept_type="custom", guide="a car",
        preserve="a dog\na house", preservation="null_space", harden_rounds=1, prior_filtering=True,
        prior_augmentation=1,
    )
    assert "null space: the " in report
    assert re.search(r"from \d of 3 preserve prompts .* and \d+ perturbed copies", report)
    values = residuals(report)
    assert len(values) == 2 and all(v >= 0 for v in values)


def test_null_space_with_an_empty_preserve_list_is_refused(pack, sd15):
    model, clip, _ = sd15
    settings = dict(ERASE, preserve="", preservation="null_space")
    with pytest.raises(ValueError, match="preserve list is empty.*preserve_preset to captions"):
        run_uce(pack, "UCEEraseConcepts", model, clip, **settings)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        (dict(harden_rounds=-2), "harden_rounds"),
        (dict(harden_rounds=11), "harden_rounds"),
        (dict(null_space_threshold=1.5), "null_space_threshold"),
        (dict(null_space_threshold=0.0), "null_space_threshold"),
        (dict(preserve_preset="everything"), "preserve_preset"),
        (dict(preservation="strict"), "preservation"),
        (dict(harden_rounds=1, harden_lamb=0.0), "harden_lamb"),
        (dict(prior_filtering=True), "prior_filtering"),
        (dict(preservation="null_space", prior_augmentation=17), "prior_augmentation"),
        (dict(preservation="null_space", prior_augmentation=-1), "prior_augmentation"),
    ],
)
def test_bad_robust_settings_are_refused_naming_the_input(pack, sd15, values, named):
    model, clip, _ = sd15
    with pytest.raises(ValueError, match=named):
        run_uce(pack, "UCEEraseConcepts", model, clip, **ERASE, **values)


def test_null_space_and_hardening_on_sdxl_with_its_pooled_weights(pack, sdxl_family):
    _, report = run_uce(
        pack, "UCEEraseConcepts", sdxl_family.model, sdxl_family.clip, concepts="a red car", concept_type="custom",
        guide="a car", preserve="a dog\na house", preservation="null_space", harden_rounds=1, pooled="on",
    )
    assert report.count("null space: the ") == 2  # cross-attention and the pooled vector's weights
    assert report.count("hardening on the ") == 2
