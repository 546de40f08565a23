"""DiT cases: the solver on the Flux.1, SD3.5-large, WAN 2.2-14B and HiDream I1 text maps, and Flux / SD3 end to end.

Solver cases erase the paper's artist sets toward "art" (paper token mode, the paper's preserve
list) on the maps that first read text: Flux.1 ``txt_in`` (256 T5 rows per prompt) and
``vector_in.in_layer`` (the CLIP-L pooled vector); SD3.5-large ``context_embedder`` (77 CLIP-L|G rows
zero-padded to 4096, then 77 T5 rows) and ``y_embedder.mlp.0`` (the pooled vector); WAN 2.2-14B's 80
cross-attention ``k`` / ``v`` weights, which all read the same 512 rows per prompt (UMT5 rows through
the model's text MLP: after EOS one constant row, the MLP of zero padding); HiDream I1's 49
``caption_projection.N.linear`` weights, which read 33 row sources (32 Llama-3.1 hidden layers and the
T5 rows, 128 rows per prompt each), measured on three of them (the T5 source, Llama layer 0 with one
map, Llama layer 31 with 17) and extrapolated to all 33 (``full_model``). Rows are
synthetic (one ``workload.RowFactory`` per text-encoder segment); prompts are built from
``Segment``s and aligned by ``uce_solver.erase_edit``. Preserve rows are made chunk by chunk and
streamed into the solver, never all held. Edits larger than the memory budget are cut to the largest
concept count that fits. The naive reference is timed on a subsample of prompts and extrapolated
(``solver_cases.reference_baseline``); a check case runs it, and the float64 closed form, in full (on
one weight of a many-weight map, and the float64 comparison on its first and last blocks' weights).
End to end: the edit runner on the tiny Flux and SD3 models of ``uce_devtools.tiny_t5_families``.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

import psutil
import torch

from . import e2e_cases, reference, solver_cases, workload
from . import shapes as shapes_mod
from .measure import PeakMemory, median_time, relative_difference, sync, timed

T5, CLIP, POOLED, LLAMA = "t5", "clip", "pooled", "llama"
# Last content token of a segment: (lowest, highest) for concept prompts, and for the guide "art".
# LLAMA: ComfyUI's Llama-3 rows [BOS, tokens, pad …] (no EOS): the last token sits at 1 … 6, "art" at 1.
CONCEPT_LASTS = {T5: (1, 7), CLIP: (1, 6), POOLED: (0, 0), LLAMA: (1, 6)}
GUIDE_LAST = {T5: 0, CLIP: 1, POOLED: 0, LLAMA: 1}
CONCEPT_STREAM, GUIDE_STREAM, PRESERVE_STREAM = 1, 2, 3
STREAM_ROWS = 8192  # preserve rows per streamed chunk
BUILD_PROMPTS = 64  # concept prompts generated at a time
MEMORY_FRACTION = 0.8  # of the memory available when a case starts
KEEP_DELTAS_BYTES = 256 << 20  # larger solutions keep only the updates compared after the solve
ERASE_SCALE, LAMB = solver_cases.ERASE_SCALE, solver_cases.LAMB


@dataclass(frozen=True)
class RowSegment:
    """The rows one text encoder adds to a prompt: ``slots`` rows, a last-token ``rule``, and
    ``columns`` non-zero leading columns (None: all; SD3's CLIP rows fill 2048 of 4096).

    ``constant_padding``: the rows after EOS (the row after the last content token) are one constant
    row, the same for every prompt (WAN: UMT5 rows zero-padded to 512, then the model's text MLP, so
    every padding row is MLP(0)); otherwise every slot is its own synthetic row."""

    slots: int
    rule: str
    columns: Optional[int] = None
    constant_padding: bool = False


@dataclass(frozen=True)
class TextMap:
    """Weights [d_out, width] that read text rows laid out as ``segments``: ``key`` alone, or every
    key of ``layer_keys`` (WAN: the 80 cross-attention k / v weights, one row source, one solve).

    ``stands_for``: how many row sources of the full model this one is timed for (each with the same
    weights, row layout and widths; HiDream: Llama layer 0's one map stands for layers 0 … 30), so the
    model's full solve is extrapolated as Σ stands_for × this map's time (``full_model``).
    ``seed``: of its synthetic rows (distinct row sources of one model get distinct rows)."""

    label: str
    key: str
    d_out: int
    width: int
    segments: tuple[RowSegment, ...]
    layer_keys: tuple[str, ...] = ()
    stands_for: int = 1
    seed: int = 0

    @property
    def slots(self) -> int:
        return sum(s.slots for s in self.segments)

    @property
    def keys(self) -> tuple[str, ...]:
        return self.layer_keys or (self.key,)

    @property
    def layers(self) -> int:
        return len(self.keys)

    def shapes(self, model: str) -> shapes_mod.ModelShapes:
        return shapes_mod.ModelShapes(f"{model} {self.label}", self.width, tuple((k, self.d_out) for k in self.keys))


@dataclass(frozen=True)
class DitModel:
    """``preserve_limit``: at most this many prompts of the paper's preserve list (its first ones).
    ``exact_at_scale``: on the CPU, also compare the smallest concept count's case with the float64
    closed form (False where that is one more full preserve Gram of many minutes: the check case does)."""

    name: str
    maps: tuple[TextMap, ...]
    preserve_limit: Optional[int] = None
    exact_at_scale: bool = True

    @property
    def extrapolated(self) -> bool:
        """Some maps stand for several row sources: the model's full solve is extrapolated (``full_model``)."""
        return any(m.stands_for > 1 for m in self.maps)


FLUX = DitModel(
    "Flux.1",
    (
        TextMap("txt_in", "diffusion_model.txt_in.weight", 3072, 4096, (RowSegment(256, T5),)),
        TextMap("vector_in", "diffusion_model.vector_in.in_layer.weight", 3072, 768, (RowSegment(1, POOLED),)),
    ),
)
SD35_LARGE = DitModel(
    "SD3.5-large",
    (
        TextMap(
            "context_embedder",
            "diffusion_model.context_embedder.weight",
            2432,
            4096,
            (RowSegment(77, CLIP, 2048), RowSegment(77, T5)),
        ),
        TextMap("y_embedder", "diffusion_model.y_embedder.mlp.0.weight", 2432, 2048, (RowSegment(1, POOLED),)),
    ),
)


def _wan_keys(blocks: int) -> tuple[str, ...]:
    return tuple(f"diffusion_model.blocks.{n}.cross_attn.{p}.weight" for n in range(blocks) for p in ("k", "v"))


# WAN 2.2 T2V-A14B (and 2.1 14B): 40 blocks whose cross_attn.k / .v [5120, 5120] (with bias) read the rows
# of text_embedding (Linear 4096->5120, GELU, Linear 5120->5120) applied to 512 UMT5-XXL rows
# ([tokens, EOS, zero padding], no BOS, no mask). The preserve list: 1,000 prompts.
WAN_PRESERVE = 1000
WAN = DitModel(
    "WAN 2.2-14B",
    (
        TextMap(
            "cross_attn k/v",
            _wan_keys(40)[0],
            5120,
            5120,
            (RowSegment(512, T5, constant_padding=True),),
            layer_keys=_wan_keys(40),
        ),
    ),
    preserve_limit=WAN_PRESERVE,
    exact_at_scale=False,
)


def _hidream_key(block: int) -> str:
    return f"diffusion_model.caption_projection.{block}.linear.weight"


# HiDream I1 (full / dev / fast): 48 blocks (16 double + 32 single). caption_projection.N.linear [2560, 4096]
# (no bias) reads Llama-3.1-8B hidden layer llama_layers[N], llama_layers = [0 … 31, then 31 sixteen more
# times]; caption_projection.48 reads the T5-XXL rows: 33 row sources (one Gram and one factorisation each),
# 49 maps. Llama rows: BOS, the prompt, padding to 128 (causal, so every padding row depends on the prompt);
# T5 rows: tokens, EOS, padding to 128 (T5 masks padding inside, so those rows vary too); all are read.
# Measured here: the T5 source, Llama layer 0 (1 map; stands for layers 0 … 30, each read by one
# projection) and Llama layer 31 (17 maps); the full solve is T5 + 31 × layer 0 + layer 31.
HIDREAM_LLAMA_LAYERS = tuple(range(32)) + (31,) * 16
HIDREAM_PRESERVE = 1000


def _hidream_maps(width: int, d_out: int, slots: int, llama_layers: tuple[int, ...]) -> tuple[TextMap, ...]:
    """The T5 source, the first Llama layer (standing for every layer read by one projection) and the last
    Llama layer with all the projections that read it."""
    last = llama_layers[-1]
    blocks = [n for n, layer in enumerate(llama_layers) if layer == last]
    single = sum(1 for layer in set(llama_layers) if llama_layers.count(layer) == 1)
    assert llama_layers.count(llama_layers[0]) == 1 and set(llama_layers) == set(range(last + 1))
    span = f"{blocks[0]}–{blocks[-1]}" if len(blocks) > 1 else f"{blocks[0]}"
    return (
        TextMap(
            f"caption_projection.{len(llama_layers)} (T5)",
            _hidream_key(len(llama_layers)),
            d_out,
            width,
            (RowSegment(slots, T5),),
            seed=1,
        ),
        TextMap(
            "caption_projection.0 (Llama layer 0)",
            _hidream_key(0),
            d_out,
            width,
            (RowSegment(slots, LLAMA),),
            stands_for=single,
            seed=2,
        ),
        TextMap(
            f"caption_projection.{span} (Llama layer {last})",
            _hidream_key(blocks[0]),
            d_out,
            width,
            (RowSegment(slots, LLAMA),),
            layer_keys=tuple(_hidream_key(n) for n in blocks),
            seed=3,
        ),
    )


HIDREAM = DitModel(
    "HiDream I1",
    _hidream_maps(4096, 2560, 128, HIDREAM_LLAMA_LAYERS),
    preserve_limit=HIDREAM_PRESERVE,
    exact_at_scale=True,  # one more 4096-wide float64 Gram over 128,000 rows per measured source (~1 min on 2 cores)
)
TINY_FLUX = DitModel(
    "tiny Flux-like",
    (
        TextMap("txt_in", FLUX.maps[0].key, 48, 64, (RowSegment(16, T5),)),
        TextMap("vector_in", FLUX.maps[1].key, 48, 32, (RowSegment(1, POOLED),)),
    ),
)
TINY_SD3 = DitModel(
    "tiny SD3-like",
    (
        TextMap("context_embedder", SD35_LARGE.maps[0].key, 40, 64, (RowSegment(8, CLIP, 32), RowSegment(8, T5))),
        TextMap("y_embedder", SD35_LARGE.maps[1].key, 40, 32, (RowSegment(1, POOLED),)),
    ),
)
TINY_WAN = DitModel(
    "tiny WAN-like",
    (
        TextMap(
            "cross_attn k/v",
            _wan_keys(4)[0],
            48,
            64,
            (RowSegment(24, T5, constant_padding=True),),
            layer_keys=_wan_keys(4),
        ),
    ),
    preserve_limit=40,
    exact_at_scale=False,
)
# 6 blocks on 4 Llama layers [0, 1, 2, 3, 3, 3] and the T5 rows: 5 row sources, 7 maps (3 sources measured).
TINY_HIDREAM = DitModel(
    "tiny HiDream-like",
    _hidream_maps(64, 40, 16, (0, 1, 2, 3, 3, 3)),
    preserve_limit=40,
    exact_at_scale=False,
)


@dataclass(frozen=True)
class DitCase:
    model: DitModel
    concepts: int  # asked for; fewer run when the edit does not fit ``memory_bytes``
    preserve: Optional[int] = None  # preserve prompts incl. ""; None: the paper's list for ``concepts``
    check: bool = False  # run the reference on every prompt and compare everything with float64
    exact: bool = False  # compare the fast solve with the float64 closed form (always on pooled maps)
    memory_bytes: Optional[int] = None  # None: MEMORY_FRACTION of the memory available at the start

    @property
    def name(self) -> str:
        plural = "s" if self.concepts != 1 else ""
        if self.check:
            return f"{self.model.name}, check: {self.concepts} concept{plural} + {self.preserve} preserve prompts"
        return f"{self.model.name}, {self.concepts:,} concept{plural}"


# ---------------------------------------------------------------- rows


class MapRows:
    """Deterministic synthetic prompts of one text map: a RowFactory per segment, zero-padded columns;
    segments with ``constant_padding`` repeat one row (per segment, the same in every prompt) after EOS."""

    def __init__(self, text_map: TextMap, device, seed: int = 0):
        self.map = text_map
        self.device = device
        self.factories = [
            workload.RowFactory(seg.columns or text_map.width, device, seed + text_map.seed + 17 * i, seg.slots)
            for i, seg in enumerate(text_map.segments)
        ]
        self.padding_rows = [
            self._padding_row(factory) if seg.constant_padding else None
            for seg, factory in zip(text_map.segments, self.factories)
        ]
        self._lasts: dict[int, list[list[int]]] = {}  # per stream, per segment, the prompts' last tokens

    @staticmethod
    def _padding_row(factory: workload.RowFactory) -> torch.Tensor:
        """The constant padding row (a text MLP's output for a zero row): a fixed direction, the rows' norm."""
        gen = torch.Generator(device=factory.device).manual_seed(factory.seed * 1000 + 999)
        row = torch.randn(factory.width, generator=gen, device=factory.device)
        return row.mul_(factory.norm / row.norm())

    def rows(self, indices, stream: int) -> torch.Tensor:
        """Rows [len(indices), slots, width] of these prompts of ``stream`` (the same for any chunking)."""
        out = torch.zeros(len(indices), self.map.slots, self.map.width, device=self.device)
        start = 0
        for s, (seg, factory) in enumerate(zip(self.map.segments, self.factories)):
            view = out[:, start : start + seg.slots, : factory.width]
            if seg.constant_padding:
                # The prompt's tokens and EOS are drawn; every later slot is the padding row.
                lengths = [min(seg.slots, self._last(stream, index, s) + 2) for index in indices]
                factory.prompt_rows(indices, stream, view, lengths)
                for j, length in enumerate(lengths):
                    view[j, length:] = self.padding_rows[s]
            else:
                factory.prompt_rows(indices, stream, view)
            start += seg.slots
        return out

    def _last(self, stream: int, index: int, segment: int) -> int:
        if stream == GUIDE_STREAM:
            return self.guide_lasts()[segment]
        return self._stream_lasts(stream, index)[segment]

    def _stream_lasts(self, stream: int, index: int) -> tuple[int, ...]:
        """Per segment, the last content token of prompt ``index`` of a concept or preserve stream."""
        lasts = self._lasts.get(stream)
        if lasts is None or index >= len(lasts[0]):
            count = max(workload.PAPER_ARTISTS + 1, 2 * index + 1)
            lasts = self._lasts[stream] = [
                factory.lasts(count, *CONCEPT_LASTS[seg.rule], stream=stream)
                for seg, factory in zip(self.map.segments, self.factories)
            ]
        return tuple(segment_lasts[index] for segment_lasts in lasts)

    def concept_lasts(self, index: int) -> tuple[int, ...]:
        """Per segment, the last content token of concept prompt ``index``."""
        return self._stream_lasts(CONCEPT_STREAM, index)

    def guide_lasts(self) -> tuple[int, ...]:
        return tuple(GUIDE_LAST[seg.rule] for seg in self.map.segments)

    def segments(self, solver, lasts: tuple[int, ...]) -> list:
        out, start = [], 0
        for seg, last in zip(self.map.segments, lasts):
            out.append(solver.Segment(start, start + seg.slots, last))
            start += seg.slots
        return out

    def edit_rows(self, concepts: int) -> int:
        """Aligned edit rows of the first ``concepts`` concepts in paper mode (before building them)."""
        guide = self.guide_lasts()
        return sum(
            seg.slots - max(c, g)
            for i in range(concepts)
            for seg, c, g in zip(self.map.segments, self.concept_lasts(i), guide)
        )


class PreserveStream:
    """The preserve prompts' rows as chunks [≤ STREAM_ROWS, width], made while the solver consumes them.

    ``seconds`` is the time spent making rows (taken out of the solve's time).
    """

    def __init__(self, source: MapRows, count: int):
        self.source = source
        self.count = count
        self.seconds = 0.0

    def __iter__(self):
        per_chunk = max(1, STREAM_ROWS // self.source.map.slots)
        for start in range(0, self.count, per_chunk):
            sync(self.source.device)
            began = time.perf_counter()
            chunk = self.source.rows(range(start, min(self.count, start + per_chunk)), PRESERVE_STREAM)
            sync(self.source.device)
            self.seconds += time.perf_counter() - began
            yield chunk.reshape(-1, self.source.map.width)
            del chunk


class PreservePrompts(Sequence):
    """Preserve prompt i's rows, made on access (the reference's per-prompt loop; subsamples hold few)."""

    def __init__(self, source: MapRows, count: int):
        self.source = source
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.source.rows([index], PRESERVE_STREAM)[0]


# ---------------------------------------------------------------- memory


def available_bytes(device) -> int:
    """Memory free for new tensors now: CUDA free memory, or what the OS reports as available."""
    if torch.device(device).type == "cuda":
        return torch.cuda.mem_get_info(torch.device(device))[0]
    return psutil.virtual_memory().available


def solve_copy_bytes(solver, device) -> float:
    """Bytes ``solver.solve`` adds per element of a dense edit's rows beyond C and G themselves (about 17
    when it converts C and G to float64 whole, less when it streams them): the growth of its peak memory
    between probe edits of PROBE_ROWS and twice as many rows, times COPY_MARGIN (cached per device)."""
    key = str(device)
    if key not in _copy_bytes:
        small, large = (_probe_solve_bytes(solver, device, rows) for rows in (PROBE_ROWS, 2 * PROBE_ROWS))
        _copy_bytes[key] = COPY_MARGIN * max(0.0, (large - small) / (PROBE_ROWS * PROBE_WIDTH))
    return _copy_bytes[key]


def _probe_solve_bytes(solver, device, rows: int) -> int:
    gen = torch.Generator(device=device).manual_seed(0)
    inputs = torch.randn(rows, PROBE_WIDTH, generator=gen, device=device)
    guides = torch.randn(rows, PROBE_WIDTH, generator=gen, device=device)
    edit = solver.EditRows(inputs, solver.GuideTargets(guides), ("probe",), (rows,))
    weights = {"probe": torch.randn(64, PROBE_WIDTH, generator=gen, device=device)}
    gc.collect()
    with PeakMemory(device) as peak:
        solver.solve(weights, edit, None, solver.Scales())
    return peak.bytes


PROBE_ROWS, PROBE_WIDTH = 65536, 256
COPY_MARGIN = 1.25  # CPU peaks come from RSS and read 13-16 where 17 is allocated
_copy_bytes: dict[str, float] = {}


def needed_bytes(solver, text_map: TextMap, concepts: int, edit_rows: int, copy_bytes: float) -> int:
    """Estimated memory of building, solving and timing the reference on an edit of this size.

    Building: the concept prompts' rows plus the aligned C and G (float32). Solving: C and G, what the
    solver adds per edit-row element (``copy_bytes`` for a dense update; 24 for a low-rank one, whose
    factor needs C^T and its solution in float64), d x d float64 matrices, a streamed chunk twice, one
    weight in float32 and every weight's update as solved (float32; 80 dense [5120, 5120] for WAN).
    Reference: C and G, its batch buffers of outer products and its d x d matrices.
    """
    m, d = edit_rows, text_map.width
    held = 8 * m * d
    build = 4 * concepts * text_map.slots * d + held
    low_rank = solver.prefers_low_rank(m, text_map.d_out, d)
    per_element = 24 if low_rank else copy_bytes
    weight = 4 * text_map.d_out * d
    deltas = 4 * (text_map.layers * text_map.d_out * m + m * d) if low_rank else text_map.layers * weight
    solve = held + int(per_element * m * d) + 4 * 8 * d * d + 12 * STREAM_ROWS * d + weight + deltas
    batch = min(text_map.slots, reference.outer_batch_rows(text_map.d_out, d))
    ref = held + 4 * batch * d * (d + text_map.d_out) + 12 * d * (d + text_map.d_out)
    return max(build, solve, ref)


def fitted_concepts(solver, sources: dict, requested: int, budget: int, copy_bytes: float) -> int:
    """The largest concept count ≤ ``requested`` whose edit fits ``budget`` bytes on every map (at least 1)."""

    def fits(count: int) -> bool:
        return all(
            needed_bytes(solver, rows.map, count, rows.edit_rows(count), copy_bytes) <= budget
            for rows in sources.values()
        )

    count = requested
    while count > 1 and not fits(count):
        count = max(1, min(count - 1, int(count * 0.98)))
    while count < requested and fits(count + 1):
        count += 1
    return count


def model_needed_bytes(solver, model: DitModel, concepts: int, device) -> int:
    """Estimated memory of the largest map's edit for ``concepts`` concepts (see needed_bytes)."""
    copy_bytes = solve_copy_bytes(solver, device)
    sources = [MapRows(m, device) for m in model.maps]
    return max(needed_bytes(solver, rows.map, concepts, rows.edit_rows(concepts), copy_bytes) for rows in sources)


# ---------------------------------------------------------------- solver cases


class LazyWeights(Mapping):
    """Random fp16-valued weights ~ N(0, 1/d), each made in float32 on access from its own seed and not
    kept (as the node's EffectiveWeights computes each weight when the solver reads it), so 80
    [5120, 5120] weights are never all held. ``seconds``: time spent making them (taken out of the solve's)."""

    def __init__(self, shapes: shapes_mod.ModelShapes, device, seed: int = 0):
        self.shapes = {key: (d_out, shapes.width) for key, d_out in shapes.layers}
        self.index = {key: i for i, key in enumerate(self.shapes)}
        self.device = device
        self.seed = seed
        self.seconds = 0.0

    def __getitem__(self, key: str) -> torch.Tensor:
        d_out, width = self.shapes[key]
        sync(self.device)
        began = time.perf_counter()
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + self.index[key])
        weight = (torch.randn(d_out, width, generator=gen, device=self.device) / width**0.5).half().float()
        sync(self.device)
        self.seconds += time.perf_counter() - began
        return weight

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def make_weights(text_map: TextMap, map_shapes: shapes_mod.ModelShapes, device):
    """Float32 weights: held when the map has one weight, else made on access (LazyWeights)."""
    if text_map.layers > 1:
        return LazyWeights(map_shapes, device)
    return {k: w.float() for k, w in shapes_mod.random_weights(map_shapes, device).items()}


def compared_keys(text_map: TextMap) -> list[str]:
    """The weights compared with the float64 closed form: all, or the first and last blocks' two each."""
    keys = list(text_map.keys)
    return keys if len(keys) <= 4 else keys[:2] + keys[-2:]


@dataclass(frozen=True)
class _BaselineInputs:
    """What solver_cases.reference_baseline reads of a case's inputs."""

    scales: object
    pairs: list
    preserve_list: Sequence
    weights: dict


@dataclass(frozen=True)
class _BaselineCase:
    shapes: shapes_mod.ModelShapes
    concepts: int


class _LazyExact:
    """The float64 closed form, built on first use (it streams every preserve row once more)."""

    def __init__(self, edit, source: MapRows, preserve: int, scales):
        self._args = (edit, source, preserve, scales)
        self.solution: Optional[reference.ExactSolution] = None

    def delta(self, w0: torch.Tensor) -> torch.Tensor:
        if self.solution is None:
            edit, source, preserve, scales = self._args
            gram = None
            for chunk in PreserveStream(source, preserve):
                part = reference.cross64(chunk, chunk)
                gram = part if gram is None else gram.add_(part)
            self.solution = reference.ExactSolution.build(
                edit.inputs, edit.targets.guide_rows, gram, scales.erase, scales.preserve, scales.lamb
            )
        return self.solution.delta(w0)


def run_case(solver, case: DitCase, device, budget: solver_cases.Budget) -> dict:
    """Every text map of ``case.model``, solved for the same concepts and preserve prompts."""
    if case.preserve is not None:
        preserve, source = case.preserve, "check case" if case.check else "given count"
    else:
        preserve, source = workload.preserve_count(case.concepts)
        limit = case.model.preserve_limit
        if limit is not None and preserve > limit:
            preserve, source = limit, f"the first {limit:,} of {preserve:,} ({source})"
    sources = {m.label: MapRows(m, device) for m in case.model.maps}
    copy_bytes = solve_copy_bytes(solver, device)
    memory = case.memory_bytes or int(MEMORY_FRACTION * available_bytes(device))
    concepts = fitted_concepts(solver, sources, case.concepts, memory, copy_bytes)
    result = {
        "case": case.name,
        "model": case.model.name,
        "check": case.check,
        "concepts_requested": case.concepts,
        "concepts": concepts,
        "preserve_prompts": preserve,
        "preserve_source": source,
        "memory_budget_bytes": memory,
        "memory_budget_source": "given" if case.memory_bytes else f"{MEMORY_FRACTION:.0%} of available memory",
        "solve_copy_bytes": copy_bytes,
        "maps": [],
    }
    for text_map in case.model.maps:
        rows = sources[text_map.label]
        wanted = rows.edit_rows(case.concepts)
        entry = _run_map(solver, case, rows, concepts, preserve, device, budget, copy_bytes)
        entry["requested"] = {
            "edit_rows": wanted,
            "edit_bytes": 8 * wanted * text_map.width,
            "needed_bytes": needed_bytes(solver, text_map, case.concepts, wanted, copy_bytes),
        }
        result["maps"].append(entry)
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    if case.model.extrapolated:
        result["full_model"] = full_model(case.model, result["maps"])
    return result


def full_model(model: DitModel, entries: list[dict]) -> dict:
    """The model's whole edit extrapolated from the measured maps: each map's times (fast solve, making the
    rows and weights, the naive reference) counted ``stands_for`` times, the row sources solved one after
    another (peak: the largest measured source's)."""
    stands = {m.label: m.stands_for for m in model.maps}

    def total(value) -> float:
        return sum(stands[e["map"]] * value(e) for e in entries)

    fast = total(lambda e: e["fast"]["seconds"])
    ref = total(lambda e: e["reference"]["seconds"])
    return {
        "sources": sum(m.stands_for for m in model.maps),
        "maps": sum(m.stands_for * m.layers for m in model.maps),
        "measured_sources": len(model.maps),
        "measured_maps": sum(m.layers for m in model.maps),
        "formula": " + ".join(f"{m.stands_for} × {m.label}" if m.stands_for > 1 else m.label for m in model.maps),
        "fast_seconds": fast,
        "fast_measured_seconds": sum(e["fast"]["seconds"] for e in entries),
        "making_seconds": total(lambda e: e["fast"]["row_seconds"] + e["fast"].get("weight_seconds", 0.0)),
        "edit_rows": total(lambda e: e["edit_rows"]),
        "preserve_rows": total(lambda e: e["preserve_rows"]),
        "reference_seconds": ref,
        "speedup": ref / fast,
        "peak_bytes": max(e["memory"]["peak_bytes"] for e in entries),
    }


def build_edit(solver, rows: MapRows, concepts: int):
    """Erase ``concepts`` synthetic concept prompts toward the guide "art" (paper token mode)."""
    guide = solver.EncodedPrompt(
        "art", rows.rows([0], GUIDE_STREAM)[0], segments=rows.segments(solver, rows.guide_lasts())
    )
    pairs = []
    for start in range(0, concepts, BUILD_PROMPTS):
        block = rows.rows(range(start, min(concepts, start + BUILD_PROMPTS)), CONCEPT_STREAM)
        for j, prompt_rows in enumerate(block):
            segments = rows.segments(solver, rows.concept_lasts(start + j))
            pairs.append((solver.EncodedPrompt(f"concept {start + j}", prompt_rows, segments=segments), guide))
    return solver.erase_edit(pairs, "paper")


def edit_pairs(edit) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(concept rows, aligned guide rows) of each edited prompt: views into the edit."""
    pairs, start = [], 0
    for size in edit.block_sizes:
        pairs.append((edit.inputs[start : start + size], edit.targets.guide_rows[start : start + size]))
        start += size
    return pairs


def _run_map(
    solver, case: DitCase, rows: MapRows, concepts: int, preserve: int, device, budget, copy_bytes: float
) -> dict:
    text_map = rows.map
    map_shapes = text_map.shapes(case.model.name)
    edit = build_edit(solver, rows, concepts)
    scales = solver.Scales(erase=ERASE_SCALE, preserve=max(0.1, 1.0 / preserve) if preserve else 1.0, lamb=LAMB)
    weights = make_weights(text_map, map_shapes, device)
    solution, fast = fast_solve(solver, weights, edit, rows, preserve, scales, device, budget.repeats)
    delta = solution.deltas[text_map.key]
    deltas_bytes = solver.storage_bytes(solution.deltas.values())
    compared = compared_keys(text_map)
    if deltas_bytes > KEEP_DELTAS_BYTES:
        # Keep only the updates compared below (80 dense WAN updates are 8 GiB), then time the reference.
        kept = {k: solution.deltas[k] for k in dict.fromkeys([*map_shapes.representatives(), *compared])}
        solution = solver.Solution(deltas=kept, edit_rows=solution.edit_rows, preserve_rows=solution.preserve_rows)
        gc.collect()

    exact = _LazyExact(edit, rows, preserve, scales)
    fast_vs_exact = None
    if case.check or case.exact or text_map.segments[0].rule == POOLED:
        fast_vs_exact = max(relative_difference(solution.deltas[k].dense(), exact.delta(weights[k])) for k in compared)
    # Check cases: every prompt; the map's other weights too where they are estimated under rest_seconds.
    ref_budget = solver_cases.Budget(math.inf, budget.rest_seconds, 1) if case.check else budget
    inputs = _BaselineInputs(scales, edit_pairs(edit), PreservePrompts(rows, preserve), weights)
    ref = solver_cases.reference_baseline(
        inputs, _BaselineCase(map_shapes, concepts), device, ref_budget, solution, exact
    )
    ref["speedup"] = ref["seconds"] / fast["seconds"]
    ref["outer_batch_rows"] = reference.outer_batch_rows(text_map.d_out, text_map.width)
    return {
        "map": text_map.label,
        "key": text_map.key,
        "weights": text_map.layers,
        "stands_for": text_map.stands_for,
        "d_out": text_map.d_out,
        "width": text_map.width,
        "slots": text_map.slots,
        "segments": [
            f"{s.slots} {s.rule}"
            + (f" ({s.columns} columns)" if s.columns else "")
            + (", constant padding after EOS" if s.constant_padding else "")
            for s in text_map.segments
        ],
        "edit_rows": edit.count,
        "preserve_rows": preserve * text_map.slots,
        "scales": {"erase": scales.erase, "preserve": scales.preserve, "lamb": scales.lamb},
        "low_rank": isinstance(delta, solver.LowRankDelta),
        "fast": fast,
        "fast_vs_exact": fast_vs_exact,
        "exact_compared_weights": len(compared) if fast_vs_exact is not None else 0,
        "exact_compared_keys": compared if fast_vs_exact is not None else [],
        "reference": ref,
        "memory": {
            "edit_bytes": 8 * edit.count * text_map.width,
            "needed_bytes": needed_bytes(solver, text_map, concepts, edit.count, copy_bytes),
            "preserve_held_bytes": 4 * preserve * text_map.slots * text_map.width,
            "gram_bytes": 8 * text_map.width**2,
            "deltas_bytes": deltas_bytes,
            "weights_fp16_bytes": 2 * text_map.layers * text_map.d_out * text_map.width,
            "peak_bytes": fast["peak_bytes"],
            "peak_method": fast["peak_method"],
        },
    }


def fast_solve(solver, weights, edit, rows: MapRows, preserve: int, scales, device, repeats: int):
    """``uce_solver.solve`` with the preserve rows streamed; seconds exclude making the rows (and making
    LazyWeights' weights).

    Peak memory is measured over the first call (edit rows and held weights already resident).
    """
    streams: list[PreserveStream] = []
    weight_times: list[float] = []

    def solve():
        stream = PreserveStream(rows, preserve)
        streams.append(stream)
        before = getattr(weights, "seconds", 0.0)
        try:
            return solver.solve(weights, edit, stream, scales)
        finally:
            weight_times.append(getattr(weights, "seconds", 0.0) - before)

    gc.collect()
    with PeakMemory(device) as peak:
        first = timed(solve, device)
    solution, _, times = median_time(solve, device, repeats, first)
    making = [s.seconds for s in streams[-len(times) :]]
    weighting = weight_times[-len(times) :]
    net = [t - g - w for t, g, w in zip(times, making, weighting)]
    return solution, {
        "seconds": statistics.median(net),
        "times": net,
        "row_seconds": statistics.median(making),
        "weight_seconds": statistics.median(weighting),
        "peak_bytes": peak.bytes,
        "peak_method": peak.method,
    }


# ---------------------------------------------------------------- end to end


E2E_MODELS = (("tiny Flux.1", "flux"), ("tiny SD3", "sd3"))


def run_e2e(device: str, artists: int, preserve: int, families=("flux", "sd3")) -> list[dict]:
    """The edit runner on the tiny Flux and SD3 models (ComfyUI in-process), first and repeated run
    (only those of ``families``)."""
    names = [name for name, family in E2E_MODELS if family in families]
    if not names:
        return []
    try:
        from uce_devtools import comfy_env, tiny_t5_families

        comfy_env.import_comfyui(cpu=device == "cpu")
        pack = comfy_env.load_pack()
    except Exception as error:  # noqa: BLE001 - no ComfyUI: every case says why it was skipped
        reason = f"ComfyUI unavailable ({type(error).__name__}: {error})".replace("\n", " ")
        return [{"model": name, "skipped": reason} for name in names]
    out = []
    for name, family, build in (
        ("tiny Flux.1", "flux", tiny_t5_families.flux_model),
        ("tiny SD3", "sd3", tiny_t5_families.sd3_model),
    ):
        if name not in names:
            continue
        try:
            tiny = build()
            state = tiny.model.model.state_dict()
            result = e2e_cases.run_edit_twice(pack, tiny.model, tiny.clip, artists, preserve)
            result["model"] = name
            result["map_shapes"] = {
                key.removeprefix("diffusion_model.").removesuffix(".weight"): list(state[key].shape)
                for key in tiny_t5_families.text_map_keys(family)
            }
            out.append(result)
            del tiny, state
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            out.append({"model": name, "skipped": f"failed: {type(error).__name__}: {error}"})
        gc.collect()
    return out
