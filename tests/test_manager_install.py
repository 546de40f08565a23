"""Install the pack the way ComfyUI Manager does, into a fresh ComfyUI tree, and check it loads.

Manager: `git clone <repo> ComfyUI/custom_nodes/<repo name>`, then `pip install` each line of the
pack's requirements.txt (skipping comments, blanks and torch/torchvision/torchaudio, which must stay
the user's own build), then `python install.py` if the pack has one; the next ComfyUI start imports
it. Here the repository is this checkout's committed HEAD, the ComfyUI tree a copy of the pinned
one, and the Python the test's own (ComfyUI's environment).

Also runs `comfy node validate` (comfy-cli, the Comfy Registry's publishing check) in the clone; it
needs no network (comfy-cli goes into its own venv under .cache/, installed from the package index
on first use).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from uce_devtools.paths import CACHE_DIR, REPO_ROOT, comfyui_dir
from uce_devtools.server import ComfyServer, artifacts_dir

REPO_NAME = "comfyui-unified-concept-editing"  # what Manager names the folder: the repository's name
UCE_CLASSES = ("UCEEraseConcepts", "UCEModerate", "UCEDebias")
MANAGER_SKIPPED = {"torch", "torchvision", "torchaudio"}
COMFY_CLI_VERSION = "1.23.0"
COMFY_CLI_VENV = CACHE_DIR / f"comfy-cli-{COMFY_CLI_VERSION}"


def requirement_commands(requirements_text: str) -> list[list[str]]:
    """The `pip install` argument lists Manager runs for a requirements.txt, one per line."""
    commands = []
    for raw in requirements_text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        name = line.split(";", 1)[0].strip()
        for separator in ("[", "=", "<", ">", "~", "!", " "):
            name = name.split(separator, 1)[0]
        if name.lower() in MANAGER_SKIPPED:
            continue
        # one argument per requirement (markers included), as Manager passes it; option lines split
        commands.append(["install", *shlex.split(line)] if line.startswith("-") else ["install", line])
    return commands


def test_requirement_lines_are_handled_like_manager():
    text = "# a comment\n\nnumpy>=1.25 # inline\ntorch==2.1\ntorchvision\nsome-pkg[extra]==1.0 ; python_version>'3.9'\n"
    text += "--extra-index-url https://example.invalid/simple other\n"
    assert requirement_commands(text) == [
        ["install", "numpy>=1.25"],
        ["install", "some-pkg[extra]==1.0 ; python_version>'3.9'"],
        ["install", "--extra-index-url", "https://example.invalid/simple", "other"],
    ]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if not (REPO_ROOT / ".git").exists() or not shutil.which("git"):
        pytest.skip(f"MANAGER INSTALL TEST SKIPPED: {REPO_ROOT} is not a git checkout (nothing to clone)")
    root = tmp_path_factory.mktemp("manager_install")
    comfy = root / "ComfyUI"
    shutil.copytree(comfyui_dir(), comfy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "user", "output", "temp"))
    clone = comfy / "custom_nodes" / REPO_NAME
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(clone)], check=True, timeout=300)

    steps = []
    requirements = clone / "requirements.txt"
    if requirements.is_file():
        for args in requirement_commands(requirements.read_text(encoding="utf-8")):
            steps.append(" ".join(args))
            subprocess.run([sys.executable, "-m", "pip", *args], check=True, timeout=900, cwd=clone)
    if (clone / "install.py").is_file():
        steps.append("python install.py")
        subprocess.run([sys.executable, "install.py"], check=True, timeout=900, cwd=clone)

    server = ComfyServer.start(comfy, comfy_dir=comfy, pack_root=None, output_dir=root / "output", timeout=240)
    try:
        yield {"server": server, "clone": clone, "steps": steps, "object_info": server.object_info()}
    finally:
        server.stop()
        (artifacts_dir("manager_install") / "comfyui-server.log").write_text(server.log_text(), encoding="utf-8")


def test_clone_is_the_committed_head(installed):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    cloned = subprocess.run(["git", "rev-parse", "HEAD"], cwd=installed["clone"], capture_output=True, text=True, check=True)
    assert cloned.stdout == head.stdout
    assert not (installed["clone"] / ".venv").exists()  # nothing but the repository came along


def test_no_install_step_pulls_in_torch(installed):
    assert all("torch" not in step.split()[1:2] for step in installed["steps"]), installed["steps"]


def test_installed_pack_imports_and_lists_its_nodes(installed):
    server, info = installed["server"], installed["object_info"]
    assert server.import_failures(REPO_NAME) == [], server.log_tail()
    for class_name in UCE_CLASSES:
        assert class_name in info, f"{class_name} missing from /object_info:\n{server.log_tail()}"
        assert info[class_name]["python_module"] == f"custom_nodes.{REPO_NAME}"


def test_installed_pack_serves_its_workflows_and_web_extension(installed):
    server = installed["server"]
    templates = server.get_json("/workflow_templates")
    assert sorted(templates.get(REPO_NAME, [])) == sorted(p.stem for p in (installed["clone"] / "workflows").glob("*.json"))
    extensions = server.get_json("/extensions")
    ours = [e for e in extensions if e.endswith("/uce_presets.js")]
    assert ours == [f"/extensions/{REPO_NAME}/js/uce_presets.js"], ours


def comfy_cli() -> Path:
    """comfy-cli in its own venv under .cache/ (created on first use from the package index)."""
    comfy = COMFY_CLI_VENV / "bin" / "comfy"
    done = COMFY_CLI_VENV / ".installed"
    if done.is_file() and comfy.is_file():
        return comfy
    shutil.rmtree(COMFY_CLI_VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(COMFY_CLI_VENV)], check=True, timeout=300)
    install = subprocess.run(
        [str(COMFY_CLI_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", f"comfy-cli=={COMFY_CLI_VERSION}"],
        capture_output=True, text=True, timeout=900,
    )
    if install.returncode != 0:
        shutil.rmtree(COMFY_CLI_VENV, ignore_errors=True)
        pytest.skip(f"COMFY NODE VALIDATE SKIPPED: comfy-cli=={COMFY_CLI_VERSION} could not be installed:\n{install.stderr[-2000:]}")
    done.touch()
    return comfy


def test_comfy_node_validate_passes_in_the_clone(installed, tmp_path):
    comfy = comfy_cli()
    result = subprocess.run(
        [str(comfy), "--skip-prompt", "--no-enable-telemetry", "node", "validate"],
        cwd=installed["clone"], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env={"PATH": f"{comfy.parent}:/usr/bin:/bin", "HOME": str(tmp_path), "DO_NOT_TRACK": "1"},
    )
    output = result.stdout + result.stderr
    (artifacts_dir("manager_install") / "comfy-node-validate.txt").write_text(output, encoding="utf-8")
    assert result.returncode == 0, output
    assert "All validation checks passed" in output, output
    assert "Security warnings" not in output and "Error" not in output, output
