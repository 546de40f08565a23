#!/usr/bin/env bash
# The test command (README, CI): set up, install what the browser tests need where this machine
# allows it, then run pytest over the whole tests/ folder. Extra arguments go to pytest
# (e.g. scripts/test.sh -x -k server).
#
# Browser tests need Chromium (Debian: apt-get install chromium chromium-driver; installed here when
# missing and apt works) and playwright-core from npm (installed into .cache/node/, git-ignored; it
# never downloads a browser: the tests use the system Chromium). Where either cannot be installed,
# those tests are skipped and say why. They run against two frontends: the one ComfyUI pins (in the
# venv, scripts/setup.sh) and the newest comfyui-frontend-package, LATEST_FRONTEND_VERSION below,
# installed with pip into .cache/frontend-latest/ (git-ignored; ComfyUI serves it with
# --front-end-root). Where that install fails, only the tests against it are skipped.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
export OMP_WAIT_POLICY=PASSIVE  # 2-core machines: idle OpenMP threads must not spin
PLAYWRIGHT_CORE_VERSION="1.64.1"
LATEST_FRONTEND_VERSION="1.58.1"  # the newest comfyui-frontend-package (devtools/uce_devtools/browser.py reads it here)
NODE_DIR="$REPO_ROOT/.cache/node"
LATEST_FRONTEND_DIR="$REPO_ROOT/.cache/frontend-latest"
FRONTEND_TMP=""
trap '[[ -z "$FRONTEND_TMP" ]] || rm -rf "$FRONTEND_TMP"' EXIT

say() { printf '[test] %s\n' "$*"; }
warn() { printf '[test] WARNING: %s\n' "$*" >&2; }

install_chromium() {
  if [[ -x /usr/bin/chromium ]]; then
    return
  fi
  local sudo=""
  if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      warn "Chromium is missing and apt-get needs root: browser tests will be skipped"; return; fi
  fi
  if ! command -v apt-get >/dev/null; then
    warn "Chromium is missing and there is no apt-get: browser tests will be skipped"; return
  fi
  say "installing Debian's chromium and chromium-driver (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; then
    $sudo apt-get update -q >/dev/null 2>&1 || true
    $sudo apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
      || warn "apt-get could not install chromium: browser tests will be skipped"
  fi
}

install_playwright_core() {
  local installed="$NODE_DIR/node_modules/playwright-core/package.json"
  if [[ -f "$installed" ]] && grep -q "\"version\": \"$PLAYWRIGHT_CORE_VERSION\"" "$installed"; then
    return
  fi
  if ! command -v npm >/dev/null; then
    warn "npm is missing: browser tests will be skipped"; return
  fi
  say "installing playwright-core@$PLAYWRIGHT_CORE_VERSION into .cache/node (npm; no browser download)"
  mkdir -p "$NODE_DIR"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$NODE_DIR" --no-audit --no-fund --silent \
    "playwright-core@$PLAYWRIGHT_CORE_VERSION" >/dev/null \
    || warn "npm could not install playwright-core: browser tests will be skipped"
}

install_latest_frontend() {  # pip install --target into a new folder, which then replaces the old one
  local package="comfyui-frontend-package==$LATEST_FRONTEND_VERSION"
  if [[ -d "$LATEST_FRONTEND_DIR/comfyui_frontend_package-$LATEST_FRONTEND_VERSION.dist-info" \
        && -f "$LATEST_FRONTEND_DIR/comfyui_frontend_package/static/index.html" ]]; then
    return
  fi
  say "installing $package into .cache/frontend-latest (pip)"
  mkdir -p "$REPO_ROOT/.cache"
  FRONTEND_TMP="$(mktemp -d "$REPO_ROOT/.cache/.frontend-latest.XXXXXX")"
  if .venv/bin/python -m pip install --quiet --no-deps --no-compile --target "$FRONTEND_TMP/target" "$package" \
       2>&1 | { grep -v "^WARNING: Location 'file:" || true; } \
     && [[ -f "$FRONTEND_TMP/target/comfyui_frontend_package/static/index.html" ]]; then
    rm -rf "$LATEST_FRONTEND_DIR"
    mv "$FRONTEND_TMP/target" "$LATEST_FRONTEND_DIR"
  else
    warn "pip could not install $package: the browser tests against it will be skipped"
  fi
  rm -rf "$FRONTEND_TMP"
  FRONTEND_TMP=""
}

start=$SECONDS
scripts/setup.sh
install_chromium
install_playwright_core
install_latest_frontend
say "running pytest (setup took $((SECONDS - start)) s)"
# -rsxX: list skipped tests and expected failures with their reasons
exec .venv/bin/python -m pytest -rsxX tests "$@"
