"""The benchmark's smoke run (bench/run.py --smoke): same code paths as the full run, tiny sizes, no thresholds.

This is how CI keeps the benchmark from rotting; the real numbers come from bench/run.sh.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
from markdown_it import MarkdownIt

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "bench"

EXPECTED = [
    "### Targets",
    "| Target | measured | status |",
    "| Case | edit rows | preserve rows | fast (f64 Gram) | fast (f32 Gram) | naive GEMM per layer | naive reference |",
    "| Case | fast f64 vs exact f64 | fast f32-Gram vs exact f64 | fast vs reference |",
    "### Patch memory",
    "### End to end in ComfyUI",
    "| Run | encode | solve | measure | patch | total | patch bytes |",
    "| Prompts | batched (batch 64) | one by one | speed-up | largest abs. difference |",
    "## DiT families (Flux.1, SD3.5-large, WAN 2.2-14B, HiDream I1)",
    "| Model, concepts | concepts run | edit rows (text map + pooled) | preserve prompts | fast solve, both maps |",
    "| Case | map | edit rows | preserve rows (streamed) | fast solve | making the rows (not counted) |",
    "| Case | map | edit rows C + G (f32) | case needs (est.) | preserve rows if held (f32) | Gram d²×8 |",
    "| Case | map | fast vs exact f64 | fast vs reference | reference vs exact f64 |",
    "3 (memory limit)",  # the smoke's 4-concept case is squeezed to 3 concepts
    "| Model, concepts | concepts run | weights | edit rows | preserve prompts (rows) | fast solve, all weights |",
    "| tiny WAN-like, 2 | 2 | cross_attn k/v 8× [48, 64] |",  # 8 weights on one row source, one solve
    "| tiny HiDream-like, 2 | 2 | caption_projection.3–5 (Llama layer 3) 3× [40, 64] |",
    # 3 of 5 row sources measured, the whole edit extrapolated: T5 + 3 × Llama layer 0 + Llama layer 3
    "| tiny HiDream-like, 2 | 2 | 5 (7) | 3 (5) | caption_projection.6 (T5) + 3 × caption_projection.0 (Llama layer 0)",
    "### DiT end to end in ComfyUI",
    "| tiny Flux.1 | txt_in | [64, 64] |",
    "| tiny SD3 | context_embedder | [128, 4096] |",
]


def test_benchmark_smoke_run_writes_its_tables_and_plot(tmp_path):
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "run.py"), "--smoke", "--device", "cpu", "--out", str(tmp_path)],
        check=False,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    markdown = (tmp_path / "results.md").read_text(encoding="utf-8")
    unpadded = re.sub(r" {2,}", " ", markdown)  # table cells are padded to their column's width
    for expected in EXPECTED:
        assert expected in unpadded, f"{expected!r} missing from results.md:\n{markdown}"
    assert "skipped" not in markdown  # the ComfyUI cases really ran and the plot was drawn
    assert markdown in proc.stdout  # the table is printed too

    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert results["smoke"] and results["machine"]["cpu"]
    assert len(results["solver"]) == 3 and results["e2e"] and results["encoding"]["prompts"] == 4
    dit = results["dit"]
    assert len(dit["solver"]) == 9 and all(
        len(case["maps"]) == (1 if "WAN" in case["model"] else 3 if "HiDream" in case["model"] else 2)
        for case in dit["solver"]
    )
    full = next(case["full_model"] for case in dit["solver"] if "HiDream" in case["model"] and not case["check"])
    assert (full["sources"], full["maps"]) == (5, 7) and full["fast_seconds"] > full["fast_measured_seconds"]
    checks = [m for case in dit["solver"] if case["check"] for m in case["maps"]]
    assert checks and all(m["fast_vs_exact"] < 1e-5 and not m["reference"]["extrapolated"] for m in checks)
    assert [case["model"] for case in dit["e2e"]] == ["tiny Flux.1", "tiny SD3"]

    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _bench_module(name: str):
    """A module of bench/, loaded as bench/run.py loads it (package ``uce_bench``; the repository root,
    whose ``nodes/`` would shadow ComfyUI's, never goes on sys.path)."""
    if "uce_bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "uce_bench", BENCH_DIR / "__init__.py", submodule_search_locations=[str(BENCH_DIR)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules["uce_bench"] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"uce_bench.{name}")


def _parsed_table(text: str) -> tuple[list[str], list[list[str]], list[str]]:
    """(alignments, header, rows) of the one table in ``text``, as a GitHub-markdown parser reads it."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    assert [t.type for t in tokens].count("table_open") == 1, text
    align, header, rows, row = [], [], [], None
    for token in tokens:
        if token.type == "th_open":
            align.append((token.attrGet("style") or "").removeprefix("text-align:"))
        elif token.type == "tr_open":
            row = []
        elif token.type == "inline" and row is not None:
            row.append(token.content)
        elif token.type == "tr_close":
            if header:
                rows.append(row)
            else:
                header = row
            row = None
    return align, header, rows


def test_report_table_is_github_markdown_with_right_aligned_quantities():
    report = _bench_module("report")
    header = ["Case", "edit rows", "fast (f64 Gram)", "speed-up", "how the baselines were timed"]
    rows = [
        ["SD1.5, 1 concept, no preserve", "73", "171.4 ms", "44.1×", "all 32 layers measured"],
        ["SDXL, 1000 concepts, paper preserve", "73,515", "44.08 s", "≈ 10,325×", "extrapolated from 2 of 140 layers"],
        ["tiny", "1.0e-05", "—", "—", "—"],  # never re-parsed as numbers: 1.0e-05 stays as given
    ]
    text = report.table(header, rows, text=("Case", "how the baselines were timed"))

    align, parsed_header, parsed_rows = _parsed_table(text)
    assert parsed_header == header and parsed_rows == rows
    assert align == ["left", "right", "right", "right", "left"]

    lines = text.splitlines()
    assert len(lines) == 2 + len(rows) and len({len(line) for line in lines}) == 1, text  # columns line up
    for line, row in zip([lines[0], *lines[2:]], [header, *rows]):
        cells = line.split("|")[1:-1]
        for cell, value, side in zip(cells, row, align):
            width = len(cell) - 2
            assert cell == f" {value.rjust(width) if side == 'right' else value.ljust(width)} ", line


def test_machine_description_names_the_cpu_and_memory():
    report = _bench_module("report")
    info = report.machine("cpu")
    assert info["cpu"] and info["cpu"] != "unknown CPU"
    cpuinfo_path = Path("/proc/cpuinfo")
    if cpuinfo_path.is_file():  # Linux: the name the kernel gives, where it gives one
        names = [
            line.split(":", 1)[1].split()
            for line in cpuinfo_path.read_text().splitlines()
            if line.lower().startswith("model name")
        ]
        if names:
            assert info["cpu"].split() == names[0]
    assert info["memory_gib"] == round(psutil.virtual_memory().total / 2**30, 1) and info["memory_gib"] > 0
    assert info["cpu_cores"] == psutil.cpu_count() and info["gpu"] is None

    line = report.machine_line(info)
    assert line.startswith(f"{info['cpu']} ({info['cpu_cores']} cores, ")
    assert f"{info['memory_gib']} GiB RAM" in line and "no GPU" in line and "device `cpu`" in line
