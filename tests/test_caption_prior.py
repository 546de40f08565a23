"""The generic caption prior (nodes/caption_prior.py): size, determinism, length limits, diversity, clean words.

The module is pure Python with no relative imports, so it is loaded straight from its file
(no ComfyUI needed).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

MODULE_PATH = Path(__file__).resolve().parents[1] / "nodes" / "caption_prior.py"


def _load(name: str = "uce_caption_prior_under_test"):
    spec = importlib.util.spec_from_file_location(name, MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prior():
    return _load()


@pytest.fixture(scope="module")
def captions(prior):
    return prior.caption_prompts()


def test_count_and_uniqueness(prior, captions):
    assert prior.CAPTION_COUNT == 3000
    assert len(captions) == 3000
    assert len(set(captions)) == len(captions)
    assert all(isinstance(c, str) and c == c.strip() and c for c in captions)


def test_deterministic_across_calls_and_fresh_import(prior, captions):
    assert prior.caption_prompts() == captions
    prior.caption_prompts.cache_clear()
    assert prior.caption_prompts() == captions
    fresh = _load("uce_caption_prior_fresh_copy")
    assert fresh.caption_prompts() == captions


def test_length_limits(captions):
    for caption in captions:
        assert len(caption.split()) <= 20, caption
        assert len(caption) < 150, caption


def test_diversity(prior, captions):
    subjects = prior.subject_phrases()
    assert len(set(subjects)) >= 200
    used = {s for s in subjects if any(f" {s} " in f" {c} " for c in captions)}
    assert len(used) >= 200
    prefixes = {" ".join(c.split()[:4]) for c in captions}
    assert len(prefixes) >= 500


BANNED = re.compile(r"\b(nude|naked|nsfw|gore|blood|bloody|sexy|gun|weapon|corpse|kill\w*)\b")
ARTIST_LIKE = re.compile(r"\b(by|in the style of) [A-Z]")


def test_no_banned_words(captions):
    for caption in captions:
        assert not BANNED.search(caption.lower()), caption
        assert not ARTIST_LIKE.search(caption), caption
        assert caption == caption.lower(), caption  # no proper names


def test_short_list_is_a_prefix_spread_over_subjects(prior, captions):
    short = prior.caption_prompts(100)
    assert short == captions[:100]
    subjects = prior.subject_phrases()
    covered = {s for s in subjects if any(f" {s} " in f" {c} " for c in short)}
    assert len(covered) >= 30
    assert prior.caption_prompts(0) == ()
