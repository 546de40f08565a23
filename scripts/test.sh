#!/usr/bin/env bash
# The test command (README, CI): set up, install what the browser tests need where this machine
# allows it, then run pytest over the whole tests/ folder. Extra arguments go to pytest
# (e.g. scripts/test.sh -x -k server).
#
# Browser tests need Chromium (Debian: apt-get install chromium chromium-driver; installed here when
# missing and apt works) and playwright-core from npm (installed into .cache/node/, git-ignored; it
# never downloads a browser: the tests use the system Chromium). Where either cannot be installed,
# those tests are skipped and say why.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
export OMP_WAIT_POLICY=PASSIVE  # 2-core machines: idle OpenMP threads must not spin
PLAYWRIGHT_CORE_VERSION="1.64.1"
NODE_DIR="$REPO_ROOT/.cache/node"

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

start=$SECONDS
scripts/setup.sh
install_chromium
install_playwright_core
say "running pytest (setup took $((SECONDS - start)) s)"
# -rsxX: list skipped tests and expected failures with their reasons
exec .venv/bin/python -m pytest -rsxX tests "$@"
