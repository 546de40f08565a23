#!/usr/bin/env bash
# The demo (README): set up, then run the "erase an artist's style" example workflow through a real
# headless ComfyUI with this pack, and write before/after images and the report to out/demo/.
#
#   scripts/demo.sh                                   # tiny random-weight test model, a few seconds
#   scripts/demo.sh path/to/checkpoint.safetensors    # your checkpoint: 512x512, 20 steps
#   scripts/demo.sh --help                            # more options (--out, --steps, --concepts …)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
export OMP_WAIT_POLICY=PASSIVE  # 2-core machines: idle OpenMP threads must not spin

scripts/setup.sh
PYTHONPATH="$REPO_ROOT/devtools${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m uce_devtools.demo "$@"
