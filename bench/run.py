"""UCE benchmark: prints a markdown table and writes results.md, results.json and bench.png.

    bench/run.sh                       # the one command (sets up .venv and ComfyUI first)
    .venv/bin/python bench/run.py [--smoke] [--out out/bench] [--device cpu|cuda] [--only solver,e2e,encoding,dit]

Cases (issue 3): the solver alone on SD1.5 / SDXL K/V shapes (1 to 1,000 erased concepts, with and
without the paper's preserve list) beside the naive per-layer reference and a naive GEMM baseline;
end to end through ComfyUI in-process on the tiny checkpoint (first and repeated run); batched vs
one-by-one text encoding; the DiT part (``dit``): the solver on Flux.1 and SD3.5-large text-map shapes
(and, with ``--dit-models ...,wan``, WAN 2.2-14B's 80 cross-attention K/V weights; with ``hidream``, HiDream
I1's 49 caption projections on 33 row sources, three sources measured and the rest extrapolated) with
streamed preserve rows, and the tiny Flux / SD3 models end to end. ``--smoke`` runs the same code
paths on tiny sizes in seconds.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import shlex
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

# Idle OpenMP threads must sleep, not spin, on a shared machine; must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
# Python put bench/ first on sys.path; ComfyUI's top-level modules must not meet ours there.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
sys.path.insert(0, str(REPO_ROOT / "devtools"))  # uce_devtools; never the repository root itself

import torch  # noqa: E402


def _load_bench():
    spec = importlib.util.spec_from_file_location(
        "uce_bench", BENCH_DIR / "__init__.py", submodule_search_locations=[str(BENCH_DIR)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["uce_bench"] = module
    spec.loader.exec_module(module)
    return module


_load_bench()
from uce_bench import report, shapes, solver_cases  # noqa: E402

PARTS = ("solver", "e2e", "encoding", "dit")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, same code paths, seconds (CI)")
    parser.add_argument("--out", default=str(REPO_ROOT / "out" / "bench"), help="output folder (default out/bench)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available, else cpu)")
    parser.add_argument("--only", default=",".join(PARTS), help="comma list of parts: solver,e2e,encoding,dit")
    parser.add_argument("--models", default="sd15,sdxl", help="solver cases: comma list of sd15,sdxl")
    parser.add_argument("--concepts", default="1,10,100,1000", help="solver cases: erased concept counts")
    parser.add_argument(
        "--layer-seconds",
        type=float,
        default=None,
        help="most seconds one baseline layer may take before prompts/rows are subsampled (default 4 CPU, 2 GPU)",
    )
    parser.add_argument(
        "--rest-seconds",
        type=float,
        default=None,
        help="run a baseline on all layers when the remaining layers are estimated under this (default 10)",
    )
    parser.add_argument(
        "--reference-full-layer",
        default="",
        metavar="MODEL:CONCEPTS,...",
        help="for these solver cases (e.g. SD1.5:100), where the reference was subsampled, also run it on all "
        "prompts for the narrowest layer, for a measured fast-vs-reference difference (minutes each)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of quick cases (median)")
    parser.add_argument(
        "--e2e-paper",
        action="store_true",
        help="also run the paper's 100-artist case end to end (100 artists + 1,634 preserve prompts; slow on CPU)",
    )
    parser.add_argument("--encode-prompts", type=int, default=200, help="prompts of the encoding case")
    parser.add_argument(
        "--dit-models",
        default="flux,sd35",
        help="dit part: comma list of flux,sd35,wan,hidream (default flux,sd35: WAN's 5120-wide Grams over "
        "1,000 x 512 rows add about 30-40 min on a 2-core CPU; hidream, 3 of its 33 row sources measured, "
        "about 12 min with --dit-concepts 1,100)",
    )
    parser.add_argument("--dit-concepts", default="1,100,1000", help="dit part: erased concept counts")
    parser.add_argument(
        "--dit-check-preserve",
        type=int,
        default=None,
        help="dit part: preserve prompts of the check case (1 concept, reference and float64 on every prompt; "
        "default 300 on a GPU, 8 on the CPU)",
    )
    parser.add_argument(
        "--dit-memory-gib",
        type=float,
        default=None,
        help="dit part: memory an edit may use; larger edits run fewer concepts (default 80%% of available memory)",
    )
    parser.add_argument(
        "--dit-exact-all",
        action="store_true",
        help="dit part: compare every case with the float64 closed form (always on a GPU; on the CPU only the "
        "smallest count's cases by default, not WAN's: it streams every preserve row once more)",
    )
    return parser.parse_args(argv)


def solver_plan(args) -> list:
    if args.smoke:
        tiny = shapes.tiny()
        return [
            solver_cases.SolverCase(tiny, 2, False),
            solver_cases.SolverCase(tiny, 2, True, preserve_override=5),
            solver_cases.SolverCase(shapes.tiny("tiny", 64, (32, 48)), 1, False, mode="last_token", baselines=False),
        ]
    models = {"sd15": shapes.SD15, "sdxl": shapes.SDXL}
    plan = []
    for name in args.models.split(","):
        model = models[name.strip().lower()]
        for n in (int(x) for x in args.concepts.split(",")):
            plan += [solver_cases.SolverCase(model, n, False), solver_cases.SolverCase(model, n, True)]
        if model is shapes.SDXL:
            plan.append(solver_cases.SolverCase(model, 1, False, mode="last_token", baselines=False))
    return plan


DIT_MODELS = ("flux", "sd35", "wan", "hidream")


def dit_models(args) -> list[str]:
    names = [name.strip().lower() for name in args.dit_models.split(",") if name.strip()]
    unknown = sorted(set(names) - set(DIT_MODELS))
    if unknown:
        raise SystemExit(f"unknown --dit-models {unknown}; expected {', '.join(DIT_MODELS)}")
    return names


def dit_plan(args, solver, device) -> list:
    """Check cases first, then each concept count for each model (smoke: tiny maps)."""
    from uce_bench import dit_cases as dc

    if args.smoke:
        squeezed = dc.model_needed_bytes(solver, dc.TINY_FLUX, 3, device)  # 4 asked, 3 fit: the fitting path runs
        return [
            dc.DitCase(dc.TINY_FLUX, 1, preserve=4, check=True),
            dc.DitCase(dc.TINY_FLUX, 2, exact=True),
            dc.DitCase(dc.TINY_FLUX, 4, memory_bytes=squeezed),
            dc.DitCase(dc.TINY_SD3, 1, preserve=4, check=True),
            dc.DitCase(dc.TINY_SD3, 2),
            dc.DitCase(dc.TINY_WAN, 1, preserve=4, check=True),
            dc.DitCase(dc.TINY_WAN, 2, exact=True),
            dc.DitCase(dc.TINY_HIDREAM, 1, preserve=4, check=True),
            dc.DitCase(dc.TINY_HIDREAM, 2, exact=True),
        ]
    on_gpu = device.startswith("cuda")
    check = args.dit_check_preserve or (300 if on_gpu else 8)
    memory = None if args.dit_memory_gib is None else int(args.dit_memory_gib * 2**30)
    known = {"flux": dc.FLUX, "sd35": dc.SD35_LARGE, "wan": dc.WAN, "hidream": dc.HIDREAM}
    models = [known[name] for name in dit_models(args)]
    plan = [dc.DitCase(model, 1, preserve=check, check=True) for model in models]
    counts = sorted(int(x) for x in args.dit_concepts.split(","))
    for n in counts:  # the largest edits last
        plan += [
            dc.DitCase(
                model,
                n,
                exact=args.dit_exact_all or on_gpu or (n == counts[0] and model.exact_at_scale),
                memory_bytes=memory,
            )
            for model in models
        ]
    return plan


def dit_part(args, device, budget, started, out_dir: Path) -> dict:
    """DiT solver cases on real text-map shapes, then the tiny Flux / SD3 models end to end in ComfyUI.

    Each finished case is also written to dit-partial.json, so a run killed later keeps it.
    """
    from uce_bench import dit_cases
    from uce_devtools import comfy_env

    solver = comfy_env.load_solver()
    out = {"solver": [], "e2e": []}
    for case in dit_plan(args, solver, device):
        log(f"dit: {case.name}", started)
        try:
            with torch.inference_mode():
                out["solver"].append(dit_cases.run_case(solver, case, device, budget))
        except Exception as error:  # noqa: BLE001 - one failed case must not lose the others
            traceback.print_exc()
            out["solver"].append({"case": case.name, "skipped": f"failed: {type(error).__name__}: {error}"})
        (out_dir / "dit-partial.json").write_text(json.dumps(out, indent=2, default=str), encoding="utf-8")
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    artists, preserve = (2, 5) if args.smoke else (10, 200)
    families = (
        ("flux", "sd3") if args.smoke else tuple({"flux": "flux", "sd35": "sd3"}.get(m) for m in dit_models(args))
    )
    if any(f in families for f in ("flux", "sd3")):
        log(f"dit: tiny Flux / SD3 end to end, {artists} artists + {preserve} preserve prompts", started)
        out["e2e"] = dit_cases.run_e2e(device, artists, preserve, families)
    return out


def log(message: str, started: float) -> None:
    print(f"[bench {time.perf_counter() - started:7.1f} s] {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda asked for, but torch sees no CUDA device", file=sys.stderr)
        return 2
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - set(PARTS)
    if unknown:
        print(f"unknown parts {sorted(unknown)}; expected {', '.join(PARTS)}", file=sys.stderr)
        return 2
    if "dit" in parts:
        dit_models(args)  # an unknown name stops here, before any part runs
    on_gpu = device.startswith("cuda")
    layer_seconds = (
        args.layer_seconds if args.layer_seconds is not None else (0.3 if args.smoke else 2 if on_gpu else 4)
    )
    rest_seconds = args.rest_seconds if args.rest_seconds is not None else (1 if args.smoke else 10)
    full_layer = set()
    for item in filter(None, (x.strip() for x in args.reference_full_layer.split(","))):
        model, _, concepts = item.rpartition(":")
        full_layer.add((model, int(concepts)))
    budget = solver_cases.Budget(layer_seconds, rest_seconds, args.repeats, frozenset(full_layer))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    results = {
        "smoke": args.smoke,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": report.machine(device),
        "budget": {
            "layer_seconds": layer_seconds,
            "rest_seconds": rest_seconds,
            "repeats": args.repeats,
            "reference_full_layer": sorted(f"{m}:{c}" for m, c in full_layer),
        },
        "solver": [],
        "e2e": [],
        "encoding": None,
        "dit": None,
    }

    if "solver" in parts:
        from uce_devtools import comfy_env

        solver = comfy_env.load_solver()
        pools: dict = {}
        for case in solver_plan(args):
            log(f"solver: {case.name}", started)
            with torch.inference_mode():
                results["solver"].append(solver_cases.run_case(solver, case, device, budget, pools))
            gc.collect()
        pools.clear()
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()

    if parts & {"e2e", "encoding"}:
        results["e2e"], results["encoding"] = comfy_parts(args, parts, device, started)

    if "dit" in parts:
        results["dit"] = dit_part(args, device, budget, started, out)

    results["wall_seconds"] = time.perf_counter() - started
    note = report.plot(results, out / "bench.png")
    results["plot_note"] = note
    text = report.markdown(results)
    (out / "results.md").write_text(text, encoding="utf-8")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    print(text)
    log(f"wrote {out / 'results.md'}, results.json{'' if note else ', bench.png'}", started)
    return 0


def comfy_parts(args, parts, device, started):
    """End-to-end and encoding cases; each reports 'skipped' with the reason when ComfyUI is unavailable."""
    from uce_bench import comfy_cases, e2e_cases, encoding_cases

    e2e_plan = [(2, 5)] if args.smoke else [(10, 200)]
    if args.e2e_paper and not args.smoke:
        e2e_plan.append((100, None))
    encode_count = 4 if args.smoke else args.encode_prompts
    try:
        log("loading ComfyUI and the tiny SD1.5 checkpoint", started)
        comfy = comfy_cases.load(device)
    except Exception as error:  # noqa: BLE001 - any failure to set up ComfyUI means: skip, say why
        reason = f"ComfyUI unavailable ({type(error).__name__}: {error})".replace("\n", " ")
        log(reason, started)
        e2e = [{"case": f"{a} artists", "skipped": reason} for a, _ in e2e_plan] if "e2e" in parts else []
        return e2e, ({"skipped": reason} if "encoding" in parts else None)
    e2e, encoding = [], None
    if "e2e" in parts:
        for artists, preserve in e2e_plan:
            log(f"e2e: {artists} artists, {'all' if preserve is None else preserve} preserve prompts", started)
            try:
                e2e.append(e2e_cases.run_case(comfy, artists, preserve))
            except Exception as error:  # noqa: BLE001
                traceback.print_exc()
                e2e.append({"case": f"{artists} artists", "skipped": f"failed: {type(error).__name__}: {error}"})
    if "encoding" in parts:
        log(f"encoding: {encode_count} prompts, batched vs one by one", started)
        repeats = 1 if (device == "cpu" and not args.smoke) else args.repeats
        encoding = encoding_cases.run_case(comfy, encode_count, device, repeats)
    return e2e, encoding


if __name__ == "__main__":
    sys.exit(main())
