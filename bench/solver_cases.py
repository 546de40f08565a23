"""Solver-only cases: the fast solver beside the naive reference and a naive-GEMM baseline.

Every case runs in this process on the same synthetic rows and the same random fp16 weights
(solved in float32, as the node reads them). Baselines too slow to run in full are timed on one
layer of each output width (and, where one such layer would exceed the budget, on a subset of the
prompts / rows) and extrapolated linearly; the result says exactly what was measured.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from typing import Optional

import torch

from . import reference, workload
from . import shapes as shapes_mod
from .measure import PeakMemory, median_time, relative_difference, timed

ERASE_SCALE = 1.0
LAMB = 0.5
MAX_CHECKED_WIDE_LAYERS = 8  # layers compared with the float64 closed form when d > 1024


@dataclass(frozen=True)
class SolverCase:
    shapes: shapes_mod.ModelShapes
    concepts: int
    preserve: bool
    mode: str = "paper"
    preserve_override: Optional[int] = None  # smoke: a small preserve count instead of the paper's
    baselines: bool = True  # False: fast solve and patch size only

    @property
    def name(self) -> str:
        kind = "paper preserve" if self.preserve else "no preserve"
        mode = "" if self.mode == "paper" else f", {self.mode}"
        return f"{self.shapes.name}, {self.concepts} concept{'s' if self.concepts != 1 else ''}, {kind}{mode}"


@dataclass(frozen=True)
class Budget:
    layer_seconds: float  # most seconds of one baseline layer before prompts/rows are subsampled
    rest_seconds: float  # run a baseline on all layers when the rest is estimated under this
    repeats: int
    # (model name, concepts) of cases whose reference also runs on all rows for one layer (slow)
    full_reference_layer: frozenset = frozenset()


class Inputs:
    """Encoded prompts, edit, preserve rows and weights of one case (all on the device)."""

    def __init__(self, solver, case: SolverCase, pool: workload.PreservePool, device):
        factory = pool.factory
        width = case.shapes.width
        n = case.concepts
        concept_rows = factory.rows(n, stream=1)
        lasts = factory.lasts(n, 1, 6, stream=1)
        self.guide = solver.EncodedPrompt("art", factory.rows(1, stream=2)[0], 1)
        self.concepts = [solver.EncodedPrompt(f"concept {i}", concept_rows[i], lasts[i]) for i in range(n)]
        self.edit = solver.erase_edit([(c, self.guide) for c in self.concepts], case.mode)
        # The same aligned rows, selected independently of uce_solver (last token to the end).
        self.pairs = [_select_pair(c, self.guide, case.mode) for c in self.concepts]
        self.concept_matrix = torch.cat([c for c, _ in self.pairs])
        self.guide_matrix = torch.cat([g for _, g in self.pairs])
        assert self.concept_matrix.shape == self.edit.inputs.shape

        self.preserve_prompts = 0
        self.preserve_source = ""
        self.preserve_list: list[torch.Tensor] = []
        self.preserve_matrix: Optional[torch.Tensor] = None
        if case.preserve:
            count, self.preserve_source = (
                (case.preserve_override, "smoke count") if case.preserve_override else workload.preserve_count(n)
            )
            rows, plasts = pool.rows(count)  # the empty prompt "" (slot 0) closes the paper's list
            if case.mode == "paper":
                self.preserve_list = list(rows)
                self.preserve_matrix = rows.reshape(-1, width)  # a view: no copy of the largest tensor
            else:
                self.preserve_list = [rows[i, plasts[i] : plasts[i] + 1] for i in range(count)]
                self.preserve_matrix = torch.cat(self.preserve_list)
            self.preserve_prompts = count
        self.scales = solver.Scales(
            erase=ERASE_SCALE,
            preserve=max(0.1, 1.0 / self.preserve_prompts) if self.preserve_prompts else 1.0,
            lamb=LAMB,
        )
        weights16 = shapes_mod.random_weights(case.shapes, device)
        self.weights = {k: w.float() for k, w in weights16.items()}


def _select_pair(concept, guide, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    if mode == "last_token":
        return concept.rows[concept.last : concept.last + 1], guide.rows[guide.last : guide.last + 1]
    slots = concept.rows.shape[0]
    far = max(concept.last, guide.last)
    concept_rows = concept.rows[concept.last : slots - (far - concept.last)]
    guide_rows = guide.rows[guide.last : slots - (far - guide.last)]
    return concept_rows, guide_rows


def run_case(solver, case: SolverCase, device, budget: Budget, pools: dict) -> dict:
    """Run one case; ``pools`` (width -> PreservePool) is shared by the cases of a run."""
    width = case.shapes.width
    if width not in pools:
        pools[width] = workload.PreservePool(workload.RowFactory(width, device))
    data = Inputs(solver, case, pools[width], device)
    sc = data.scales
    result = {
        "case": case.name,
        "model": case.shapes.name,
        "layers": case.shapes.count,
        "width": case.shapes.width,
        "concepts": case.concepts,
        "mode": case.mode,
        "edit_rows": data.edit.count,
        "preserve_prompts": data.preserve_prompts,
        "preserve_rows": 0 if data.preserve_matrix is None else data.preserve_matrix.shape[0],
        "preserve_source": data.preserve_source,
        "scales": {"erase": sc.erase, "preserve": sc.preserve, "lamb": sc.lamb},
    }

    # Fast solver, float64 Gram products (the default).
    def fast64():
        return solver.solve(data.weights, data.edit, data.preserve_matrix, sc)

    gc.collect()  # garbage of earlier cases must not be freed inside the measured window
    with PeakMemory(device) as peak:
        solution, first = timed(fast64, device)
    solution, fast_seconds, fast_times = median_time(fast64, device, budget.repeats, (solution, first))
    result["fast_f64"] = {"seconds": fast_seconds, "times": fast_times, "peak_bytes": peak.bytes}
    result["peak_method"] = peak.method
    result["patch"] = _patch_bytes(solver, solution, case.shapes)

    # Fast solver, float32 Gram products (a pre-filled GramAccumulator); only differs with preserve rows.
    solution32 = None
    if data.preserve_matrix is not None:

        def fast32():
            acc = solver.GramAccumulator(case.shapes.width, device, chunk_dtype=torch.float32)
            acc.add(data.preserve_matrix)
            return solver.solve(data.weights, data.edit, acc, sc)

        solution32, seconds32, times32 = median_time(fast32, device, budget.repeats)
        result["fast_f32"] = {"seconds": seconds32, "times": times32}

    if not case.baselines:
        return result

    # Independent float64 closed form: the accuracy yardstick.
    preserve_gram = None
    if data.preserve_matrix is not None:
        if case.mode == "paper":
            preserve_gram = pools[width].gram64(data.preserve_prompts, reference.cross64)
        else:
            preserve_gram = reference.cross64(data.preserve_matrix, data.preserve_matrix)
    exact = reference.ExactSolution.build(
        data.concept_matrix, data.guide_matrix, preserve_gram, sc.erase, sc.preserve, sc.lamb
    )
    checked = _checked_layers(case.shapes)
    exact_deltas = {k: exact.delta(data.weights[k]) for k in checked}
    result["exact_f64"] = {"seconds": exact.seconds, "layers_checked": len(checked)}
    result["fast_f64"]["rel_diff_exact"] = _max_diff(solution.deltas, exact_deltas)
    if solution32 is not None:
        result["fast_f32"]["rel_diff_exact"] = _max_diff(solution32.deltas, exact_deltas)

    result["gemm"] = _gemm_baseline(data, case, device, budget, solution, exact)
    result["reference"] = reference_baseline(data, case, device, budget, solution, exact)
    for name in ("gemm", "reference"):
        result[name]["speedup"] = result[name]["seconds"] / fast_seconds
    return result


def _checked_layers(shapes: shapes_mod.ModelShapes) -> list[str]:
    keys = [k for k, _ in shapes.layers]
    if shapes.width <= 1024:
        return keys
    picked = set(shapes.representatives())
    step = max(1, math.ceil(len(keys) / (MAX_CHECKED_WIDE_LAYERS - len(picked))))
    picked.update(keys[::step])
    return [k for k in keys if k in picked]


def _max_diff(deltas, exact_deltas) -> float:
    return max(relative_difference(deltas[k].dense(), exact_deltas[k]) for k in exact_deltas)


def _patch_bytes(solver, solution, shapes: shapes_mod.ModelShapes) -> dict:
    deltas = list(solution.deltas.values())
    as_solved = solver.storage_bytes(deltas)
    elements = sum(t.numel() for t in {id(t): t for d in deltas for t in d.tensors()}.values())  # shared tensors once
    dense16 = shapes.dense_fp16_bytes()
    return {
        "as_solved_bytes": as_solved,
        "fp16_bytes": 2 * elements,
        "dense_fp16_bytes": dense16,
        "fp16_ratio": 2 * elements / dense16,
        "low_rank_layers": sum(isinstance(d, solver.LowRankDelta) for d in deltas),
        "rank": solution.edit_rows,
    }


def _layer_plan(shapes, keys_done):
    return [k for k, _ in shapes.layers if k not in keys_done]


def _gemm_baseline(data: Inputs, case: SolverCase, device, budget: Budget, solution, exact) -> dict:
    """One GEMM per Gram and an explicit inverse, per layer (float32)."""
    sc = data.scales
    m = data.concept_matrix.shape[0]
    n = 0 if data.preserve_matrix is None else data.preserve_matrix.shape[0]
    rate = reference.matmul_flops_per_second(device)
    per_class, diffs, measured, subsampled = {}, [], 0.0, False
    for key in case.shapes.representatives():
        d_out = case.shapes.d_out(key)
        estimate = reference.gemm_flops(m + n, d_out, case.shapes.width) / rate
        fraction = min(1.0, budget.layer_seconds / estimate) if estimate > 0 else 1.0
        c, g, p = data.concept_matrix, data.guide_matrix, data.preserve_matrix
        if fraction < 1.0:
            subsampled = True
            c, g = c[: max(1, int(m * fraction))], g[: max(1, int(m * fraction))]
            p = None if p is None else p[: max(1, int(n * fraction))]
            fraction = (c.shape[0] + (0 if p is None else p.shape[0])) / (m + n)
        timing = reference.GemmTiming(fraction=fraction)
        delta = reference.gemm_layer(data.weights[key], c, g, p, sc.erase, sc.preserve, sc.lamb, timing)
        per_class[d_out] = timing.extrapolate()
        measured += timing.sums_seconds + timing.fixed_seconds
        if fraction == 1.0:
            diffs.append(_diff_pair(delta, solution.deltas[key].dense(), exact.delta(data.weights[key])))
    estimate_all = sum(per_class[d] * count for d, count in case.shapes.classes().items())
    done = case.shapes.representatives()
    if not subsampled and estimate_all - measured <= budget.rest_seconds:
        total = measured
        for key in _layer_plan(case.shapes, set(done)):
            delta, seconds = timed(
                lambda key=key: reference.gemm_layer(
                    data.weights[key],
                    data.concept_matrix,
                    data.guide_matrix,
                    data.preserve_matrix,
                    sc.erase,
                    sc.preserve,
                    sc.lamb,
                ),
                device,
            )
            total += seconds
            diffs.append(_diff_pair(delta, solution.deltas[key].dense(), exact.delta(data.weights[key])))
        return _baseline_result(total, case.shapes.count, case.shapes.count, False, diffs, "")
    result = _baseline_result(
        estimate_all, len(done), case.shapes.count, subsampled, diffs, "rows subsampled" if subsampled else ""
    )
    result["layer_estimates"] = {str(d): t for d, t in per_class.items()}
    return result


def reference_baseline(data: Inputs, case: SolverCase, device, budget: Budget, solution, exact) -> dict:
    """The original code's structure (batched outer products per prompt), per layer, float32.

    Uses ``data.scales``, ``data.weights``, ``data.pairs`` and ``data.preserve_list`` (any sequence,
    e.g. one that makes each prompt's rows on access), ``case.shapes`` and ``case.concepts``; ``exact``
    is only consulted for layers run on all rows.
    """
    sc = data.scales
    n_e, n_p = len(data.pairs), len(data.preserve_list)
    per_class, diffs, measured, subsampled, notes = {}, [], 0.0, False, []
    for key in case.shapes.representatives():
        d_out = case.shapes.d_out(key)
        rows = data.preserve_list[0].shape[0] if n_p else data.pairs[0][0].shape[0]
        rate = reference.reference_prompt_seconds(d_out, case.shapes.width, device, rows)
        pairs, kept = data.pairs, data.preserve_list
        if rate * (n_e + n_p) > budget.layer_seconds:
            subsampled = True
            k = max(2, int(budget.layer_seconds / rate))
            k_e = min(n_e, max(1, round(k * n_e / (n_e + n_p))))
            k_p = min(n_p, max(1 if n_p else 0, k - k_e))
            pairs, kept = _spread(data.pairs, k_e), _spread(data.preserve_list, k_p)
            notes.append(f"d_out {d_out}: {k_e}/{n_e} edit + {k_p}/{n_p} preserve prompts")
        timing = reference.ReferenceTiming()
        delta = reference.reference_layer(data.weights[key], pairs, kept, sc.erase, sc.preserve, sc.lamb, timing)
        per_class[d_out] = timing.extrapolate(n_e, n_p)
        measured += timing.edit_seconds + timing.preserve_seconds + timing.fixed_seconds
        if len(pairs) == n_e and len(kept) == n_p:
            diffs.append(_diff_pair(delta, solution.deltas[key].dense(), exact.delta(data.weights[key])))
    full_layer = None
    if subsampled and (case.shapes.name, case.concepts) in budget.full_reference_layer:
        full_layer = _full_reference_layer(data, case, solution, exact, per_class)
    estimate_all = sum(per_class[d] * count for d, count in case.shapes.classes().items())
    done = case.shapes.representatives()
    if not subsampled and estimate_all - measured <= budget.rest_seconds:
        total = measured
        for key in _layer_plan(case.shapes, set(done)):
            timing = reference.ReferenceTiming()
            delta = reference.reference_layer(
                data.weights[key], data.pairs, data.preserve_list, sc.erase, sc.preserve, sc.lamb, timing
            )
            total += timing.edit_seconds + timing.preserve_seconds + timing.fixed_seconds
            if key in solution.deltas:  # a large solution may keep only some updates (dit_cases)
                diffs.append(_diff_pair(delta, solution.deltas[key].dense(), exact.delta(data.weights[key])))
        return _baseline_result(total, case.shapes.count, case.shapes.count, False, diffs, "")
    result = _baseline_result(estimate_all, len(done), case.shapes.count, subsampled, diffs, "; ".join(notes))
    result["layer_estimates"] = {str(d): t for d, t in per_class.items()}
    result["full_layer"] = full_layer
    return result


def _full_reference_layer(data: Inputs, case: SolverCase, solution, exact, estimates: dict) -> dict:
    """The reference on every prompt for the narrowest layer: a measured, not extrapolated, comparison."""
    sc = data.scales
    key = min(case.shapes.representatives(), key=case.shapes.d_out)
    timing = reference.ReferenceTiming()
    delta = reference.reference_layer(
        data.weights[key], data.pairs, data.preserve_list, sc.erase, sc.preserve, sc.lamb, timing
    )
    fast_vs_ref, ref_vs_exact = _diff_pair(delta, solution.deltas[key].dense(), exact.delta(data.weights[key]))
    return {
        "key": key,
        "d_out": case.shapes.d_out(key),
        "seconds": timing.edit_seconds + timing.preserve_seconds + timing.fixed_seconds,
        "extrapolated_seconds": estimates[case.shapes.d_out(key)],  # what the subsample predicted
        "fast_vs_reference": fast_vs_ref,
        "reference_vs_exact": ref_vs_exact,
    }


def _spread(items: list, k: int) -> list:
    if k >= len(items):
        return list(items)
    if k <= 0:
        return []
    return [items[round(i * (len(items) - 1) / max(1, k - 1))] for i in range(k)]


def _diff_pair(baseline_delta, fast_delta, exact_delta) -> tuple[float, float]:
    """(fast vs this baseline, this baseline vs float64 exact)."""
    return relative_difference(fast_delta, baseline_delta), relative_difference(baseline_delta, exact_delta)


def _baseline_result(seconds, layers_run, layers, subsampled, diffs, note) -> dict:
    return {
        "seconds": seconds,
        "layers_run": layers_run,
        "layers": layers,
        "extrapolated": layers_run < layers or subsampled,
        "subsampled": subsampled,
        "full_rows_layers": len(diffs),
        "fast_vs_baseline": max((d[0] for d in diffs), default=None),
        "baseline_vs_exact": max((d[1] for d in diffs), default=None),
        "note": note,
    }
