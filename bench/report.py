"""The benchmark's outputs: machine description, markdown tables, targets and a plot."""

from __future__ import annotations

import platform
from collections.abc import Collection
from pathlib import Path
from typing import Optional

import cpuinfo
import psutil
import torch
from tabulate import tabulate

NOT_MEASURED = "not measured"


# ---------------------------------------------------------------- machine


def machine(device: str) -> dict:
    info = {
        "cpu": cpuinfo.get_cpu_info().get("brand_raw") or platform.processor() or "unknown CPU",
        "cpu_cores": psutil.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "gpu": None,
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def machine_line(info: dict) -> str:
    gpu = info["gpu"] or "no GPU"
    return (
        f"{info['cpu']} ({info['cpu_cores']} cores, torch threads {info['torch_threads']}, "
        f"{info['memory_gib']} GiB RAM); {gpu}; device `{info['device']}`; torch {info['torch']}, "
        f"Python {info['python']}"
    )


# ---------------------------------------------------------------- formatting


def seconds(value: Optional[float], approx: bool = False) -> str:
    if value is None:
        return "—"
    prefix = "≈ " if approx else ""
    if value < 1e-3:
        return f"{prefix}{value * 1e6:.0f} µs"
    if value < 1:
        return f"{prefix}{value * 1e3:.1f} ms"
    if value < 120:
        return f"{prefix}{value:.2f} s"
    if value < 3 * 3600:
        return f"{prefix}{value / 60:.1f} min"
    return f"{prefix}{value / 3600:.1f} h"


def ratio(value: Optional[float], approx: bool = False) -> str:
    if value is None:
        return "—"
    prefix = "≈ " if approx else ""
    return f"{prefix}{value:,.0f}×" if value >= 100 else f"{prefix}{value:.1f}×"


def sci(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.1e}"


def mib(value: Optional[int]) -> str:
    if value is None:
        return "—"
    if value < 2**20:
        return f"{value / 2**10:.1f} KiB"
    return f"{value / 2**20:.1f} MiB"


def table(header: list[str], rows: list[list[str]], text: Collection[str] = ("Case",)) -> str:
    """A GitHub-markdown (pipe) table: the columns named in ``text`` left-aligned, the others (quantities)
    right-aligned; cells are printed as given (already formatted, never re-parsed as numbers)."""
    align = ["left" if name in text else "right" for name in header]
    return tabulate(rows, header, tablefmt="pipe", colalign=align, disable_numparse=True)


# ---------------------------------------------------------------- tables

SOLVER_TIME_HEADER = [
    "Case",
    "edit rows",
    "preserve rows",
    "fast (f64 Gram)",
    "fast (f32 Gram)",
    "naive GEMM per layer",
    "naive reference",
    "speed-up vs reference",
    "speed-up vs GEMM",
    "how the baselines were timed",
]
SOLVER_ACCURACY_HEADER = [
    "Case",
    "fast f64 vs exact f64",
    "fast f32-Gram vs exact f64",
    "fast vs reference",
    "reference vs exact f64",
    "GEMM vs exact f64",
    "peak memory (fast f64)",
    "patch fp16 / dense fp16",
]
E2E_HEADER = ["Run", "encode", "solve", "measure", "patch", "total", "patch bytes"]
ENCODING_HEADER = ["Prompts", "batched (batch 64)", "one by one", "speed-up", "largest abs. difference"]
TARGET_HEADER = ["Target", "measured", "status"]


def _how(baseline: dict) -> str:
    if not baseline["extrapolated"]:
        return f"all {baseline['layers']} layers measured"
    text = f"extrapolated from {baseline['layers_run']} of {baseline['layers']} layers"
    if baseline["subsampled"]:
        text += ", prompts/rows subsampled"
    return text


def solver_tables(cases: list[dict]) -> str:
    timed_rows, accuracy_rows = [], []
    for c in cases:
        if "reference" not in c:
            continue
        gemm, ref = c["gemm"], c["reference"]
        f32 = c.get("fast_f32")
        timed_rows.append(
            [
                c["case"],
                f"{c['edit_rows']:,}",
                f"{c['preserve_rows']:,}",
                seconds(c["fast_f64"]["seconds"]),
                seconds(f32["seconds"]) if f32 else "— (no preserve Gram)",
                seconds(gemm["seconds"], gemm["extrapolated"]),
                seconds(ref["seconds"], ref["extrapolated"]),
                ratio(ref["speedup"], ref["extrapolated"]),
                ratio(gemm["speedup"], gemm["extrapolated"]),
                f"reference: {_how(ref)}; GEMM: {_how(gemm)}",
            ]
        )
        full = ref.get("full_layer")
        if ref["full_rows_layers"]:
            n = ref["full_rows_layers"]
            fast_vs_ref = f"{sci(ref['fast_vs_baseline'])} ({n} layer{'s' if n != 1 else ''})"
            ref_vs_exact = sci(ref["baseline_vs_exact"])
        elif full:
            fast_vs_ref = f"{sci(full['fast_vs_reference'])} (1 layer, d_out {full['d_out']}, all rows)"
            ref_vs_exact = sci(full["reference_vs_exact"])
        else:
            fast_vs_ref, ref_vs_exact = "— (no layer run on all rows)", "—"
        patch = c["patch"]
        accuracy_rows.append(
            [
                c["case"],
                sci(c["fast_f64"]["rel_diff_exact"]),
                sci(f32["rel_diff_exact"]) if f32 else "—",
                fast_vs_ref,
                ref_vs_exact,
                sci(gemm["baseline_vs_exact"]),
                mib(c["fast_f64"]["peak_bytes"]),
                f"{mib(patch['fp16_bytes'])} / {mib(patch['dense_fp16_bytes'])} ({100 * patch['fp16_ratio']:.1f} %)",
            ]
        )
    return (
        "### Solver only: time (median of repeats; ≈ = extrapolated)\n\n"
        + table(SOLVER_TIME_HEADER, timed_rows, text=("Case", "how the baselines were timed"))
        + "\n\n### Solver only: accuracy (largest relative difference ‖ΔW − ΔW_x‖/‖ΔW_x‖ over the compared layers), "
        "memory, patch size\n\n" + table(SOLVER_ACCURACY_HEADER, accuracy_rows)
    )


def extrapolation_checks(cases: list[dict]) -> str:
    """Where the reference also ran on all rows of one layer: measured vs what the subsample predicted."""
    lines = []
    for c in cases:
        full = c.get("reference", {}).get("full_layer")
        if full:
            lines.append(
                f"- {c['case']}: the reference on all {c['concepts']:,} edit + {c['preserve_prompts']:,} preserve "
                f"prompts of one d_out {full['d_out']} layer took {seconds(full['seconds'])}; extrapolated from "
                f"the subsample: {seconds(full['extrapolated_seconds'])} "
                f"({100 * (full['extrapolated_seconds'] / full['seconds'] - 1):+.0f} %)"
            )
    if not lines:
        return ""
    return "### Extrapolation check\n\n" + "\n".join(lines)


def patch_table(cases: list[dict]) -> str:
    rows = []
    for c in cases:
        if c["concepts"] != 1 or c["preserve_prompts"]:
            continue
        p = c["patch"]
        rows.append(
            [
                f"{c['model']}, 1 concept, {c['mode']} token mode",
                f"{p['rank']}",
                f"{p['low_rank_layers']} of {c['layers']}",
                mib(p["as_solved_bytes"]),
                mib(p["fp16_bytes"]),
                mib(p["dense_fp16_bytes"]),
                f"{100 * p['fp16_ratio']:.2f} %",
            ]
        )
    if not rows:
        return ""
    header = [
        "Case",
        "rank",
        "low-rank layers",
        "as solved (fp32)",
        "stored (fp16)",
        "dense ΔW (fp16)",
        "stored / dense",
    ]
    return "### Patch memory\n\n" + table(header, rows)


def e2e_table(e2e: list[dict]) -> str:
    parts = []
    for case in e2e:
        if "skipped" in case:
            parts.append(f"### End to end ({case['case']})\n\nskipped: {case['skipped']}")
            continue
        rows = []
        for name, run in case["runs"].items():
            rows.append(
                [
                    name,
                    seconds(run["encode_seconds"]),
                    seconds(run["solve_seconds"]),
                    seconds(run["measure_seconds"]),
                    seconds(run["patch_seconds"]),
                    seconds(run["total_seconds"]),
                    mib(run["patch_bytes"]),
                ]
            )
        parts.append(
            f"### End to end in ComfyUI: {case['case']} ({case['edit_rows']:,} edit rows, "
            f"{case['preserve_rows']:,} preserve rows; tiny SD1.5 checkpoint with the real-size CLIP-L, "
            f"{case['layers']} K/V matrices, device {case['device']})\n\n"
            + table(E2E_HEADER, rows, text=("Run",))
            + f"\n\nRepeated-run encoding / first-run encoding: {100 * case['repeat_encode_ratio']:.2f} %"
        )
    return "\n\n".join(parts)


def encoding_table(enc: Optional[dict]) -> str:
    if not enc:
        return ""
    if "skipped" in enc:
        return f"### Text encoding\n\nskipped: {enc['skipped']}"
    row = [
        str(enc["prompts"]),
        seconds(enc["batched_seconds"]),
        seconds(enc["one_by_one_seconds"]),
        ratio(enc["speedup"]),
        f"{enc['max_abs_diff']:.1e} (rows up to {enc['max_abs_value']:.1f})",
    ]
    return "### Text encoding: batched vs one by one (CLIP-L)\n\n" + table(ENCODING_HEADER, [row], text=())


# ---------------------------------------------------------------- targets


def targets(results: dict) -> list[list[str]]:
    device = results["machine"]["device"]
    on_gpu = torch.device(device).type == "cuda"
    on_cpu = not on_gpu
    cases = {(c["model"], c["concepts"], bool(c["preserve_prompts"]), c["mode"]): c for c in results["solver"]}
    rows = []

    head = cases.get(("SD1.5", 100, True, "paper"))
    if on_cpu and head and "reference" in head:
        ref = head["reference"]
        speed = ref["speedup"]
        rows.append(
            [
                "CPU, SD1.5, 100 concepts + paper preserve: ≥ 50× faster than the naive reference",
                (
                    f"{ratio(speed, ref['extrapolated'])} (fast {seconds(head['fast_f64']['seconds'])}, "
                    f"reference {seconds(ref['seconds'], ref['extrapolated'])}; vs naive GEMM "
                    f"{ratio(head['gemm']['speedup'], head['gemm']['extrapolated'])}; reference {_how(ref)})"
                ),
                _status(speed >= 50),
            ]
        )
        diff = head["fast_f64"]["rel_diff_exact"]
        ref_diff, ref_exact = ref["fast_vs_baseline"], ref["baseline_vs_exact"]
        if ref_diff is None and ref.get("full_layer"):
            ref_diff, ref_exact = ref["full_layer"]["fast_vs_reference"], ref["full_layer"]["reference_vs_exact"]
        measured = f"{sci(diff)} vs the float64 closed form (all layers)"
        if ref_diff is not None:
            measured += f"; {sci(ref_diff)} vs the fp32 reference (itself {sci(ref_exact)} from float64)"
        else:
            measured += "; the fp32 reference ran on no layer with all rows (see --reference-full-layer)"
        rows.append(["… relative difference ≤ 1e-4", measured, _status(diff <= 1e-4)])
    elif on_cpu:
        rows.append(["CPU, SD1.5, 100 concepts + paper preserve: ≥ 50×, rel. diff ≤ 1e-4", NOT_MEASURED, NOT_MEASURED])
    else:
        rows.append(
            [
                "CPU, SD1.5, 100 concepts + paper preserve: ≥ 50×, rel. diff ≤ 1e-4",
                "not measured (GPU run)",
                NOT_MEASURED,
            ]
        )

    small = [c for c in results.get("e2e", []) if "skipped" not in c and c["artists"] <= 10]
    if small:
        r = small[0]["repeat_encode_ratio"]
        rows.append(
            [
                "Repeated edit, same CLIP and preserve list: encoding < 5 % of the first run",
                (
                    f"{100 * r:.2f} % ({seconds(small[0]['runs']['repeated']['encode_seconds'])} vs "
                    f"{seconds(small[0]['runs']['first']['encode_seconds'])}, {small[0]['case']})"
                ),
                _status(r < 0.05),
            ]
        )
    else:
        rows.append(["Repeated edit: encoding < 5 % of the first run", NOT_MEASURED, NOT_MEASURED])

    for mode in ("paper", "last_token"):
        c = cases.get(("SDXL", 1, False, mode))
        label = f"Patch memory, SDXL, 1 concept ({mode}): ≤ 5 % of dense fp16 ΔW"
        if c:
            p = c["patch"]
            rows.append(
                [
                    label,
                    f"{100 * p['fp16_ratio']:.2f} % ({mib(p['fp16_bytes'])} of {mib(p['dense_fp16_bytes'])})",
                    _status(p["fp16_ratio"] <= 0.05),
                ]
            )
        else:
            rows.append([label, NOT_MEASURED, NOT_MEASURED])

    gpu_reason = "not measured (no GPU in this run)"
    paper_e2e = [c for c in results.get("e2e", []) if "skipped" not in c and c["artists"] == 100]
    if on_gpu and paper_e2e:
        total = paper_e2e[0]["runs"]["first"]["total_seconds"]
        rows.append(
            [
                "GPU: 100-artist paper case end to end < 1 s",
                f"{seconds(total)} (first run, {paper_e2e[0]['layers']} K/V matrices of the tiny checkpoint)",
                _status(total < 1),
            ]
        )
    else:
        rows.append(
            ["GPU: 100-artist paper case end to end < 1 s", gpu_reason if not on_gpu else NOT_MEASURED, NOT_MEASURED]
        )
    if on_gpu and head:
        solve = head["fast_f64"]["seconds"]
        rows.append(
            [
                "GPU: solve alone < 50 ms (SD1.5 shapes, 100 concepts + paper preserve)",
                seconds(solve),
                _status(solve < 0.05),
            ]
        )
    else:
        rows.append(["GPU: solve alone < 50 ms", gpu_reason if not on_gpu else NOT_MEASURED, NOT_MEASURED])
    enc = results.get("encoding")
    if on_gpu and enc and "skipped" not in enc:
        rows.append(
            ["GPU: batched encoding ≥ 10× faster than one by one", ratio(enc["speedup"]), _status(enc["speedup"] >= 10)]
        )
    else:
        rows.append(
            [
                "GPU: batched encoding ≥ 10× faster than one by one",
                gpu_reason if not on_gpu else NOT_MEASURED,
                NOT_MEASURED,
            ]
        )
    return rows


def _status(ok: bool) -> str:
    return "met" if ok else "missed"


# ---------------------------------------------------------------- document


def markdown(results: dict) -> str:
    info = results["machine"]
    parts = [
        f"## UCE benchmark{' (smoke)' if results['smoke'] else ''}",
        (
            f"- date: {results['date']}\n- machine: {machine_line(info)}\n- command: `{results['command']}`\n"
            f"- wall time: {seconds(results['wall_seconds'])}"
        ),
        "### Targets\n\n" + table(TARGET_HEADER, targets(results), text=TARGET_HEADER),
    ]
    if results["solver"]:
        parts.append(solver_tables(results["solver"]))
        check = extrapolation_checks(results["solver"])
        if check:
            parts.append(check)
        patch = patch_table(results["solver"])
        if patch:
            parts.append(patch)
    if results.get("e2e"):
        parts.append(e2e_table(results["e2e"]))
    if results.get("encoding"):
        parts.append(encoding_table(results["encoding"]))
    parts.append(NOTES)
    if results.get("dit"):
        from . import dit_report

        parts.append(dit_report.markdown(results["dit"]))
    if results.get("plot_note"):
        parts.append(results["plot_note"])
    return "\n\n".join(parts) + "\n"


NOTES = """### How to read this
- **fast**: `uce_solver.solve` (one Cholesky factorisation per input width, shared by all layers).
  *f64 Gram*: the default, Gram products in float64; *f32 Gram*: the preserve Gram accumulated
  from float32 chunk products (`GramAccumulator(chunk_dtype=torch.float32)`), timed including
  that accumulation.
- **naive reference**: the original UCE code's structure, per layer: batched outer products
  summed per prompt, `mat1 @ torch.inverse(mat2)`, float32; given the same precomputed rows (no
  re-encoding per layer) and computing values for the current layer only.
- **naive GEMM per layer**: per layer one matrix product per sum and an explicit inverse, float32.
- Baselines too slow to run whole are timed on one layer of each output width and extrapolated to
  all layers (by width class); where one such layer would exceed the per-layer budget, on evenly
  spread prompts (reference) or leading rows (GEMM), extrapolated linearly in the prompt / row
  count. Such times carry ≈.
- **exact f64**: the closed form in float64 with an explicit inverse, Gram matrices computed once
  (independent code); compared on every layer (SD1.5) or on 8 spread layers incl. one per width
  (SDXL). *fast vs reference* is only given for layers the reference ran on all rows; the fp32
  reference's own error (*reference vs exact f64*) bounds how close anything can get to it.
- Solver rows are synthetic (77 slots, norms ≈ 28 like CLIP-L, a component shared across
  prompts); only the counts come from the paper's lists (erased sets, 1,734 artists minus the
  erased ones, plus ""). Paper token mode; λ = 0.5, s_e = 1, s_p = max(0.1, 1/|preserve|).
- Peak memory: growth of the process's peak RSS during the first fast solve (CPU; Linux VmHWM),
  or `torch.cuda.max_memory_allocated` growth (GPU); the inputs are already resident.
- Patch sizes count the node's storage: factors in the weights' 16-bit dtype (low-rank up/down, the
  shared down once, or dense), against dense fp16 ΔW for every matrix.
- CPU timings on a shared machine are noisy: medians of 3 runs for cases under 10 s, one run
  otherwise."""


# ---------------------------------------------------------------- plot


def plot(results: dict, path: Path) -> Optional[str]:
    """Write the PNG; return None, or why no plot was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (scripts/setup.sh installs it)"
    cases = [c for c in results["solver"] if "reference" in c]
    e2e = [c for c in results.get("e2e", []) if "skipped" not in c]
    if not cases and not e2e:
        return "plot skipped: no solver or end-to-end cases in this run (the DiT part has tables only)"
    panels = 1 + bool(e2e)
    fig, axes = plt.subplots(1, panels, figsize=(13 if panels == 2 else 9, max(4, 0.45 * len(cases) + 1.5)))
    axes = axes if panels > 1 else [axes]
    ax = axes[0]
    series = [
        ("fast f64", lambda c: c["fast_f64"]["seconds"], False, "tab:green"),
        ("fast f32 Gram", lambda c: c.get("fast_f32", {}).get("seconds"), False, "tab:olive"),
        ("naive GEMM", lambda c: c["gemm"]["seconds"], lambda c: c["gemm"]["extrapolated"], "tab:blue"),
        ("naive reference", lambda c: c["reference"]["seconds"], lambda c: c["reference"]["extrapolated"], "tab:red"),
    ]
    height = 0.8 / len(series)
    for i, (label, value, approx, color) in enumerate(series):
        ys, xs, hatches = [], [], []
        for j, c in enumerate(cases):
            v = value(c)
            if v is None:
                continue
            ys.append(j + (i - 1.5) * height)
            xs.append(v)
            hatches.append("//" if approx and approx(c) else "")
        bars = ax.barh(ys, xs, height=height, color=color, label=label)
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
    ax.set_yticks(range(len(cases)))
    ax.set_yticklabels([c["case"] for c in cases], fontsize=8)
    ax.invert_yaxis()
    if cases:
        ax.set_xscale("log")
    ax.set_xlabel("seconds (log; hatched = extrapolated)")
    ax.set_title(f"Solver only ({results['machine']['device']})")
    ax.legend(fontsize=8, loc="upper right")
    if e2e:
        ax = axes[1]
        labels, bottoms = [], []
        parts = [("encode", "tab:purple"), ("solve", "tab:green"), ("measure", "tab:gray"), ("patch", "tab:orange")]
        for c in e2e:
            for name in c["runs"]:
                labels.append(f"{c['artists']} artists\n{name}")
        bottoms = [0.0] * len(labels)
        for part, color in parts:
            values = [run[f"{part}_seconds"] for c in e2e for run in c["runs"].values()]
            ax.bar(range(len(labels)), values, bottom=bottoms, color=color, label=part)
            bottoms = [b + v for b, v in zip(bottoms, values)]
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("seconds")
        ax.set_title("End to end in ComfyUI")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
