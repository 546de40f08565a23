"""Import a real ComfyUI in-process, and load this repository the way ComfyUI loads a custom-node folder.

ComfyUI's own top-level modules (`nodes`, `folder_paths`, `comfy`, `utils`, ...) are imported from the
ComfyUI checkout, which goes first on sys.path. The repository root never goes on sys.path: its
`nodes/` package would shadow ComfyUI's `nodes` module. The pack is imported as a package instead.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from types import ModuleType

from .paths import REPO_ROOT, comfyui_dir

PACK_MODULE_NAME = "comfyui_uce"
SOLVER_MODULE_NAME = "uce_solver"

_extra_nodes_failed: list[str] | None = None


def import_comfyui(cpu: bool = True) -> ModuleType:
    """Import ComfyUI in-process (idempotent) and return its top-level `nodes` module.

    With cpu=True, sets `comfy.cli_args.args.cpu` before `comfy.model_management` is imported, so
    every model runs on the CPU (must happen before anything else imports ComfyUI).
    """
    root = comfyui_dir()
    # As ComfyUI's main.py does, plus: never reach a model hub from tests.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if "nodes" not in sys.modules and (not sys.path or sys.path[0] != str(root)):
        sys.path[:] = [entry for entry in sys.path if entry != str(root)]
        sys.path.insert(0, str(root))  # ComfyUI's `nodes`, `utils`, ... win over any other folder

    import comfy.cli_args

    if cpu:
        comfy.cli_args.args.cpu = True
    import comfy.model_management

    if cpu and comfy.model_management.cpu_state != comfy.model_management.CPUState.CPU:
        raise RuntimeError(
            "comfy.model_management was imported before import_comfyui(cpu=True) set args.cpu; "
            "call import_comfyui() first in the process."
        )

    import nodes

    nodes_file = Path(nodes.__file__).resolve()
    if nodes_file != root / "nodes.py":
        raise RuntimeError(
            f"`nodes` resolves to {nodes_file}, not ComfyUI's {root / 'nodes.py'}: something put a "
            "folder with a `nodes` package (such as this repository's root) on sys.path."
        )
    return nodes


def init_extra_nodes() -> list[str]:
    """Load ComfyUI's built-in comfy_extras nodes (e.g. CLIPTextEncodeSDXL, ModelSamplingDiscrete).

    Not needed for the core nodes (CheckpointLoaderSimple, KSampler, LoraLoader, ...). No custom
    nodes and no API nodes are loaded. Returns the extras files that failed to import (missing
    optional dependencies such as torchaudio or opencv); calling it again is harmless.
    """
    global _extra_nodes_failed
    nodes = import_comfyui()
    if _extra_nodes_failed is None:
        asyncio.run(nodes.init_public_apis())
        _extra_nodes_failed = asyncio.run(nodes.init_builtin_extra_nodes())
    return list(_extra_nodes_failed)


def register_checkpoint_dir(path: str | Path) -> None:
    """Add `path` to ComfyUI's "checkpoints" model folders (CheckpointLoaderSimple looks there)."""
    _add_model_folder("checkpoints", path)


def register_lora_dir(path: str | Path) -> None:
    """Add `path` to ComfyUI's "loras" model folders (LoraLoader looks there)."""
    _add_model_folder("loras", path)


def set_output_dir(path: str | Path) -> None:
    """Point ComfyUI's output directory (SaveImage, CheckpointSave, ...) at `path`, creating it."""
    import_comfyui()
    import folder_paths

    Path(path).mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(path))


def load_pack(name: str = PACK_MODULE_NAME, root: str | Path | None = None, register: bool = True) -> ModuleType:
    """Import the node pack at `root` (default: this repository) as package `name`, like ComfyUI does.

    Imports ComfyUI first. With register=True, the pack's nodes are added to ComfyUI's
    NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS as ComfyUI does it (NODE_CLASS_MAPPINGS if
    present, else the V3 `comfy_entrypoint` extension's node list; existing entries are never
    replaced), so `graph.run_node` can run them by class name. Idempotent: returns the module
    already in sys.modules under `name` when it was loaded from the same folder.
    """
    nodes = import_comfyui()
    module = _import_package(name, Path(root) if root is not None else REPO_ROOT)
    if register:
        for class_name, node_class in _pack_node_classes(module).items():
            nodes.NODE_CLASS_MAPPINGS.setdefault(class_name, node_class)
        nodes.NODE_DISPLAY_NAME_MAPPINGS.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})
    return module


def load_solver(root: str | Path | None = None) -> ModuleType:
    """Import the repository's `uce_solver/` folder (or `root`) as the top-level package `uce_solver`.

    Does not import ComfyUI.
    """
    return _import_package(SOLVER_MODULE_NAME, Path(root) if root is not None else REPO_ROOT / SOLVER_MODULE_NAME)


def _pack_node_classes(module: ModuleType) -> dict:
    """The node classes a pack module declares: NODE_CLASS_MAPPINGS, else its V3 extension's nodes."""
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if mappings is not None:
        return dict(mappings)
    entrypoint = getattr(module, "comfy_entrypoint", None)
    if entrypoint is None:
        return {}

    async def node_list():
        extension = entrypoint()
        if inspect.isawaitable(extension):
            extension = await extension
        return await extension.get_node_list()

    return {node_class.GET_SCHEMA().node_id: node_class for node_class in asyncio.run(node_list())}


def _add_model_folder(folder_name: str, path: str | Path) -> None:
    import_comfyui()
    import folder_paths

    Path(path).mkdir(parents=True, exist_ok=True)
    folder_paths.add_model_folder_path(folder_name, str(Path(path).resolve()))


def _import_package(name: str, package_dir: Path) -> ModuleType:
    """Import `package_dir/__init__.py` as package `name`, registering it in sys.modules first."""
    package_dir = package_dir.resolve()
    init_file = package_dir / "__init__.py"
    existing = sys.modules.get(name)
    if existing is not None:
        existing_file = getattr(existing, "__file__", None)
        if existing_file is not None and Path(existing_file).resolve() == init_file:
            return existing
        raise RuntimeError(f"A different module is already imported as {name!r}: {existing_file}")
    if not init_file.is_file():
        raise FileNotFoundError(f"No package to import as {name!r}: {init_file} is missing")

    spec = importlib.util.spec_from_file_location(name, init_file, submodule_search_locations=[str(package_dir)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        for sub in [key for key in sys.modules if key.startswith(name + ".")]:
            sys.modules.pop(sub, None)
        raise
    return module
