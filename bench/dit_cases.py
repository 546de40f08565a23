"""DiT cases: the solver on the Flux.1 and SD3.5-large text maps, and those families end to end.

Solver cases erase the paper's artist sets toward "art" (paper token mode, the paper's preserve
list) on the maps that first read text: Flux.1 ``txt_in`` (256 T5 rows per prompt) and
``vector_in.in_layer`` (the CLIP-L pooled vector); SD3.5-large ``context_embedder`` (77 CLIP-L|G rows
zero-padded to 4096, then 77 T5 rows) and ``y_embedder.mlp.0`` (the pooled vector). Rows are
synthetic (one ``workload.RowFactory`` per text-encoder segment); prompts are built from
``Segment``s and aligned by ``uce_solver.erase_edit``. Preserve rows are made chunk by chunk and
streamed into the solver, never all held. Edits larger than the memory budget are cut to the largest
concept count that fits. The naive reference is timed on a subsample of prompts and extrapolated
(``solver_cases.reference_baseline``); a check case runs it, and the float64 closed form, in full.
End to end: the edit runner on the tiny Flux and SD3 models of ``uce_devtools.tiny_t5_families``.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from . import e2e_cases, reference, solver_cases, workload
from . import shapes as shapes_mod
from .measure import PeakMemory, median_time, relative_difference, sync, timed

T5, CLIP, POOLED = "t5", "clip", "pooled"
# Last content token of a segment: (lowest, highest) for concept prompts, and for the guide "art".
CONCEPT_LASTS = {T5: (1, 7), CLIP: (1, 6), POOLED: (0, 0)}
GUIDE_LAST = {T5: 0, CLIP: 1, POOLED: 0}
CONCEPT_STREAM, GUIDE_STREAM, PRESERVE_STREAM = 1, 2, 3
STREAM_ROWS = 8192  # preserve rows per streamed chunk
BUILD_PROMPTS = 64  # concept prompts generated at a time
MEMORY_FRACTION = 0.8  # of the memory available when a case starts
ERASE_SCALE, LAMB = solver_cases.ERASE_SCALE, solver_cases.LAMB


@dataclass(frozen=True)
class RowSegment:
    """The rows one text encoder adds to a prompt: ``slots`` rows, a last-token ``rule``, and
    ``columns`` non-zero leading columns (None: all; SD3's CLIP rows fill 2048 of 4096)."""

    slots: int
    rule: str
    columns: Optional[int] = None


@dataclass(frozen=True)
class TextMap:
    """One weight [d_out, width] that reads text rows laid out as ``segments``."""

    label: str
    key: str
    d_out: int
    width: int
    segments: tuple[RowSegment, ...]

    @property
    def slots(self) -> int:
        return sum(s.slots for s in self.segments)

    def shapes(self, model: str) -> shapes_mod.ModelShapes:
        return shapes_mod.ModelShapes(f"{model} {self.label}", self.width, ((self.key, self.d_out),))


@dataclass(frozen=True)
class DitModel:
    name: str
    maps: tuple[TextMap, ...]


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
    """Deterministic synthetic prompts of one text map: a RowFactory per segment, zero-padded columns."""

    def __init__(self, text_map: TextMap, device, seed: int = 0):
        self.map = text_map
        self.device = device
        self.factories = [
            workload.RowFactory(seg.columns or text_map.width, device, seed + 17 * i, seg.slots)
            for i, seg in enumerate(text_map.segments)
        ]
        self._lasts: list[list[int]] = []  # per segment, the concept prompts' last tokens

    def rows(self, indices, stream: int) -> torch.Tensor:
        """Rows [len(indices), slots, width] of these prompts of ``stream`` (the same for any chunking)."""
        out = torch.zeros(len(indices), self.map.slots, self.map.width, device=self.device)
        start = 0
        for seg, factory in zip(self.map.segments, self.factories):
            factory.prompt_rows(indices, stream, out[:, start : start + seg.slots, : factory.width])
            start += seg.slots
        return out

    def concept_lasts(self, index: int) -> tuple[int, ...]:
        """Per segment, the last content token of concept prompt ``index``."""
        if not self._lasts or index >= len(self._lasts[0]):
            count = max(workload.PAPER_ARTISTS + 1, 2 * index + 1)
            self._lasts = [
                factory.lasts(count, *CONCEPT_LASTS[seg.rule], stream=CONCEPT_STREAM)
                for seg, factory in zip(self.map.segments, self.factories)
            ]
        return tuple(lasts[index] for lasts in self._lasts)

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
    """Memory free for new tensors now: CUDA free memory, or the OS's MemAvailable."""
    if torch.device(device).type == "cuda":
        return torch.cuda.mem_get_info(torch.device(device))[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 8 << 30


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
    factor needs C^T and its solution in float64), d x d float64 matrices, a streamed chunk twice.
    Reference: C and G, its batch buffers of outer products and its d x d matrices.
    """
    m, d = edit_rows, text_map.width
    held = 8 * m * d
    build = 4 * concepts * text_map.slots * d + held
    per_element = 24 if solver.prefers_low_rank(m, text_map.d_out, d) else copy_bytes
    solve = held + int(per_element * m * d) + 4 * 8 * d * d + 12 * STREAM_ROWS * d
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
    return result


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
    weights = {k: w.float() for k, w in shapes_mod.random_weights(map_shapes, device).items()}
    solution, fast = fast_solve(solver, weights, edit, rows, preserve, scales, device, budget.repeats)
    delta = solution.deltas[text_map.key]

    exact = _LazyExact(edit, rows, preserve, scales)
    fast_vs_exact = None
    if case.check or case.exact or text_map.segments[0].rule == POOLED:
        fast_vs_exact = relative_difference(delta.dense(), exact.delta(weights[text_map.key]))
    ref_budget = solver_cases.Budget(math.inf, math.inf, 1) if case.check else budget
    inputs = _BaselineInputs(scales, edit_pairs(edit), PreservePrompts(rows, preserve), weights)
    ref = solver_cases.reference_baseline(
        inputs, _BaselineCase(map_shapes, concepts), device, ref_budget, solution, exact
    )
    ref["speedup"] = ref["seconds"] / fast["seconds"]
    ref["outer_batch_rows"] = reference.outer_batch_rows(text_map.d_out, text_map.width)
    return {
        "map": text_map.label,
        "key": text_map.key,
        "d_out": text_map.d_out,
        "width": text_map.width,
        "slots": text_map.slots,
        "segments": [
            f"{s.slots} {s.rule}" + (f" ({s.columns} columns)" if s.columns else "") for s in text_map.segments
        ],
        "edit_rows": edit.count,
        "preserve_rows": preserve * text_map.slots,
        "scales": {"erase": scales.erase, "preserve": scales.preserve, "lamb": scales.lamb},
        "low_rank": isinstance(delta, solver.LowRankDelta),
        "fast": fast,
        "fast_vs_exact": fast_vs_exact,
        "reference": ref,
        "memory": {
            "edit_bytes": 8 * edit.count * text_map.width,
            "needed_bytes": needed_bytes(solver, text_map, concepts, edit.count, copy_bytes),
            "preserve_held_bytes": 4 * preserve * text_map.slots * text_map.width,
            "gram_bytes": 8 * text_map.width**2,
            "peak_bytes": fast["peak_bytes"],
            "peak_method": fast["peak_method"],
        },
    }


def fast_solve(solver, weights, edit, rows: MapRows, preserve: int, scales, device, repeats: int):
    """``uce_solver.solve`` with the preserve rows streamed; seconds exclude making the rows.

    Peak memory is measured over the first call (edit rows and weights already resident).
    """
    streams: list[PreserveStream] = []

    def solve():
        stream = PreserveStream(rows, preserve)
        streams.append(stream)
        return solver.solve(weights, edit, stream, scales)

    gc.collect()
    with PeakMemory(device) as peak:
        first = timed(solve, device)
    solution, _, times = median_time(solve, device, repeats, first)
    making = [s.seconds for s in streams[-len(times) :]]
    net = [t - g for t, g in zip(times, making)]
    return solution, {
        "seconds": statistics.median(net),
        "times": net,
        "row_seconds": statistics.median(making),
        "peak_bytes": peak.bytes,
        "peak_method": peak.method,
    }


# ---------------------------------------------------------------- end to end


def run_e2e(device: str, artists: int, preserve: int) -> list[dict]:
    """The edit runner on the tiny Flux and SD3 models (ComfyUI in-process), first and repeated run."""
    try:
        from uce_devtools import comfy_env, tiny_t5_families

        comfy_env.import_comfyui(cpu=device == "cpu")
        pack = comfy_env.load_pack()
    except Exception as error:  # noqa: BLE001 - no ComfyUI: every case says why it was skipped
        reason = f"ComfyUI unavailable ({type(error).__name__}: {error})".replace("\n", " ")
        return [{"model": name, "skipped": reason} for name in ("tiny Flux.1", "tiny SD3")]
    out = []
    for name, family, build in (
        ("tiny Flux.1", "flux", tiny_t5_families.flux_model),
        ("tiny SD3", "sd3", tiny_t5_families.sd3_model),
    ):
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
