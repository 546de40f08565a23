"""How node inputs become edit plans: presets, templates, guides, preserve lists, scales."""

from __future__ import annotations

import pytest


@pytest.fixture
def nodes(pack):
    return pack.nodes


def test_art_preset_expands_templates_and_preserves_the_artist_list(nodes):
    plan, settings = nodes.erase.erase_request("Van Gogh\nClaude Monet", "art", "", "art", True)
    assert plan.pairs[:6] == [
        ("Van Gogh", "art"),
        ("painting by Van Gogh", "art"),
        ("art by Van Gogh", "art"),
        ("artwork by Van Gogh", "art"),
        ("picture by Van Gogh", "art"),
        ("style of Van Gogh", "art"),
    ]
    assert len(plan.pairs) == 12
    artists = nodes.presets.shipped_list("artists.txt")
    assert len(artists) >= 500
    assert "Vincent van Gogh" in artists and "Vincent van Gogh" not in settings.preserve  # never preserve the erased
    assert "Claude Monet" not in settings.preserve and "Pablo Picasso" in settings.preserve
    assert settings.preserve[-1] == ""  # the unconditional prompt is always preserved
    assert settings.scales.preserve == pytest.approx(0.1)  # paper: max(0.1, 1 / #preserve)


def test_object_preset_erases_toward_unconditional_and_preserves_it(nodes):
    plan, settings = nodes.erase.erase_request("cat", "", "", "object", True)
    assert plan.pairs == [("cat", ""), ("image of cat", ""), ("photo of cat", ""), ("portrait of cat", ""),
                          ("picture of cat", ""), ("painting of cat", "")]
    assert settings.preserve == [""] and settings.scales.preserve == 1.0


def test_one_guide_per_concept_and_own_preserve_list(nodes):
    plan, settings = nodes.erase.erase_request(
        "cat\ndog", "\nwolf\n", "kitten\ncat food\nhorse", "custom", True, preserve_scale=0.3
    )
    # custom has no templates; an empty line is the unconditional prompt; trailing blank lines are ignored
    assert plan.pairs == [("cat", ""), ("dog", "wolf")]
    assert settings.preserve == ["kitten", "horse", ""]  # "cat food" names an erased concept
    assert settings.scales.preserve == 0.3


def test_removing_erased_concepts_matches_whole_words_both_ways(nodes):
    without = nodes.presets.without
    assert without(["Vincent van Gogh", "Vangoghian", "", "Claude Monet"], ["Van Gogh"]) == ["Vangoghian", "", "Claude Monet"]
    assert without(["Van Gogh", "Monet"], ["Vincent van Gogh"]) == ["Monet"]
    assert without(["race car", "cartoon", "car", "Car"], ["car"]) == ["cartoon"]
    assert without(["Van Gogh", "Monet"], ["  ", "Vincent van Gogh"]) == ["Monet"]  # a blank removed entry is ignored


def test_moderate_is_erasing_toward_the_unconditional_prompt(nodes):
    plan, settings = nodes.erase.moderate_request("nudity\nviolence", "")
    assert plan.pairs == [("nudity", ""), ("violence", "")]
    assert settings.preserve == [""]
    assert plan.label == "moderate"


def test_debias_uses_the_five_templates_and_substitutes_attributes(nodes):
    plan, settings = nodes.debias.debias_request("doctor\nnurse", "male\nfemale", "-0.03, 0.03\n0.02 -0.02")
    assert plan.items[0] == ("image of doctor", ["image of male", "image of female"])
    assert plan.items[4] == ("doctor", ["male", "female"])
    assert len(plan.items) == 10
    assert plan.weights[:5] == [[-0.03, 0.03]] * 5 and plan.weights[5:] == [[0.02, -0.02]] * 5
    assert "doctor" not in settings.preserve and "nurse" not in settings.preserve and "teacher" in settings.preserve
    assert settings.scales.preserve == 0.1


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda n: n.erase.erase_request("cat", "", "", "painting"), "unknown concept type"),
        (lambda n: n.erase.erase_request("cat", "", "", "object", token_mode="first"), "unknown token mode"),
        (lambda n: n.erase.erase_request("cat", "", "", "object", projections="queries"), "unknown projections"),
        (lambda n: n.debias.debias_request("doctor", "male", "0.1"), "at least two attributes"),
        (lambda n: n.debias.debias_request("", "male\nfemale", "0.1, 0.1"), "professions: write at least one profession"),
    ],
)
def test_bad_requests_say_what_is_wrong(nodes, call, message):
    with pytest.raises(ValueError, match=message):
        call(nodes)
