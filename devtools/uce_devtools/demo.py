"""The demo: run the *erase an artist's style* example workflow through a real headless ComfyUI.

    scripts/demo.sh [path/to/checkpoint.safetensors] [--out DIR] [--width W --height H --steps N] ...
    (or: PYTHONPATH=devtools .venv/bin/python -m uce_devtools.demo ...)

The API prompt is derived from workflows/uce_erase_artist_style.json with the server's own
/object_info (uce_devtools.workflow_api), so the demo runs exactly what the example workflow does.
Without a checkpoint it builds the tiny random-weight SD1.5 test model (random weights: the
images are noise-like, the point is the pipeline: before/after differ, the report is real) and
uses small settings (128x128, 4 steps, a short preserve list). With a real checkpoint it keeps the
workflow's settings (512x512, 20 steps, the built-in list of ~1,700 artists to preserve, which
takes minutes to encode on a CPU; --quick-preserve uses a short list instead).

Writes into the output folder (default out/demo/): before.png (unedited model), after.png (edited
model), before_after.png (side by side, captioned), report.txt (the UCE node's report),
prompt.json (the API prompt that ran) and comfyui-server.log. The server is always stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import workflow_api as wf
from .paths import REPO_ROOT
from .server import ComfyServer, status_messages

WORKFLOW = REPO_ROOT / "workflows" / "uce_erase_artist_style.json"
DEFAULT_OUT = REPO_ROOT / "out" / "demo"
QUICK_PRESERVE = "Claude Monet\nRembrandt\nPablo Picasso\nAndy Warhol\nSalvador Dali\nFrida Kahlo"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/demo.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="a real checkpoint (.safetensors/.ckpt); default: the tiny test model")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: out/demo/)")
    parser.add_argument("--width", type=int, help="image width (default: 128 tiny model, 512 real checkpoint)")
    parser.add_argument("--height", type=int, help="image height (default: as width)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: 4 tiny model, the workflow's 20 otherwise)")
    parser.add_argument("--seed", type=int, help="seed for both samplers (default: the workflow's)")
    parser.add_argument("--concepts", help="concepts to erase, one per line (default: the workflow's 'Van Gogh')")
    parser.add_argument("--prompt", help="the prompt both branches sample (default: the workflow's)")
    parser.add_argument("--quick-preserve", action="store_true",
                        help="preserve a short artist list instead of the built-in ~1,700 (always on for the tiny model)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the workflow (default 3600)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    signal.signal(signal.SIGTERM, _exit_on_signal)  # so that the server is stopped on SIGTERM too
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    tiny = args.checkpoint is None
    if tiny:
        print("[demo] no checkpoint given: building (or reusing) the tiny random-weight SD1.5 test model")
        from .tiny_models import tiny_sd15_checkpoint

        checkpoint = tiny_sd15_checkpoint()
    else:
        checkpoint = Path(args.checkpoint).expanduser().resolve()
        if not checkpoint.is_file():
            print(f"[demo] ERROR: no such checkpoint: {checkpoint}", file=sys.stderr)
            return 2
    width = args.width or (128 if tiny else None)
    height = args.height or width
    steps = args.steps or (4 if tiny else None)

    base = Path(tempfile.mkdtemp(prefix="uce-demo-server-"))
    print(f"[demo] starting ComfyUI (CPU, headless) with the pack; checkpoint {checkpoint.name}")
    server = None
    try:
        started = time.monotonic()
        server = ComfyServer.start(base, checkpoints=[checkpoint], timeout=300, log_path=out / "comfyui-server.log")
        print(f"[demo] server up at {server.url} in {time.monotonic() - started:.0f} s")
        prompt = build_prompt(server.object_info(), checkpoint.name, width, height, steps, args, quick=tiny or args.quick_preserve)
        (out / "prompt.json").write_text(json.dumps(prompt, indent=2), encoding="utf-8")
        print("[demo] running workflows/uce_erase_artist_style.json (derived API prompt in prompt.json)")
        entry = server.run_prompt(prompt, timeout=args.timeout)
        if entry["status"]["status_str"] != "success":
            print("[demo] ERROR: the workflow failed:", file=sys.stderr)
            for error in status_messages(entry, "execution_error"):
                print(f"  node {error.get('node_id')} ({error.get('node_type')}): {error.get('exception_message')}", file=sys.stderr)
            return 1
        write_results(server, prompt, entry, out, tiny)
        print(f"[demo] workflow ran in {entry['seconds']:.1f} s")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"[demo] done: before/after images and the report are in {out}")
    return 0


def build_prompt(object_info: dict, ckpt_name: str, width, height, steps, args, quick: bool) -> dict:
    prompt = wf.derive_prompt(WORKFLOW, object_info)
    wf.set_inputs(prompt, "CheckpointLoaderSimple", ckpt_name=ckpt_name)
    if width:
        wf.set_inputs(prompt, "EmptyLatentImage", width=width, height=height)
    if steps:
        wf.set_inputs(prompt, "KSampler", steps=steps)
    if args.seed is not None:
        wf.set_inputs(prompt, "KSampler", seed=args.seed)
    if args.concepts:
        wf.set_inputs(prompt, "UCEEraseConcepts", concepts=args.concepts.replace("\\n", "\n"))
    if args.prompt:
        positive = {prompt[k]["inputs"]["positive"][0] for k in wf.nodes_of_type(prompt, "KSampler")}
        for node_id in positive:
            prompt[node_id]["inputs"]["text"] = args.prompt
    if quick:
        wf.fill_empty(prompt, "UCEEraseConcepts", "preserve", QUICK_PRESERVE)
    return prompt


def write_results(server: ComfyServer, prompt: dict, entry: dict, out: Path, tiny: bool) -> None:
    from PIL import Image, ImageDraw, ImageFont

    images = {}
    for branch, save_id in wf.saves_by_branch(prompt).items():
        name = "after" if branch == "edited" else "before"
        files = server.output_files(entry, save_id)
        shutil.copyfile(files[0], out / f"{name}.png")
        images[name] = Image.open(out / f"{name}.png").convert("RGB")
    (preview_id,) = wf.nodes_of_type(prompt, "PreviewAny")
    report = entry["outputs"][preview_id]["text"][0]
    (out / "report.txt").write_text(report + "\n", encoding="utf-8")
    print("[demo] report:\n" + "\n".join("    " + line for line in report.splitlines()))

    scale = max(1, 256 // max(images["before"].size))
    size = (images["before"].width * scale, images["before"].height * scale)
    caption_h = 48
    sheet = Image.new("RGB", (size[0] * 2 + 30, size[1] + caption_h + 20), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    (uce,) = wf.nodes_of_type(prompt, "UCEEraseConcepts")
    concepts = ", ".join(line for line in prompt[uce]["inputs"]["concepts"].splitlines() if line.strip())
    for i, (name, label) in enumerate((("before", "before: unedited model"), ("after", f"after: erased {concepts}"))):
        x = 10 + i * (size[0] + 10)
        sheet.paste(images[name].resize(size, Image.NEAREST), (x, 10))
        draw.text((x, size[1] + 16), label, font=font, fill=(230, 230, 230))
    if tiny:
        draw.text((10, size[1] + 36), "tiny random-weight test model: noise-like images", font=ImageFont.load_default(size=11),
                  fill=(160, 160, 160))
    sheet.save(out / "before_after.png")


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    raise SystemExit(main())
