"""Run a real ComfyUI server (main.py) in a subprocess, with this pack linked in, and talk to it.

    with ComfyServer.start(base_dir, checkpoints=[tiny_sd15_checkpoint()]) as server:
        info = server.object_info()
        history = server.run_prompt(api_prompt)

The server gets its own `--base-directory` (models/, custom_nodes/, input/, output/, temp/, user/
under `base_dir`): the pack is a symlink `custom_nodes/<pack_name> -> repository` and each
checkpoint a symlink in `models/checkpoints/`, so nothing is written into the ComfyUI tree.
It listens on 127.0.0.1 on a free port, runs on the CPU, and is started in its own process group
so that stop() (always called by the context manager) ends it and every child it made. All waits
are bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .paths import REPO_ROOT, comfyui_dir

DEFAULT_PACK_NAME = "comfyui-uce"
IMPORT_FAILURE_MARKERS = ("IMPORT FAILED", "Cannot import")


class ServerError(RuntimeError):
    """The server did not start, died, or did not answer in time."""


class PromptRejected(RuntimeError):
    """`POST /prompt` answered an error (HTTP 400 with `error` / `node_errors`)."""

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        super().__init__(f"/prompt answered HTTP {status}: {json.dumps(body)[:2000]}")


def artifacts_dir(*parts: str) -> Path:
    """Folder for test artifacts (screenshots, logs, timings): $UCE_ARTIFACTS_DIR or <repo>/out/artifacts."""
    root = Path(os.environ.get("UCE_ARTIFACTS_DIR") or REPO_ROOT / "out" / "artifacts")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_base_dir(
    base_dir: str | Path,
    checkpoints: Iterable[str | Path] = (),
    diffusion_models: Iterable[str | Path] = (),
    pack_root: str | Path | None = REPO_ROOT,
    pack_name: str = DEFAULT_PACK_NAME,
) -> Path:
    """Create a ComfyUI base directory: models/{checkpoints,diffusion_models} links, custom_nodes/<pack>."""
    base = Path(base_dir).resolve()
    for sub in ("custom_nodes", "models/checkpoints", "models/diffusion_models", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for folder, files in (("checkpoints", checkpoints), ("diffusion_models", diffusion_models)):
        for file in files:
            file = Path(file).resolve()
            _symlink(base / "models" / folder / file.name, file)
    if pack_root is not None:
        _symlink(base / "custom_nodes" / pack_name, Path(pack_root).resolve())
    return base


class ComfyServer:
    """A ComfyUI main.py subprocess. Use `ComfyServer.start(...)` (a context manager)."""

    def __init__(
        self,
        base_dir: str | Path,
        *,
        comfy_dir: str | Path | None = None,
        python: str | Path | None = None,
        frontend: bool = False,
        output_dir: str | Path | None = None,
        extra_args: Iterable[str] = (),
        log_path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ):
        self.base_dir = Path(base_dir).resolve()
        self.comfy_dir = Path(comfy_dir).resolve() if comfy_dir else comfyui_dir()
        self.python = str(python or sys.executable)
        self.frontend = frontend
        self.output_dir = Path(output_dir).resolve() if output_dir else self.base_dir / "output"
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path) if log_path else self.base_dir / "comfyui-server.log"
        self.extra_env = dict(env or {})
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        base_dir: str | Path,
        *,
        checkpoints: Iterable[str | Path] = (),
        diffusion_models: Iterable[str | Path] = (),
        pack_root: str | Path | None = REPO_ROOT,
        pack_name: str = DEFAULT_PACK_NAME,
        timeout: float = 180.0,
        **options: Any,
    ) -> "ComfyServer":
        """Prepare `base_dir`, start the server and wait (at most `timeout` s) until it answers."""
        prepare_base_dir(base_dir, checkpoints, diffusion_models, pack_root, pack_name)
        server = cls(base_dir, **options)
        server.launch()
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def command(self) -> list[str]:
        args = [
            self.python, "-u", str(self.comfy_dir / "main.py"),
            "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch",
            "--base-directory", str(self.base_dir),
            "--output-directory", str(self.output_dir),
            "--database-url", "sqlite:///:memory:",
        ]
        if not self.frontend:
            empty = self.base_dir / "empty-frontend"
            empty.mkdir(exist_ok=True)
            args += ["--front-end-root", str(empty)]
        return args + self.extra_args

    def launch(self) -> None:
        if self.process is not None:
            raise ServerError("server already launched")
        self.port = free_port()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update({
            "OMP_WAIT_POLICY": "PASSIVE",
            "PYTHONDONTWRITEBYTECODE": "1",  # never write into the ComfyUI tree
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        try:
            self.process = subprocess.Popen(
                self.command(), cwd=str(self.base_dir), env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            log.close()

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Wait until `/system_stats` answers; raise ServerError (with the log's tail) otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=5)
                return
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.5)
        raise ServerError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """End the server's whole process group: SIGTERM, then SIGKILL after `timeout` s."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(process.pid, signal.SIGKILL)  # children that outlived the leader
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> "ComfyServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- log -------------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    def import_failures(self, name: str | None = None) -> list[str]:
        """Log lines that report a custom-node import failure (only those naming `name`, if given).

        ComfyUI logs its own optional comfy_extras that lack a dependency (torchaudio, kornia …) the
        same way; pass the pack's folder name to see only the pack's failures.
        """
        lines = [line for line in self.log_text().splitlines() if any(m in line for m in IMPORT_FAILURE_MARKERS)]
        return [line for line in lines if name is None or name in line]

    # -- HTTP ------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        status, data = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ServerError(f"GET {path} answered HTTP {status}: {data[:500]!r}")
        return json.loads(data)

    def post_json(self, path: str, body: Any, timeout: float = 30.0) -> tuple[int, Any]:
        status, data = self.request("POST", path, body, timeout=timeout)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, data.decode(errors="replace")

    def object_info(self, class_name: str | None = None) -> dict:
        return self.get_json("/object_info" + (f"/{class_name}" if class_name else ""), timeout=60)

    # -- prompts ---------------------------------------------------------------------------------
    def queue_prompt(self, prompt: Mapping[str, Any]) -> str:
        """POST /prompt; return the prompt id, or raise PromptRejected."""
        status, body = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            raise PromptRejected(status, body)
        if body.get("node_errors"):
            raise PromptRejected(status, body)
        return body["prompt_id"]

    def wait_history(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """Poll /history/<id> until the prompt is done; return its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise ServerError(f"ComfyUI died while running prompt {prompt_id}:\n{self.log_tail()}")
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status"):  # an entry appears once the prompt is done
                return entry
            time.sleep(0.2)
        raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run_prompt(self, prompt: Mapping[str, Any], timeout: float = 300.0) -> dict:
        """Queue `prompt`, wait for it, return its history entry (with 'prompt_id' and 'seconds' added)."""
        started = time.monotonic()
        prompt_id = self.queue_prompt(prompt)
        entry = self.wait_history(prompt_id, timeout)
        return {**entry, "prompt_id": prompt_id, "seconds": time.monotonic() - started}

    def output_files(self, entry: Mapping[str, Any], node_id: str | None = None, kind: str = "images") -> list[Path]:
        """Paths of the files a history entry's outputs list (SaveImage images, …)."""
        paths = []
        for output_id, output in entry.get("outputs", {}).items():
            if node_id is not None and output_id != str(node_id):
                continue
            for item in output.get(kind, []):
                if item.get("type", "output") != "output":
                    continue
                paths.append(self.output_dir / item.get("subfolder", "") / item["filename"])
        return paths


def status_messages(entry: Mapping[str, Any], kind: str) -> list[dict]:
    """The data of a history entry's status messages of one kind ('execution_error', 'execution_cached' …)."""
    return [data for name, data in entry.get("status", {}).get("messages", []) if name == kind]


def _symlink(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.is_symlink() and link.resolve() == target:
            return
        raise FileExistsError(f"{link} exists and does not point at {target}")
    link.symlink_to(target, target_is_directory=target.is_dir())


def _die_with_parent() -> None:
    """In the child, before exec: have Linux SIGKILL it when the process that started it dies
    (even by SIGKILL, when no `finally` runs), so that no server outlives its test run."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
