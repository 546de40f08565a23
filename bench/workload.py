"""What the solver cases edit: the paper's artist counts, with synthetic CLIP-like text rows.

Only the *counts* come from the paper's data (``../shared/data/uce-paper``): which artists are
erased (erased-{N}artists.json) and how many of the 1,734 remain to be preserved. The rows are
synthetic, so no text encoder is needed: per prompt 77 slots x d, norms about 28 like CLIP-L's
last hidden state, with a component shared by every prompt (per slot) so that the Gram matrices
are as ill-conditioned as real ones are.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

SLOTS = 77
ROW_NORM = 28.0
PAPER_ARTISTS = 1734
REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """$UCE_PAPER_DATA, else <repo>/../shared/data/uce-paper (it may not exist)."""
    configured = os.environ.get("UCE_PAPER_DATA")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "uce-paper"


def paper_artists() -> Optional[list[str]]:
    """The 1,734 unique artists of artists1734_prompts.csv, in file order; None if the file is absent."""
    path = data_dir() / "artists1734_prompts.csv"
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        return list(dict.fromkeys(row["artist"].strip() for row in csv.DictReader(f) if row.get("artist", "").strip()))


def shipped_artists() -> list[str]:
    """The pack's own preserve list (nodes/data/artists.txt)."""
    text = (REPO_ROOT / "nodes" / "data" / "artists.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class ArtistSplit:
    """Erased artists and the preserve list (artists minus erased, case-insensitive, plus "")."""

    erased: list[str]
    preserve: list[str]
    source: str  # where the names came from


def artist_split(n_erased: int) -> ArtistSplit:
    """The paper's erased set of that size if it exists (else the first N), and the paper preserve list."""
    artists = paper_artists()
    source = "paper data"
    if artists is None:
        artists, source = shipped_artists(), "nodes/data/artists.txt (paper CSV absent)"
    erased_file = data_dir() / "erased-sets" / f"erased-{n_erased}artists.json"
    if erased_file.is_file():
        erased = [str(a) for a in json.loads(erased_file.read_text(encoding="utf-8"))][:n_erased]
    else:
        erased = artists[:n_erased]
        source += f"; erased = first {n_erased} (no {erased_file.name})"
    gone = {a.lower() for a in erased}
    return ArtistSplit(erased, [a for a in artists if a.lower() not in gone] + [""], source)


def preserve_count(n_erased: int) -> tuple[int, str]:
    """How many preserve prompts the paper's list has when erasing ``n_erased`` artists (incl. "")."""
    if paper_artists() is None:
        return PAPER_ARTISTS - n_erased + 1, "synthetic count (paper CSV absent): 1,734 - erased + 1"
    split = artist_split(n_erased)
    return len(split.preserve), split.source


class RowFactory:
    """Synthetic prompts of one width on one device: rows [n, slots, d] (77 by default) and last-token slots."""

    def __init__(self, width: int, device, seed: int = 0, slots: int = SLOTS, norm: float = ROW_NORM):
        self.width = width
        self.device = device
        self.slots = slots
        self.norm = norm
        gen = torch.Generator(device=device).manual_seed(seed)
        base = torch.randn(width, generator=gen, device=device)
        slot = torch.randn(slots, width, generator=gen, device=device)
        shared = base + 0.5 * slot
        self.shared = shared / shared.norm(dim=1, keepdim=True)  # [slots, d] unit rows, common to all prompts
        self.seed = seed

    def rows(self, count: int, stream: int) -> torch.Tensor:
        """``count`` prompts' rows [count, slots, d] (float32); ``stream`` picks an independent sequence."""
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 1000 + stream + 1)
        out = torch.randn(count, self.slots, self.width, generator=gen, device=self.device)
        return self._shape(out)

    def prompt_rows(
        self, indices, stream: int, out: Optional[torch.Tensor] = None, lengths: Optional[list[int]] = None
    ) -> torch.Tensor:
        """Rows [len(indices), slots, d] of the prompts with these indices, each drawn from its own seed,
        so any chunk or subset of a stream gives the same rows. ``out``: a (possibly strided) view to fill.
        ``lengths``: per prompt, how many leading slots to fill (the others are left as they are)."""
        if out is None:
            out = torch.empty(len(indices), self.slots, self.width, device=self.device)
        gen = torch.Generator(device=self.device)
        for j, index in enumerate(indices):
            gen.manual_seed(((self.seed * 1000 + stream + 1) * 10_000_019 + index) % 2**32)  # mt19937 keeps 32 bits
            if lengths is None:
                out[j].normal_(generator=gen)
            else:
                self._shape(out[j, : lengths[j]].normal_(generator=gen))
        return out if lengths is not None else self._shape(out)

    def _shape(self, noise: torch.Tensor) -> torch.Tensor:
        """Standard normal noise -> rows: a small random part plus the shared component, scaled to ``norm``
        (``noise``: [..., n, d], the first n slots)."""
        noise.mul_(0.8 / self.width**0.5).add_(0.6 * self.shared[: noise.shape[-2]])
        return noise.mul_(self.norm)

    def lasts(self, count: int, low: int, high: int, stream: int) -> list[int]:
        """Last-token slots drawn uniformly in [low, high]."""
        gen = torch.Generator().manual_seed(self.seed * 1000 + stream + 7)
        return torch.randint(low, high + 1, (count,), generator=gen).tolist()


class PreservePool:
    """The preserve prompts of every case of one width: the first ``count`` of one fixed pool.

    Cases with fewer preserve prompts (more erased artists) take a prefix, so the float64 Gram
    matrices the exact check needs are updated from the nearest count already computed instead of
    recomputed from all rows.
    """

    def __init__(self, factory: RowFactory, size: int = PAPER_ARTISTS + 1):
        self.factory = factory
        self.size = size
        self._rows: Optional[torch.Tensor] = None
        self._lasts: list[int] = []
        self._grams: dict[int, torch.Tensor] = {}

    def rows(self, count: int) -> tuple[torch.Tensor, list[int]]:
        """Rows [count, 77, d] (a view of the pool) and last-token slots (the last prompt is "", slot 0)."""
        if self._rows is None or count > self._rows.shape[0]:
            self.size = max(self.size, count)
            self._rows = self.factory.rows(self.size, stream=3)
            self._lasts = self.factory.lasts(self.size, 1, 6, stream=3)
            self._grams.clear()
        lasts = self._lasts[:count]
        lasts[-1] = 0
        return self._rows[:count], lasts

    def gram64(self, count: int, cross64) -> torch.Tensor:
        """Σ p pᵀ over all 77 rows of the first ``count`` prompts, float64 (paper token mode)."""
        if count not in self._grams:

            def block(a: int, b: int) -> torch.Tensor:
                flat = self._rows[a:b].reshape(-1, self._rows.shape[2])
                return cross64(flat, flat)

            nearest = min(self._grams, key=lambda c: abs(c - count), default=None)
            if nearest is None or abs(nearest - count) >= count:
                gram = block(0, count)
            elif nearest < count:
                gram = self._grams[nearest] + block(nearest, count)
            else:
                gram = self._grams[nearest] - block(count, nearest)
            self._grams[count] = gram
        return self._grams[count]
