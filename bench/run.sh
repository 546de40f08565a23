#!/usr/bin/env bash
# The UCE benchmark in one command, on a fresh machine:
#   bench/run.sh [--smoke] [--out DIR] [--device cpu|cuda] [...]   (see bench/run.py --help)
# Sets up .venv (matplotlib included, for the plot) and ComfyUI with scripts/setup.sh, then runs
# the benchmark. Writes results.md, results.json and bench.png to out/bench/ (or --out).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
scripts/setup.sh
# Idle OpenMP threads sleep instead of spinning (on a shared machine torch is ~10x slower otherwise).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec .venv/bin/python bench/run.py "$@"
