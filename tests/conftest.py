"""Shared fixtures: a real in-process ComfyUI (CPU) and tiny random-weight models.

Only <repo>/devtools goes on sys.path (for `uce_devtools`); never the repository root, whose
`nodes/` package would shadow ComfyUI's own `nodes` module. The pack itself is imported with
`uce_devtools.comfy_env.load_pack()`, the way ComfyUI imports a custom-node folder.
"""

import os
import sys
import tempfile
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on this 2-core machine, two torch processes
# running at once (e.g. two test runs) are otherwise 10x slower. Must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The preserve lists' disk cache goes to a folder of this test session, never the ComfyUI user folder
# (servers started by the tests inherit it; tests of the cache itself set their own).
os.environ.setdefault("UCE_PRESERVE_CACHE_DIR", tempfile.mkdtemp(prefix="uce-preserve-cache-"))

REPO_ROOT = Path(__file__).resolve().parents[1]
DEVTOOLS_DIR = REPO_ROOT / "devtools"
if str(DEVTOOLS_DIR) not in sys.path:
    sys.path.insert(0, str(DEVTOOLS_DIR))

import pytest  # noqa: E402
from uce_devtools import comfy_env, tiny_models  # noqa: E402
from uce_devtools.graph import run_node  # noqa: E402


class _RepoRootIsNotATestPackage:
    """Collect the repository root as a plain folder, not as a test package.

    The root's __init__.py is the node pack, which only ComfyUI can import. pytest (rootdir =
    repo root) would otherwise import it as a package named after the checkout folder, with that
    folder's parent on sys.path, and fail before running any test.
    """

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if path == REPO_ROOT:
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config):
    # Registered as a plugin (not a conftest hook) so that it also applies to the root folder.
    config.pluginmanager.register(_RepoRootIsNotATestPackage(), "uce-repo-root-is-not-a-test-package")


@pytest.fixture(scope="session")
def solver():
    """The pure-torch `uce_solver` package, imported on its own (no ComfyUI)."""
    return comfy_env.load_solver()


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """ComfyUI's top-level `nodes` module, imported in-process on the CPU.

    Output and temp folders point into pytest's temporary directory, so nodes such as SaveImage
    or CheckpointSave never write into the ComfyUI tree.
    """
    nodes = comfy_env.import_comfyui(cpu=True)
    import folder_paths

    comfy_env.set_output_dir(tmp_path_factory.mktemp("comfy_output"))
    folder_paths.set_temp_directory(str(tmp_path_factory.mktemp("comfy_temp")))
    return nodes


@pytest.fixture(scope="session")
def pack(comfy):
    """This node pack, imported like ComfyUI imports a custom-node folder, its nodes registered."""
    return comfy_env.load_pack()


@pytest.fixture(scope="session")
def tiny_sd15_path(comfy) -> str:
    """File name (as CheckpointLoaderSimple takes it) of the cached tiny SD1.5 checkpoint."""
    path = tiny_models.tiny_sd15_checkpoint()
    comfy_env.register_checkpoint_dir(path.parent)
    return path.name


@pytest.fixture(scope="session")
def sd15(tiny_sd15_path):
    """(MODEL, CLIP, VAE) of the tiny SD1.5 checkpoint, loaded by CheckpointLoaderSimple."""
    return run_node("CheckpointLoaderSimple", ckpt_name=tiny_sd15_path)


@pytest.fixture(scope="session")
def tiny_lora_name(sd15) -> str:
    """File name (as LoraLoader takes it) of a tiny LoRA on the SD1.5 UNet's cross-attention."""
    path = tiny_models.tiny_lora(sd15[0])
    comfy_env.register_lora_dir(path.parent)
    return path.name


@pytest.fixture(scope="session")
def sd2_family(comfy) -> tiny_models.TinyFamilyModel:
    """Reduced random SD2.x-family MODEL + CLIP (conditioning width 1024)."""
    return tiny_models.sd2_family_model()


@pytest.fixture(scope="session")
def sdxl_family(comfy) -> tiny_models.TinyFamilyModel:
    """Reduced random SDXL-family MODEL + CLIP (conditioning width 2048, pooled 1280)."""
    return tiny_models.sdxl_family_model()


@pytest.fixture(scope="session")
def tiny_family(comfy):
    """``get(name)``: the tiny random MODEL + CLIP of a DiT family, built once per session.

    Names: flux, chroma, sd3 (tiny_t5_families), qwen_image, z_image, lumina2, flux2 (tiny_llm_families),
    wan21_t2v, wan21_i2v, wan22_ti2v (tiny_wan_families), ltxv, pixart_alpha, pixart_sigma, cosmos_predict2
    (tiny_xattn_families), hidream (tiny_hidream), hunyuan_dit (tiny_hunyuan_dit).
    """
    from uce_devtools import (
        tiny_hidream,
        tiny_hunyuan_dit,
        tiny_llm_families,
        tiny_t5_families,
        tiny_wan_families,
        tiny_xattn_families,
    )

    builders = {
        "flux": tiny_t5_families.flux_model,
        "chroma": tiny_t5_families.chroma_model,
        "sd3": tiny_t5_families.sd3_model,
        "qwen_image": tiny_llm_families.qwen_image_model,
        "z_image": tiny_llm_families.z_image_model,
        "lumina2": tiny_llm_families.lumina2_model,
        "flux2": tiny_llm_families.flux2_model,
        "wan21_t2v": tiny_wan_families.wan21_t2v_model,
        "wan21_i2v": tiny_wan_families.wan21_i2v_model,
        "wan22_ti2v": tiny_wan_families.wan22_ti2v_model,
        "ltxv": tiny_xattn_families.ltxv_model,
        "pixart_alpha": tiny_xattn_families.pixart_alpha_model,
        "pixart_sigma": tiny_xattn_families.pixart_sigma_model,
        "cosmos_predict2": tiny_xattn_families.cosmos_predict2_model,
        "hidream": tiny_hidream.hidream_model,
        "hunyuan_dit": tiny_hunyuan_dit.hunyuan_dit_model,
    }
    built: dict = {}

    def get(name: str) -> tiny_models.TinyFamilyModel:
        if name not in built:
            built[name] = builders[name]()
        return built[name]

    return get
