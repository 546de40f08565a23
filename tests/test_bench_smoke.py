"""The benchmark's smoke run (bench/run.py --smoke): same code paths as the full run, tiny sizes, no thresholds.

This is how CI keeps the benchmark from rotting; the real numbers come from bench/run.sh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

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
    for expected in EXPECTED:
        assert expected in markdown, f"{expected!r} missing from results.md:\n{markdown}"
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
