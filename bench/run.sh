#!/usr/bin/env bash
# The UCE benchmark in one command, on a fresh machine:
#   bench/run.sh [--smoke] [--out DIR] [--device cpu|cuda] [...]   (see bench/run.py --help)
# Sets up .venv and ComfyUI (scripts/setup.sh), adds matplotlib for the plot, then runs the
# benchmark. Writes results.md, results.json and bench.png to out/bench/ (or --out).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
scripts/setup.sh
if ! .venv/bin/python -c 'import matplotlib' 2>/dev/null; then
  echo "[bench] installing matplotlib into .venv (for bench.png)"
  .venv/bin/python -m pip install --quiet matplotlib
fi
# Idle OpenMP threads sleep instead of spinning (on a shared machine torch is ~10x slower otherwise).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec .venv/bin/python bench/run.py "$@"
