"""ComfyUI's own frontend in headless Chromium: what the browser tests and the thumbnails share.

Two frontends (comfyui-frontend-package builds):

- the one ComfyUI 0.3.75 pins (`comfyui-frontend-package==...` among scripts/setup.sh's dev
  packages), installed in the venv and served by default; its classic LiteGraph canvas draws the
  nodes and widgets;
- the newest one (`LATEST_FRONTEND_VERSION` in scripts/test.sh, which installs it into
  .cache/frontend-latest/, git-ignored), served with ComfyUI's `--front-end-root` and tested with
  "Nodes 2.0" on (nodes and widgets are Vue components, not canvas drawings).

tests/browser/load_workflows.mjs drives the page (playwright-core from .cache/node/, which
scripts/test.sh installs, with the system Chromium).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .paths import CACHE_DIR, REPO_ROOT

SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup.sh"
TEST_SCRIPT = REPO_ROOT / "scripts" / "test.sh"
DRIVER = REPO_ROOT / "tests" / "browser" / "load_workflows.mjs"
LATEST_FRONTEND_DIR = CACHE_DIR / "frontend-latest"
FRONTEND_PACKAGE = "comfyui_frontend_package"

# The folder each model loader of the example workflows reads its files from (ComfyUI's names).
LOADER_FOLDERS = {
    "CheckpointLoaderSimple": "checkpoints",
    "UNETLoader": "diffusion_models",
    "CLIPLoader": "text_encoders",
    "DualCLIPLoader": "text_encoders",
    "TripleCLIPLoader": "text_encoders",
    "QuadrupleCLIPLoader": "text_encoders",
    "VAELoader": "vae",
    "LoraLoader": "loras",
    "LoraLoaderModelOnly": "loras",
}
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


@dataclass(frozen=True)
class Frontend:
    """A frontend build to test with: its version, where its static files are, and the renderer."""

    version: str
    static_root: Path | None  # None: the package in the venv, ComfyUI's default
    nodes2: bool  # "Nodes 2.0" (Vue nodes) switched on

    @property
    def id(self) -> str:
        return f"frontend-{self.version}"

    def server_args(self) -> list[str]:
        return ["--front-end-root", str(self.static_root)] if self.static_root else []

    def driver_args(self) -> list[str]:
        return ["--nodes2"] if self.nodes2 else []

    def missing(self) -> str | None:
        """Why this frontend cannot be served here (None when it can)."""
        if self.static_root is None:
            try:
                installed = importlib.metadata.version("comfyui-frontend-package")
            except importlib.metadata.PackageNotFoundError:
                return "comfyui-frontend-package is not installed in this Python (scripts/setup.sh installs it)"
            if installed != self.version:
                return f"comfyui-frontend-package {installed} is installed, scripts/setup.sh pins {self.version} (re-run it)"
            return None
        dist_info = self.static_root.parents[1] / f"comfyui_frontend_package-{self.version}.dist-info"
        if not (self.static_root / "index.html").is_file() or not dist_info.is_dir():
            return (f"comfyui-frontend-package {self.version} is not installed in {LATEST_FRONTEND_DIR} "
                    "(scripts/test.sh installs it with pip; it could not, or has not run since the pin changed)")
        return None


def pinned_versions() -> tuple[str, str]:
    """(the frontend ComfyUI pins, the newest frontend), as scripts/setup.sh and scripts/test.sh pin them."""
    pinned = re.search(r'"comfyui-frontend-package==([0-9][^"\s]*)"', SETUP_SCRIPT.read_text(encoding="utf-8"))
    latest = re.search(r'^LATEST_FRONTEND_VERSION="([0-9][^"]*)"', TEST_SCRIPT.read_text(encoding="utf-8"), re.M)
    if not pinned:
        raise ValueError(f"{SETUP_SCRIPT} pins no comfyui-frontend-package")
    if not latest:
        raise ValueError(f"{TEST_SCRIPT} sets no LATEST_FRONTEND_VERSION")
    return pinned.group(1), latest.group(1)


def frontends() -> list[Frontend]:
    """The frontends the browser tests run against: ComfyUI's pinned one, then the newest."""
    pinned, latest = pinned_versions()
    return [
        Frontend(pinned, None, nodes2=False),
        Frontend(latest, LATEST_FRONTEND_DIR / FRONTEND_PACKAGE / "static", nodes2=True),
    ]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("UCE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def node_modules() -> Path:
    return Path(os.environ.get("UCE_NODE_MODULES") or CACHE_DIR / "node" / "node_modules")


def missing_tools() -> list[str]:
    """What the browser driver needs and this machine lacks (node, Chromium, playwright-core)."""
    missing = []
    if not shutil.which("node"):
        missing.append("node (Node.js) is not on PATH")
    if not chromium_path():
        missing.append("Chromium not found (apt-get install chromium chromium-driver, or set UCE_CHROMIUM)")
    if not (node_modules() / "playwright-core" / "package.json").is_file():
        missing.append(f"playwright-core not installed in {node_modules()} (scripts/test.sh installs it, or set UCE_NODE_MODULES)")
    return missing


def model_files(workflows: Iterable[Path]) -> dict[str, set[str]]:
    """{models folder: file names} that the workflows' loader nodes name."""
    wanted: dict[str, set[str]] = {}
    for path in workflows:
        workflow = json.loads(Path(path).read_text(encoding="utf-8"))
        for node in workflow["nodes"]:
            folder = LOADER_FOLDERS.get(node["type"])
            for value in node.get("widgets_values") or []:
                if folder and isinstance(value, str) and value.lower().endswith(MODEL_SUFFIXES):
                    wanted.setdefault(folder, set()).add(value)
    return wanted


def add_model_placeholders(base_dir: Path, workflows: Iterable[Path]) -> list[Path]:
    """Empty files under `base_dir`/models/ named as the workflows' loaders name their models.

    The frontend then finds every model a workflow names in the server's lists (newer frontends
    flag a loader whose file the server lacks), as on a machine that has the models. Nothing is
    ever run, so the files stay empty.
    """
    made = []
    for folder, names in model_files(workflows).items():
        for name in sorted(names):
            path = Path(base_dir) / "models" / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.touch()
            made.append(path)
    return made


def run_driver(url: str, report: Path, shots: Path, files: Sequence[Path], *, extra: Sequence[str] = (),
               timeout: float = 420) -> subprocess.CompletedProcess:
    """Run load_workflows.mjs against the server at `url`; raises subprocess.TimeoutExpired."""
    command = [
        "node", str(DRIVER), "--url", url, "--out", str(report), "--shots", str(shots),
        "--chromium", chromium_path() or "/usr/bin/chromium", "--modules", str(node_modules()), *extra, *map(str, files),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
