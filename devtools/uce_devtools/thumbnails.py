"""Make the Templates-browser thumbnail (<workflow>.jpg) of UI-format workflows: a screenshot of the
workflow as ComfyUI's own frontend shows it.

A real ComfyUI server (this pack linked in, the frontend ComfyUI pins) is started, and headless
Chromium loads each workflow (tests/browser/load_workflows.mjs --thumbnails: menus hidden, the
whole graph fitted to a WIDTH x HEIGHT page); each picture is saved as a JPEG under MAX_BYTES.
Needs what the browser tests need: node, Chromium and playwright-core (scripts/test.sh installs
the last two).

1280 x 720, not 640 x 360: fitted to 640 pixels, an example graph (about 2,300 units wide) is drawn
at a quarter of its size and no title or value can be read; at 1280 they can. The Templates
browser scales the picture down to its card anyway.

    .venv/bin/python devtools/uce_devtools/thumbnails.py workflows/*.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `uce_devtools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402
from uce_devtools import browser  # noqa: E402
from uce_devtools.server import ComfyServer  # noqa: E402

WIDTH, HEIGHT = 1280, 720  # also the page's size (CSS pixels, one device pixel each) for the screenshot
MAX_BYTES = 110_000
PACK_NAME = "comfyui-uce"


def screenshots(workflows: list[Path], out_dir: Path, timeout: float = 600) -> dict[str, Path]:
    """{workflow name: PNG} of each workflow loaded in the pinned frontend (a server is started)."""
    missing = browser.missing_tools()
    frontend = browser.frontends()[0]
    if frontend.missing():
        missing.append(frontend.missing())
    if missing:
        raise RuntimeError("cannot drive the frontend here: " + "; ".join(missing))
    base = out_dir / "server"
    browser.add_model_placeholders(base, workflows)
    with ComfyServer.start(base, frontend=True, pack_name=PACK_NAME, extra_args=frontend.server_args(), timeout=240) as server:
        report_path = out_dir / "report.json"
        run = browser.run_driver(server.url, report_path, out_dir / "shots", workflows,
                                 extra=["--thumbnails", "--viewport", f"{WIDTH}x{HEIGHT}"], timeout=timeout)
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    if run.returncode != 0 or report.get("fatal"):
        raise RuntimeError(f"the browser driver failed (exit {run.returncode}): {report.get('fatal')}\n{run.stderr[-4000:]}")
    shots = {path.stem: out_dir / "shots" / f"{path.stem}.png" for path in workflows}
    for name, shot in shots.items():
        if not shot.is_file():
            raise RuntimeError(f"no screenshot of {name}:\n{run.stderr[-4000:]}")
    return shots


def write_thumbnail(screenshot: Path, out_path: Path) -> Path:
    """Scale `screenshot` to WIDTH x HEIGHT (cropping to that aspect first) and save it as a JPEG under MAX_BYTES."""
    image = Image.open(screenshot).convert("RGB")
    aspect = WIDTH / HEIGHT
    width, height = image.size
    if width / height > aspect:
        crop = round(height * aspect)
        image = image.crop(((width - crop) // 2, 0, (width - crop) // 2 + crop, height))
    elif width / height < aspect:
        crop = round(width / aspect)
        image = image.crop((0, (height - crop) // 2, width, (height - crop) // 2 + crop))
    image = image.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)
    for quality in (85, 80, 75, 70, 60, 50):
        image.save(out_path, "JPEG", quality=quality, optimize=True, progressive=True)
        if out_path.stat().st_size <= MAX_BYTES:
            break
    return out_path


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    workflows = [Path(path).resolve() for path in argv]
    with tempfile.TemporaryDirectory(prefix="uce-thumbnails-") as tmp:
        shots = screenshots(workflows, Path(tmp))
        for path in workflows:
            out = write_thumbnail(shots[path.stem], path.with_suffix(".jpg"))
            print(f"{out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
