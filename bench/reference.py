"""Baselines the fast solver is compared with (none of them imports uce_solver).

- ``reference_layer``: the naive per-layer reference, in the structure of the original UCE code
  (train_erase.py ``edit_model``): per layer mat1 = λ W0, mat2 = λ I; per prompt the batched
  outer products ``(v[:, :, None] @ c[:, None, :]).sum(0)`` and ``(c[:, :, None] @ c[:, None,
  :]).sum(0)``; then W = mat1 @ torch.inverse(mat2), float32. Generous to it: it gets the
  precomputed rows (no text encoding per layer) and computes values for the current layer only.
- ``gemm_layer``: a reasonable naive implementation: per layer one GEMM per Gram and an explicit
  inverse, float32.
- ``ExactSolution``: the closed form in float64 with an explicit inverse; the Gram matrices are
  computed once and shared by all layers (cheap), so it can check every layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from .measure import sync

CHUNK_ROWS = 16384
# Largest batched outer-product temporary of the reference, in elements (2 GiB of float32): the
# original materialises a prompt's [rows, d_out, d] at once, 17 GB for 256 Flux rows of width 4096;
# wider prompts are split into row batches that reuse two buffers (see _batch_buffers).
OUTER_ELEMENTS = 1 << 29


@dataclass
class ReferenceTiming:
    """Phases of one reference layer: seconds and how many prompts each loop ran."""

    edit_seconds: float = 0.0
    edit_prompts: int = 0
    preserve_seconds: float = 0.0
    preserve_prompts: int = 0
    fixed_seconds: float = 0.0  # setup, inverse and the final product

    def extrapolate(self, edit_prompts: int, preserve_prompts: int) -> float:
        """The layer's time with all prompts (linear in the prompt counts)."""
        total = self.fixed_seconds
        if self.edit_prompts:
            total += self.edit_seconds * edit_prompts / self.edit_prompts
        if self.preserve_prompts:
            total += self.preserve_seconds * preserve_prompts / self.preserve_prompts
        return total


def reference_layer(
    w0: torch.Tensor,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    preserve: Sequence[torch.Tensor],
    erase_scale: float,
    preserve_scale: float,
    lamb: float,
    timing: Optional[ReferenceTiming] = None,
) -> torch.Tensor:
    """ΔW of one layer. ``pairs``: (concept rows, aligned guide rows) per edited prompt; ``preserve``:
    the rows of each preserve prompt. Values are the layer's outputs (technique "replace")."""
    device = w0.device
    timing = timing if timing is not None else ReferenceTiming()
    sync(device)
    t0 = time.perf_counter()
    w0 = w0.float()
    mat1 = lamb * w0
    mat2 = lamb * torch.eye(w0.shape[1], device=device, dtype=torch.float32)

    step = outer_batch_rows(w0.shape[0], w0.shape[1])
    batches = _batch_buffers(w0, step, _first_prompt_rows(pairs, preserve))

    def add_prompt(rows: torch.Tensor, targets: torch.Tensor, scale: float) -> None:
        # One prompt as the original loop does it: a batch of per-row outer products, summed.
        if batches is None:
            mat1.add_(scale * (targets[:, :, None] @ rows[:, None, :]).sum(dim=0))
            mat2.add_(scale * (rows[:, :, None] @ rows[:, None, :]).sum(dim=0))
            return
        for start in range(0, rows.shape[0], step):
            r, t = rows[start : start + step], targets[start : start + step]
            n = r.shape[0]
            mat1.add_(scale * torch.bmm(t[:, :, None], r[:, None, :], out=batches[0][:n]).sum(dim=0))
            mat2.add_(scale * torch.bmm(r[:, :, None], r[:, None, :], out=batches[1][:n]).sum(dim=0))

    sync(device)
    t1 = time.perf_counter()
    for concept_rows, guide_rows in pairs:
        add_prompt(concept_rows, guide_rows @ w0.T, erase_scale)  # target: this layer's output for the guide
    sync(device)
    t2 = time.perf_counter()
    for rows in preserve:
        add_prompt(rows, rows @ w0.T, preserve_scale)
    sync(device)
    t3 = time.perf_counter()
    delta = mat1 @ torch.inverse(mat2) - w0
    sync(device)
    t4 = time.perf_counter()
    timing.edit_seconds += t2 - t1
    timing.edit_prompts += len(pairs)
    timing.preserve_seconds += t3 - t2
    timing.preserve_prompts += len(preserve)
    timing.fixed_seconds += (t1 - t0) + (t4 - t3)
    return delta


def _first_prompt_rows(pairs, preserve) -> int:
    if len(pairs):
        return pairs[0][0].shape[0]
    return preserve[0].shape[0] if len(preserve) else 0


def _batch_buffers(w0: torch.Tensor, step: int, rows: int):
    """Where a prompt's outer products are split into row batches (only rows wider than SDXL's), two
    buffers [step, d_out, d] and [step, d, d] that every batch reuses, allocated and touched here.

    Fresh multi-GiB temporaries per batch would add page faults to the timing, and how many depends on
    the allocator's state (SD3.5-large prompts measured 3.6 to 9 s each); reusing them times the
    arithmetic and memory traffic only, as a caching allocator on a GPU would.
    """
    if rows <= step:
        return None
    d_out, width = w0.shape
    return (
        torch.zeros(step, d_out, width, device=w0.device, dtype=torch.float32),
        torch.zeros(step, width, width, device=w0.device, dtype=torch.float32),
    )


def outer_batch_rows(d_out: int, width: int) -> int:
    """Rows per batch of outer products: all of a prompt's rows unless [rows, d, d] would exceed
    OUTER_ELEMENTS (never for SD1.5 / SDXL; 32 rows of Flux's or SD3's 4096-wide rows)."""
    return max(1, OUTER_ELEMENTS // (width * max(d_out, width)))


def reference_prompt_seconds(d_out: int, width: int, device, rows: int = 77) -> float:
    """Time of one prompt in the reference's loop body for a layer of this shape (a short probe)."""
    key = (d_out, width, str(device), rows)
    if key not in _probe_cache:
        gen = torch.Generator(device=device).manual_seed(0)
        w0 = torch.randn(d_out, width, generator=gen, device=device)
        c = torch.randn(rows, width, generator=gen, device=device)
        reference_layer(w0, [], [c], 1.0, 1.0, 0.5)  # warm-up
        timing = ReferenceTiming()
        reference_layer(w0, [], [c, c], 1.0, 1.0, 0.5, timing)
        _probe_cache[key] = timing.preserve_seconds / 2
    return _probe_cache[key]


_probe_cache: dict = {}


@dataclass
class GemmTiming:
    """Phases of one GEMM-baseline layer; ``fraction`` of the rows went into the sums."""

    sums_seconds: float = 0.0
    fixed_seconds: float = 0.0  # inverse and final product
    fraction: float = 1.0

    def extrapolate(self) -> float:
        return self.sums_seconds / self.fraction + self.fixed_seconds


def gemm_layer(
    w0: torch.Tensor,
    concept: torch.Tensor,
    guide: torch.Tensor,
    preserve: Optional[torch.Tensor],
    erase_scale: float,
    preserve_scale: float,
    lamb: float,
    timing: Optional[GemmTiming] = None,
) -> torch.Tensor:
    """ΔW of one layer with one GEMM per sum (C, G: aligned edit rows [m, d]; P: [n, d]), float32."""
    device = w0.device
    sync(device)
    t0 = time.perf_counter()
    w0 = w0.float()
    values = guide @ w0.T
    mat1 = lamb * w0 + erase_scale * (values.T @ concept)
    mat2 = erase_scale * (concept.T @ concept)
    mat2.diagonal().add_(lamb)
    if preserve is not None and preserve.shape[0]:
        mat1 += preserve_scale * ((preserve @ w0.T).T @ preserve)
        mat2 += preserve_scale * (preserve.T @ preserve)
    sync(device)
    t1 = time.perf_counter()
    delta = mat1 @ torch.inverse(mat2) - w0
    sync(device)
    if timing is not None:
        timing.sums_seconds += t1 - t0
        timing.fixed_seconds += time.perf_counter() - t1
    return delta


def gemm_flops(rows: int, d_out: int, width: int) -> float:
    """Multiply-adds x 2 of the sums of one GEMM-baseline layer over ``rows`` rows."""
    return 2.0 * rows * (2 * d_out * width + width * width)


def matmul_flops_per_second(device, dtype=torch.float32) -> float:
    """A short probe of this device's GEMM throughput (cached)."""
    key = (str(device), dtype)
    if key not in _probe_cache:
        a = torch.randn(4096, 768, device=device, dtype=dtype)
        a.T @ a
        sync(device)
        start = time.perf_counter()
        for _ in range(3):
            a.T @ a
        sync(device)
        _probe_cache[key] = 3 * 2.0 * 4096 * 768 * 768 / (time.perf_counter() - start)
    return _probe_cache[key]


@dataclass
class ExactSolution:
    """ΔW = W0 K M⁻¹ - W0 with K = λI + s_e GᵀC + s_p PᵀP and M = λI + s_e CᵀC + s_p PᵀP, float64.

    (For replacement erasing, mat1 = λW0 + s_e Σ (W0 g) cᵀ + s_p Σ (W0 p) pᵀ = W0 K.)
    """

    right: torch.Tensor  # K M⁻¹, [d, d] float64
    seconds: float = field(default=0.0)

    @classmethod
    def build(cls, concept, guide, preserve_gram, erase_scale, preserve_scale, lamb) -> "ExactSolution":
        """``preserve_gram``: Σ p pᵀ over all preserve rows in float64 (see :func:`cross64`), or None."""
        device = concept.device
        sync(device)
        start = time.perf_counter()
        k = cross64(guide, concept).mul_(erase_scale)
        m = cross64(concept, concept).mul_(erase_scale)
        if preserve_gram is not None:
            k.add_(preserve_gram, alpha=preserve_scale)
            m.add_(preserve_gram, alpha=preserve_scale)
        k.diagonal().add_(lamb)
        m.diagonal().add_(lamb)
        right = k @ torch.inverse(m)
        sync(device)
        return cls(right, time.perf_counter() - start)

    def delta(self, w0: torch.Tensor) -> torch.Tensor:
        w0 = w0.to(self.right.device, torch.float64)
        return w0 @ self.right - w0


def cross64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """aᵀ b in float64, in row chunks (memory stays flat)."""
    out = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64, device=a.device)
    for start in range(0, a.shape[0], CHUNK_ROWS):
        out.addmm_(a[start : start + CHUNK_ROWS].double().T, b[start : start + CHUNK_ROWS].double())
    return out
