"""The paper's presets (concept types, prompt templates, default preserve lists) and text-input parsing."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .input_checks import InputError, quote

DATA_DIR = Path(__file__).parent / "data"

ART_TEMPLATES = ("painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}")
OBJECT_TEMPLATES = ("image of {}", "photo of {}", "portrait of {}", "picture of {}", "painting of {}")
DEBIAS_TEMPLATES = ("image of {}", "photo of {}", "portrait of {}", "picture of {}", "{}")


@dataclass(frozen=True)
class ConceptType:
    """Defaults of one kind of erased concept, as the paper sets them."""

    name: str
    guide: str
    templates: tuple[str, ...]
    preserve_list: str  # file in data/ used when the preserve input is empty, or ""


CONCEPT_TYPES = {
    "art": ConceptType("art", "art", ART_TEMPLATES, "artists.txt"),
    "object": ConceptType("object", "", OBJECT_TEMPLATES, ""),
    "custom": ConceptType("custom", "", (), ""),
}


def lines(text: str) -> list[str]:
    """Non-empty, stripped lines of a multiline input."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def guide_lines(text: str) -> list[str]:
    """Guide input: one line for all concepts or one per concept; blank input means the unconditional ""."""
    stripped = [line.strip() for line in text.splitlines()]
    while stripped and not stripped[-1]:
        stripped.pop()
    return stripped or [""]


@lru_cache(maxsize=None)
def shipped_list(name: str) -> tuple[str, ...]:
    """A list shipped in data/ (one entry per line)."""
    return tuple(lines((DATA_DIR / name).read_text(encoding="utf-8")))


def expand(concept: str, templates: tuple[str, ...]) -> list[str]:
    """The bare concept followed by one prompt per template."""
    return [concept] + [t.format(concept) for t in templates]


def without(items: list[str], removed: list[str]) -> list[str]:
    """``items`` minus those that name a removed concept, order kept, duplicates dropped.

    An item goes when it and a removed concept contain one another as whole
    words, ignoring case: erasing "Van Gogh" drops "Vincent van Gogh" too, so the
    edit never tries to preserve what it erases. The empty prompt always stays.
    """
    removed = [r for r in removed if r.strip()]
    patterns = [re.compile(rf"(?<!\w){re.escape(r.lower())}(?!\w)") for r in removed]

    def names_removed(item: str) -> bool:
        lowered = item.lower()
        return bool(lowered) and any(
            p.search(lowered) or re.search(rf"(?<!\w){re.escape(lowered)}(?!\w)", r.lower())
            for p, r in zip(patterns, removed)
        )

    return [item for item in dict.fromkeys(items) if not names_removed(item)]


def one_or_each(values: list, count: int, what: str, items: str) -> list:
    """One value per item: a single value is shared by all ``count`` items, else there must be one each."""
    if len(values) not in (1, count):
        raise InputError(
            what,
            f"{len(values)} lines for {count} {items}: give one line for all {items} or one line per "
            f"{items.rstrip('s')}",
        )
    return values * count if len(values) == 1 else values


def parse_numbers(text: str, what: str) -> list[float]:
    """Numbers separated by commas, spaces or new lines."""
    parts = text.replace(",", " ").split()
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise InputError(what, f"must be numbers separated by commas or new lines, got {quote(text)}") from None
    if not all(math.isfinite(n) for n in numbers):
        raise InputError(what, f"must be finite numbers, got {quote(text)}")
    return numbers
