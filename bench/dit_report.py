"""Markdown tables of the DiT part (bench/dit_cases.py)."""

from __future__ import annotations

from .report import _table, mib, ratio, sci, seconds

SUMMARY_HEADER = [
    "Model, concepts",
    "concepts run",
    "edit rows (text map + pooled)",
    "preserve prompts",
    "fast solve, both maps",
    "peak memory (largest map)",
    "naive reference, both maps",
    "speed-up",
]
TIME_HEADER = [
    "Case",
    "map",
    "edit rows",
    "preserve rows (streamed)",
    "fast solve",
    "making the rows (not counted)",
    "naive reference",
    "speed-up",
    "how the reference was timed",
]
MEMORY_HEADER = [
    "Case",
    "map",
    "edit rows C + G (f32)",
    "case needs (est.)",
    "preserve rows if held (f32)",
    "Gram d²×8",
    "fast solve peak (measured)",
    "peak / Gram",
]
ACCURACY_HEADER = ["Case", "map", "fast vs exact f64", "fast vs reference", "reference vs exact f64"]
E2E_HEADER = ["Model", "run", "encode", "solve", "measure", "patch", "total", "patch bytes"]
GROUP_HEADER = [
    "Model",
    "group",
    "shape",
    "weights (low-rank)",
    "edit rows",
    "preserve rows",
    "distance to targets left",
    "preserve rows moved",
]


def gib(value: int) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else mib(value)


def _shape(m: dict) -> str:
    return f"{m['map']} [{m['d_out']}, {m['width']}]"


def _how(ref: dict) -> str:
    if not ref["extrapolated"]:
        return "all prompts measured"
    text = "extrapolated linearly from a subsample of prompts"
    return f"{text} ({ref['note']})" if ref.get("note") else text


def summary_table(cases: list[dict]) -> str:
    rows = []
    for c in cases:
        if c["check"]:
            continue
        maps = c["maps"]
        fast = sum(m["fast"]["seconds"] for m in maps)
        ref = sum(m["reference"]["seconds"] for m in maps)
        approx = any(m["reference"]["extrapolated"] for m in maps)
        run = f"{c['concepts']:,}" + ("" if c["concepts"] == c["concepts_requested"] else " (memory limit)")
        rows.append(
            [
                f"{c['model']}, {c['concepts_requested']:,}",
                run,
                " + ".join(f"{m['edit_rows']:,}" for m in maps),
                f"{c['preserve_prompts']:,}",
                seconds(fast),
                gib(max(m["memory"]["peak_bytes"] for m in maps)),
                seconds(ref, approx),
                ratio(ref / fast, approx),
            ]
        )
    return "### DiT shapes: fast solve vs the naive reference (both maps of each model; ≈ = extrapolated)\n\n" + _table(
        SUMMARY_HEADER, rows
    )


def time_table(cases: list[dict]) -> str:
    rows = []
    for c in cases:
        for m in c["maps"]:
            ref = m["reference"]
            rows.append(
                [
                    c["case"],
                    _shape(m),
                    f"{m['edit_rows']:,}",
                    f"{m['preserve_rows']:,}",
                    seconds(m["fast"]["seconds"]),
                    seconds(m["fast"]["row_seconds"]),
                    seconds(ref["seconds"], ref["extrapolated"]),
                    ratio(ref["speedup"], ref["extrapolated"]),
                    _how(ref),
                ]
            )
    return "### DiT shapes, per map: time (median of repeats; ≈ = extrapolated)\n\n" + _table(TIME_HEADER, rows)


def memory_table(cases: list[dict]) -> str:
    rows, notes = [], []
    for c in cases:
        for m in c["maps"]:
            mem = m["memory"]
            rows.append(
                [
                    c["case"] + ("" if c["concepts"] == c["concepts_requested"] else f" ({c['concepts']:,} run)"),
                    _shape(m),
                    gib(mem["edit_bytes"]),
                    gib(mem["needed_bytes"]),
                    gib(mem["preserve_held_bytes"]),
                    gib(mem["gram_bytes"]),
                    gib(mem["peak_bytes"]),
                    f"{mem['peak_bytes'] / mem['gram_bytes']:.1f}×",
                ]
            )
        if c["concepts"] != c["concepts_requested"]:
            wanted = max(c["maps"], key=lambda m: m["requested"]["needed_bytes"])
            notes.append(
                f"- {c['case']}: the edit of all {c['concepts_requested']:,} concepts would have "
                f"{wanted['requested']['edit_rows']:,} {wanted['map']} rows ({gib(wanted['requested']['edit_bytes'])} "
                f"for C and G in float32) and need about {gib(wanted['requested']['needed_bytes'])}, over the memory "
                f"budget of {gib(c['memory_budget_bytes'])} ({c['memory_budget_source']}); the first "
                f"{c['concepts']:,} concepts ran instead, with the {c['concepts_requested']:,}-concept case's "
                f"preserve list ({c['preserve_prompts']:,} prompts)."
            )
    text = "### DiT shapes, per map: memory\n\n" + _table(MEMORY_HEADER, rows)
    return text + ("\n\n" + "\n".join(notes) if notes else "")


def accuracy_table(cases: list[dict]) -> str:
    rows = []
    for c in cases:
        for m in c["maps"]:
            ref = m["reference"]
            if m["fast_vs_exact"] is None and ref["fast_vs_baseline"] is None:
                continue
            rows.append(
                [
                    c["case"],
                    _shape(m),
                    sci(m["fast_vs_exact"]),
                    sci(ref["fast_vs_baseline"]),
                    sci(ref["baseline_vs_exact"]),
                ]
            )
    return (
        "### DiT shapes: accuracy (relative difference ‖ΔW − ΔW_x‖/‖ΔW_x‖; the reference only where it ran on "
        "every prompt)\n\n" + _table(ACCURACY_HEADER, rows)
    )


def e2e_tables(cases: list[dict]) -> str:
    runs, groups, skipped = [], [], []
    for case in cases:
        if "skipped" in case:
            skipped.append(f"- {case['model']}: skipped: {case['skipped']}")
            continue
        for name, run in case["runs"].items():
            runs.append(
                [
                    f"{case['model']}, {case['case']}",
                    name,
                    seconds(run["encode_seconds"]),
                    seconds(run["solve_seconds"]),
                    seconds(run["measure_seconds"]),
                    seconds(run["patch_seconds"]),
                    seconds(run["total_seconds"]),
                    mib(run["patch_bytes"]),
                ]
            )
        for group in case["groups"]:
            shape = next(v for k, v in case["map_shapes"].items() if k.startswith(group["label"].split()[0]))
            shift = group["preserve_shift"]
            groups.append(
                [
                    case["model"],
                    group["label"],
                    f"[{shape[0]}, {shape[1]}]",
                    f"{group['weights']} ({group['low_rank']})",
                    f"{group['edit_rows']:,}",
                    f"{group['preserve_rows']:,}",
                    f"{100 * group['target_gap_remaining']:.2f} %",
                    "—" if shift is None else f"{100 * shift:.2f} %",
                ]
            )
    device = next((c["device"] for c in cases if "device" in c), "")
    parts = [
        "### DiT end to end in ComfyUI: tiny Flux.1 and SD3 models (edit runner, caches cleared first; "
        f"device {device or '—'})\n\nThe tiny models keep the real tokenizers and row layouts but have tiny "
        "text encoders, so encode times say nothing about real T5-XXL / CLIP; the SD3 maps read 4096-wide rows "
        "as the real model does.\n\n" + _table(E2E_HEADER, runs),
        "#### Groups of the report (first run)\n\n" + _table(GROUP_HEADER, groups),
    ]
    if skipped:
        parts.append("\n".join(skipped))
    return "\n\n".join(parts)


def _order(cases: list[dict]) -> list[dict]:
    """Grouped by model (in order of first appearance), check case first, then by concepts asked for."""
    models = list(dict.fromkeys(c["model"] for c in cases))
    return sorted(cases, key=lambda c: (models.index(c["model"]), not c["check"], c["concepts_requested"]))


def markdown(dit: dict) -> str:
    cases = _order([c for c in dit["solver"] if "skipped" not in c])
    parts = ["## DiT families (Flux.1, SD3.5-large)"]
    if cases:
        parts += [summary_table(cases), time_table(cases), memory_table(cases), accuracy_table(cases)]
    failed = [f"- {c['case']}: skipped: {c['skipped']}" for c in dit["solver"] if "skipped" in c]
    if failed:
        parts.append("\n".join(failed))
    if dit.get("e2e"):
        parts.append(e2e_tables(dit["e2e"]))
    parts.append(NOTES)
    return "\n\n".join(parts)


NOTES = """### How to read the DiT tables
- Shapes: Flux.1 `txt_in` [3072, 4096] on 256 T5 rows per prompt ([tokens, EOS, pad …], no BOS) and
  `vector_in.in_layer` [3072, 768] on the CLIP-L pooled vector; SD3.5-large `context_embedder`
  [2432, 4096] on 154 rows (77 CLIP-L|G rows whose columns 2048:4096 are zero, then 77 T5 rows) and
  `y_embedder.mlp.0` [2432, 2048] on the pooled vector. Random fp16 weights solved in float32; biases
  do not enter the closed form.
- Rows are synthetic (per text-encoder segment: norms ≈ 28, a component shared by every prompt per
  slot, so the Grams are ill-conditioned); counts are the paper's: erased sets, the 1,734-artist
  preserve list minus the erased, plus "". Paper token mode: prompts are built from per-encoder
  `Segment`s and `erase_edit` aligns each concept's tail with the guide "art".
- **fast solve**: `uce_solver.solve` with the preserve rows streamed as an iterator of chunks into its
  float64 Gram; the time spent making the synthetic rows is measured inside the iterator and taken out.
  **Peak memory**: growth during the first solve (the edit rows are already resident and not counted;
  see *edit rows C + G*). *Preserve rows if held* is what holding every preserve row would take.
- **naive reference**: `bench/reference.reference_layer`, the original code's structure in float32
  (per prompt, batched outer products summed; explicit inverse), given the same rows. At width 4096
  a prompt's outer products are batched by 32 rows (2^29 elements) into two reused buffers instead of
  one fresh [256, 4096, 4096] temporary (17 GB), so page faults are not timed (generous to it: fresh
  temporaries made it 1.5–2.5× slower, by how much depending on the allocator's state). Unless marked
  *all prompts measured*, it ran on a spread subsample of prompts and its time is extrapolated
  linearly in the prompt counts (as for the UNet shapes). Its pairs are the edit's own aligned rows.
- **check** cases (1 concept and a few preserve prompts at the real shapes) run the reference on
  every prompt and compare it and the fast solve with the float64 closed form; pooled maps are
  compared with float64 in every case.
- *case needs (est.)*: the estimate the concept count is fitted with, the largest of building the
  edit (the concept prompts' rows and C, G), the solve (C, G, what the solver adds per edit-row
  element, measured by probe solves, e.g. float64 copies of C and G; d × d matrices; a streamed chunk)
  and the reference (C, G, its batch buffers). A count whose case would not fit the memory budget
  runs with the largest count that fits (the first N of the paper's set) and says so under the
  memory table."""
