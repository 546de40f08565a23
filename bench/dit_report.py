"""Markdown tables of the DiT part (bench/dit_cases.py)."""

from __future__ import annotations

from .report import mib, ratio, sci, seconds, table

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
SHARED_HEADER = [
    "Model, concepts",
    "concepts run",
    "weights",
    "edit rows",
    "preserve prompts (rows)",
    "fast solve, all weights",
    "making rows + weights (not counted)",
    "peak memory",
    "naive reference, all weights",
    "speed-up",
]
FULL_HEADER = [
    "Model, concepts",
    "concepts run",
    "row sources (maps)",
    "measured sources (maps)",
    "all sources extrapolated as",
    "fast solve, measured sources",
    "fast solve, all sources",
    "making rows + weights (not counted)",
    "peak memory (largest source)",
    "naive reference, all maps",
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


# Model names of the runs' cases -> the family the heading names (the smoke run's tiny models included).
FAMILY_NAMES = {
    "tiny Flux-like": "Flux.1",
    "tiny SD3-like": "SD3.5-large",
    "tiny WAN-like": "WAN 2.2-14B",
    "tiny HiDream-like": "HiDream I1",
}
DEFAULT_FAMILIES = "Flux.1, SD3.5-large"


def _weights(m: dict) -> int:
    return m.get("weights", 1)


def _shared(c: dict) -> bool:
    """A case whose map is many weights reading one row source (WAN's 80 cross-attention k / v)."""
    return any(_weights(m) > 1 for m in c["maps"])


def _shape(m: dict) -> str:
    count = f"{_weights(m)}× " if _weights(m) > 1 else ""
    return f"{m['map']} {count}[{m['d_out']}, {m['width']}]"


def _how(ref: dict) -> str:
    if not ref["extrapolated"]:
        return "all prompts measured"
    layers = ref.get("layers", 1)
    scaled = f" on {ref['layers_run']} of {layers} weights, times {layers}" if ref["layers_run"] < layers else ""
    if not ref.get("subsampled"):
        return f"all prompts measured{scaled}"
    text = f"extrapolated linearly from a subsample of prompts{scaled}"
    return f"{text} ({ref['note']})" if ref.get("note") else text


def summary_table(cases: list[dict]) -> str:
    rows = []
    for c in cases:
        if c["check"] or _shared(c):
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
    return "### DiT shapes: fast solve vs the naive reference (both maps of each model; ≈ = extrapolated)\n\n" + table(
        SUMMARY_HEADER, rows, text=("Model, concepts",)
    )


def shared_table(cases: list[dict]) -> str:
    """Models whose text rows are read by many weights (one Gram, one factorisation for all of them)."""
    rows = []
    for c in cases:
        if c["check"] or not _shared(c):
            continue
        for m in c["maps"]:
            ref = m["reference"]
            run = f"{c['concepts']:,}" + ("" if c["concepts"] == c["concepts_requested"] else " (memory limit)")
            rows.append(
                [
                    f"{c['model']}, {c['concepts_requested']:,}",
                    run,
                    _shape(m),
                    f"{m['edit_rows']:,}",
                    f"{c['preserve_prompts']:,} ({m['preserve_rows']:,})",
                    seconds(m["fast"]["seconds"]),
                    seconds(m["fast"]["row_seconds"] + m["fast"].get("weight_seconds", 0.0)),
                    gib(m["memory"]["peak_bytes"]),
                    seconds(ref["seconds"], ref["extrapolated"]),
                    ratio(ref["speedup"], ref["extrapolated"]),
                ]
            )
    return (
        "### Many weights on one row source: fast solve (one Gram and one factorisation for all of them) vs the "
        "naive reference (each weight on its own; ≈ = extrapolated)\n\n"
        + table(SHARED_HEADER, rows, text=("Model, concepts", "weights"))
    )


def full_model_table(cases: list[dict]) -> str:
    """Models measured on some of their row sources (HiDream: 3 of 33): the whole edit, extrapolated."""
    rows = []
    for c in cases:
        full = c.get("full_model")
        if c["check"] or not full:
            continue
        run = f"{c['concepts']:,}" + ("" if c["concepts"] == c["concepts_requested"] else " (memory limit)")
        rows.append(
            [
                f"{c['model']}, {c['concepts_requested']:,}",
                run,
                f"{full['sources']} ({full['maps']})",
                f"{full['measured_sources']} ({full['measured_maps']})",
                full["formula"],
                seconds(full["fast_measured_seconds"]),
                seconds(full["fast_seconds"], True),
                seconds(full["making_seconds"], True),
                gib(full["peak_bytes"]),
                seconds(full["reference_seconds"], True),
                ratio(full["speedup"], True),
            ]
        )
    return (
        "### Many row sources, some measured: the whole edit (each measured source's fast-solve and reference "
        "times counted once for every source it stands for; ≈ = extrapolated)\n\n"
        + table(FULL_HEADER, rows, text=("Model, concepts", "all sources extrapolated as"))
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
    return "### DiT shapes, per map: time (median of repeats; ≈ = extrapolated)\n\n" + table(
        TIME_HEADER, rows, text=("Case", "map", "how the reference was timed")
    )


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
    for c in cases:
        for m in c["maps"]:
            mem = m["memory"]
            if _weights(m) > 1 and "deltas_bytes" in mem:
                notes.append(
                    f"- {c['case']}: the {_weights(m)} weights ({gib(mem['weights_fp16_bytes'])} in fp16) are made one "
                    f"at a time as the solver reads them (not held); the peak includes every update as solved "
                    f"({gib(mem['deltas_bytes'])}, {'low-rank' if m['low_rank'] else 'dense'}, float32)."
                )
    text = "### DiT shapes, per map: memory\n\n" + table(MEMORY_HEADER, rows, text=("Case", "map"))
    return text + ("\n\n" + "\n".join(notes) if notes else "")


def accuracy_table(cases: list[dict]) -> str:
    rows, notes = [], []
    for c in cases:
        for m in c["maps"]:
            ref = m["reference"]
            if m["fast_vs_exact"] is None and ref["fast_vs_baseline"] is None:
                continue
            if _weights(m) > 1:
                compared = ", ".join(
                    f"`{k.removeprefix('diffusion_model.').removesuffix('.weight')}`"
                    for k in m.get("exact_compared_keys", [])
                )
                notes.append(
                    f"- {c['case']}: fast vs exact is the largest over {m.get('exact_compared_weights', 1)} of the "
                    f"{_weights(m)} weights{f' ({compared})' if compared else ''}"
                    + (
                        f"; the reference ran on {ref['full_rows_layers']} of them"
                        if ref["fast_vs_baseline"] is not None
                        else ""
                    )
                    + "."
                )
            rows.append(
                [
                    c["case"],
                    _shape(m),
                    sci(m["fast_vs_exact"]),
                    sci(ref["fast_vs_baseline"]),
                    sci(ref["baseline_vs_exact"]),
                ]
            )
    text = (
        "### DiT shapes: accuracy (relative difference ‖ΔW − ΔW_x‖/‖ΔW_x‖; the reference only where it ran on "
        "every prompt)\n\n" + table(ACCURACY_HEADER, rows, text=("Case", "map"))
    )
    return text + ("\n\n" + "\n".join(notes) if notes else "")


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
        "as the real model does.\n\n" + table(E2E_HEADER, runs, text=("Model", "run")),
        "#### Groups of the report (first run)\n\n" + table(GROUP_HEADER, groups, text=("Model", "group", "shape")),
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
    families = ", ".join(dict.fromkeys(FAMILY_NAMES.get(c["model"], c["model"]) for c in cases))
    parts = [f"## DiT families ({families or DEFAULT_FAMILIES})"]
    if cases:
        if any(not c["check"] and not _shared(c) for c in cases):
            parts.append(summary_table(cases))
        if any(not c["check"] and _shared(c) for c in cases):
            parts.append(shared_table(cases))
        if any(not c["check"] and c.get("full_model") for c in cases):
            parts.append(full_model_table(cases))
        parts += [time_table(cases), memory_table(cases), accuracy_table(cases)]
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
  `y_embedder.mlp.0` [2432, 2048] on the pooled vector; WAN 2.2-14B (T2V-A14B; 2.1 14B alike): the 40
  blocks' `cross_attn.k` and `.v` [5120, 5120], 80 weights that all read the same 512 rows per prompt
  (UMT5-XXL rows [tokens, EOS, zero padding], no BOS, no mask, through the model's `text_embedding`
  MLP, so every padding row is one constant row, the same in every prompt); one solve serves the 80,
  the naive reference solves each on its own. Random fp16 weights solved in float32 (WAN's made one at
  a time as the solver reads them, as the node does; that time is taken out too); HiDream I1 (full /
  dev / fast): the 49 `caption_projection.N.linear` [2560, 4096] (no bias), block N's on Llama-3.1-8B
  hidden layer `llama_layers[N]` (layers 0 … 31, then 31 sixteen more times) and `caption_projection.48`
  on the T5-XXL rows, 128 rows per prompt each (Llama: BOS, the prompt, padding; T5: the prompt, EOS,
  padding; every row is read and every padding row depends on the prompt): 33 row sources, one Gram
  and one factorisation each. Three are measured (the T5 source, Llama layer 0 with its one map,
  Llama layer 31 with its 17) and the whole edit is extrapolated linearly as T5 + 31 × layer 0 +
  layer 31 (layers 1 … 30 have layer 0's shapes, rows per prompt and single map); the pooled
  `p_embedder` is not edited by default and is left out. Biases do not enter the closed form.
- Rows are synthetic (per text-encoder segment: norms ≈ 28, a component shared by every prompt per
  slot, so the Grams are ill-conditioned); counts are the paper's: erased sets, the 1,734-artist
  preserve list minus the erased, plus "" (WAN, HiDream: its first 1,000 prompts, as the issue asks). Paper
  token mode: prompts are built from per-encoder `Segment`s and `erase_edit` aligns each concept's
  tail with the guide "art".
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
  compared with float64 in every case. WAN: the reference runs on the first of the 80 weights (all of
  one shape; its time is scaled by 80 and marked ≈) and the float64 comparison covers the first and
  last blocks' k and v; only the check case is compared on the CPU (its 1-concept case would need one
  more 27-TFLOP float64 preserve Gram; `--dit-exact-all` asks for it). HiDream: the reference runs on
  one of Llama layer 31's 17 weights (times 17) and the float64 comparison covers its first two and
  last two, in the check case and the 1-concept case (one 4096-wide float64 Gram per measured source).
- *case needs (est.)*: the estimate the concept count is fitted with, the largest of building the
  edit (the concept prompts' rows and C, G), the solve (C, G, what the solver adds per edit-row
  element, measured by probe solves, e.g. float64 copies of C and G; d × d matrices; a streamed chunk;
  every weight's update as solved) and the reference (C, G, its batch buffers). A count whose case
  would not fit the memory budget runs with the largest count that fits (the first N of the paper's
  set) and says so under the memory table."""
