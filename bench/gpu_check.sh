#!/usr/bin/env bash
# The benchmark's GPU cases on a lent H100/H200, in one go (offline, at most 540 s in all):
#   bench/gpu_check.sh [OUT_DIR]          # default out/bench-gpu; on the device runner: bench/gpu_check.sh "$OUT"
# First the DiT part (Flux.1 / SD3.5-large shapes, 1 / 100 / 1,000 concepts, every case against
# float64, check cases with 300 preserve prompts; tiny Flux / SD3 end to end) into OUT_DIR/dit, at
# most DIT_SECONDS (default 180); then the other parts into OUT_DIR with the time left.
# Uses whatever CUDA torch is there (.venv if it works on this machine, else python3); installs
# nothing. Solver cases always run. The end-to-end cases (10 artists + 200 preserve prompts, and the
# paper's 100 artists + 1,634 preserve prompts) and the encoding case need ComfyUI (carried in the
# working tree as .comfyui/ComfyUI, or $COMFYUI_DIR) and its Python packages; without them they
# are reported as skipped. The tiny checkpoint is built on first use (about 300 MB in .cache/).
set -uo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
OUT_DIR="${1:-out/bench-gpu}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

PY=""
for candidate in .venv/bin/python python3 python; do
  if command -v "$candidate" >/dev/null 2>&1 \
    && "$candidate" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    PY="$candidate"
    break
  fi
done
if [[ -z "$PY" ]]; then
  echo "[gpu_check] no Python here imports a CUDA-enabled torch; nothing measured" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import torch; print("[gpu_check] torch", torch.__version__, "on", torch.cuda.get_device_name())'
if "$PY" -c 'import sys; sys.path.insert(0, "devtools"); from uce_devtools.paths import comfyui_dir; comfyui_dir()' 2>/dev/null; then
  echo "[gpu_check] ComfyUI found: end-to-end and encoding cases will run"
else
  echo "[gpu_check] no ComfyUI checkout: end-to-end and encoding cases will be reported as skipped"
fi

# Small baseline budgets keep the whole run within 540 s; extra arguments pass through to both runs.
TOTAL_SECONDS=540
DIT_SECONDS="${DIT_SECONDS:-180}"
started=$SECONDS
timeout "$DIT_SECONDS" "$PY" bench/run.py --device cuda --out "$OUT_DIR/dit" --only dit \
  --layer-seconds 1 --rest-seconds 3 "${@:2}"
dit_rc=$?
[[ $dit_rc -eq 124 ]] && echo "[gpu_check] DiT part stopped after $DIT_SECONDS s (finished cases: $OUT_DIR/dit/dit-partial.json)" >&2
left=$((TOTAL_SECONDS - (SECONDS - started)))
timeout "$left" "$PY" bench/run.py --device cuda --out "$OUT_DIR" --only solver,e2e,encoding --e2e-paper \
  --layer-seconds 1 --rest-seconds 3 "${@:2}"
rc=$?
[[ $rc -eq 124 ]] && echo "[gpu_check] stopped after $left s" >&2
[[ $rc -eq 0 ]] && rc=$dit_rc
exit $rc
