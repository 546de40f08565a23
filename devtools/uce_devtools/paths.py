"""Well-known locations of the repository, its cache and the ComfyUI checkout used for development."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache"
DEFAULT_COMFYUI_DIR = REPO_ROOT / ".comfyui" / "ComfyUI"


def comfyui_dir() -> Path:
    """Return the ComfyUI checkout to use: $COMFYUI_DIR, else <repo>/.comfyui/ComfyUI.

    Raises FileNotFoundError (with a hint to run scripts/setup.sh) when it holds no ComfyUI.
    """
    configured = os.environ.get("COMFYUI_DIR")
    path = Path(configured).expanduser().resolve() if configured else DEFAULT_COMFYUI_DIR
    if not (path / "main.py").is_file() or not (path / "comfy").is_dir():
        source = "COMFYUI_DIR" if configured else "the default location"
        raise FileNotFoundError(
            f"No ComfyUI checkout at {path} ({source}): expected main.py and comfy/ there. "
            "Run scripts/setup.sh, or set COMFYUI_DIR to a ComfyUI checkout."
        )
    return path
