"""Make the Templates-browser thumbnail (<workflow>.jpg) of UI-format workflows: a screenshot of the
workflow as ComfyUI's own frontend shows it, framed on what tells the workflows apart.

A real ComfyUI server (this pack linked in, the frontend ComfyUI pins) is started, and headless
Chromium loads each workflow (tests/browser/load_workflows.mjs --thumbnails: menus hidden, a
WIDTH x HEIGHT page); each picture is saved as a JPEG under MAX_BYTES. Needs what the browser tests
need: node, Chromium and playwright-core (scripts/test.sh installs the last two).

The view is not the whole graph: the Templates browser shows a thumbnail in a card about 300 pixels
wide, where a whole example graph (about 2,300 units wide, the same samplers and save nodes in
each) is drawn at an eighth of its size; every card looked alike and nothing could be read. The
driver frames the UCE node(s) and the nodes that feed them (the model loaders; a model patch such
as ModelSamplingSD3 on the way) at a zoom of at least MIN_ZOOM: the loaders' file names and the
UCE node's title and concepts are what differ between the workflows. In the examples those nodes
span about 880 graph units (loaders on the left, the UCE node to their right), which MIN_ZOOM fits
to the 1280-pixel page; a node title is then about 5 pixels high on a 300-pixel card (about 9 on
a high-density screen, where a card has twice the device pixels). A larger zoom would crop away the
loaders. Where the nodes are taller than the view the UCE node's top is kept (title, concepts) and
the rest is cut at the bottom.

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
MIN_ZOOM = 1.4  # CSS pixels per graph unit (the frontend's own zoom is 1 at 100 %)
MAX_BYTES = 110_000
PACK_NAME = "comfyui-uce"


def screenshots(workflows: list[Path], out_dir: Path, timeout: float = 600) -> tuple[dict[str, Path], dict[str, dict]]:
    """({workflow name: PNG}, {workflow name: frame}) of each workflow loaded in the pinned frontend
    (a server is started). A frame, as the driver reports it: `nodes` (the types framed), `scale`
    (the zoom), `box` (those nodes' bounds), `uce_box` (the UCE nodes' bounds) and `view` (what the
    picture shows, less its margins), each [left, top, right, bottom] in graph units."""
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
                                 extra=["--thumbnails", "--viewport", f"{WIDTH}x{HEIGHT}", "--zoom", str(MIN_ZOOM)],
                                 timeout=timeout)
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    if run.returncode != 0 or report.get("fatal"):
        raise RuntimeError(f"the browser driver failed (exit {run.returncode}): {report.get('fatal')}\n{run.stderr[-4000:]}")
    shots = {path.stem: out_dir / "shots" / f"{path.stem}.png" for path in workflows}
    for name, shot in shots.items():
        if not shot.is_file():
            raise RuntimeError(f"no screenshot of {name}:\n{run.stderr[-4000:]}")
    return shots, report.get("frames", {})


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
        shots, frames = screenshots(workflows, Path(tmp))
        for path in workflows:
            out = write_thumbnail(shots[path.stem], path.with_suffix(".jpg"))
            frame = frames.get(path.stem, {})
            print(f"{out} ({out.stat().st_size} bytes; zoom {frame.get('scale', 0):.2f} on {', '.join(frame.get('nodes', []))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
