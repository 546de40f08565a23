"""Draw the Templates-browser thumbnail (<workflow>.jpg) of a UI-format workflow: a diagram of its graph.

The picture is made from the workflow file itself (node boxes where the workflow puts them, links
coloured by type, UCE nodes with their main settings, the Note's first line as caption), so it
shows what loading the workflow gives and never claims results the tiny test models cannot show.

    .venv/bin/python devtools/uce_devtools/thumbnails.py workflows/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 640, 360
CAPTION_HEIGHT = 46
MARGIN = 14
BACKGROUND = (32, 32, 32)
GRID = (40, 40, 40)
NODE_BODY = (53, 53, 53)
NODE_TITLE = (34, 34, 34)
UCE_TITLE = (46, 92, 58)
NOTE_BODY = (102, 85, 51)
TEXT = (221, 221, 221)
DIM_TEXT = (170, 170, 170)
LINK_COLOURS = {
    "MODEL": (179, 157, 219),
    "CLIP": (255, 213, 0),
    "VAE": (255, 110, 110),
    "CONDITIONING": (255, 169, 49),
    "LATENT": (255, 156, 249),
    "IMAGE": (100, 181, 246),
    "STRING": (128, 200, 128),
}
UCE_SUMMARY_INPUTS = {
    "UCEEraseConcepts": ("concepts", 0),
    "UCEModerate": ("concepts", 0),
    "UCEDebias": ("professions", 0),
}
MAX_BYTES = 60_000
DISPLAY_NAMES = {  # ComfyUI's display names of the built-in nodes the examples use
    "CheckpointLoaderSimple": "Load Checkpoint",
    "UNETLoader": "Load Diffusion Model",
    "DualCLIPLoader": "DualCLIPLoader",
    "CLIPLoader": "Load CLIP",
    "QuadrupleCLIPLoader": "QuadrupleCLIPLoader",
    "VAELoader": "Load VAE",
    "FluxGuidance": "FluxGuidance",
    "EmptySD3LatentImage": "EmptySD3LatentImage",
    "CheckpointSave": "Save Checkpoint",
    "CLIPTextEncode": "CLIP Text Encode (Prompt)",
    "EmptyLatentImage": "Empty Latent Image",
    "VAEDecode": "VAE Decode",
    "SaveImage": "Save Image",
    "PreviewAny": "Preview as Text",
    "UCEEraseConcepts": "UCE Erase Concepts",
    "UCEModerate": "UCE Moderate",
    "UCEDebias": "UCE Debias",
}


def render(workflow: dict, caption: str | None = None) -> Image.Image:
    nodes = workflow["nodes"]
    by_id = {node["id"]: node for node in nodes}
    left = min(n["pos"][0] for n in nodes)
    top = min(n["pos"][1] for n in nodes)
    right = max(n["pos"][0] + n["size"][0] for n in nodes)
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes)
    area_w, area_h = WIDTH - 2 * MARGIN, HEIGHT - CAPTION_HEIGHT - 2 * MARGIN
    scale = min(area_w / (right - left), area_h / (bottom - top))
    off_x = MARGIN + (area_w - (right - left) * scale) / 2
    off_y = MARGIN + (area_h - (bottom - top) * scale) / 2

    def to_px(x: float, y: float) -> tuple[float, float]:
        return off_x + (x - left) * scale, off_y + (y - top) * scale

    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for gx in range(0, WIDTH, 16):
        draw.line([(gx, 0), (gx, HEIGHT)], fill=GRID)
    for gy in range(0, HEIGHT, 16):
        draw.line([(0, gy), (WIDTH, gy)], fill=GRID)

    title_font = ImageFont.load_default(size=10)
    small_font = ImageFont.load_default(size=9)
    caption_font = ImageFont.load_default(size=15)
    title_h = 13

    for link in workflow["links"]:
        _, src, src_slot, dst, dst_slot, kind = link[:6]
        a, b = by_id[src], by_id[dst]
        x0, y0 = to_px(a["pos"][0] + a["size"][0], a["pos"][1])
        x1, y1 = to_px(b["pos"][0], b["pos"][1])
        y0 += title_h + 6 + 7 * src_slot
        y1 += title_h + 6 + 7 * dst_slot
        colour = LINK_COLOURS.get(kind, (200, 200, 200))
        points = _bezier((x0, y0), (x1, y1))
        draw.line(points, fill=colour, width=2)

    for node in sorted(nodes, key=lambda n: n.get("order", 0)):
        x0, y0 = to_px(*node["pos"])
        x1, y1 = to_px(node["pos"][0] + node["size"][0], node["pos"][1] + node["size"][1] + 30)
        x1, y1 = max(x1, x0 + 40), max(y1, y0 + title_h + 8)
        is_note = node["type"] in ("Note", "MarkdownNote")
        is_uce = node["type"].startswith("UCE")
        draw.rounded_rectangle([x0, y0, x1, y1], radius=4, fill=NOTE_BODY if is_note else NODE_BODY,
                               outline=(120, 200, 140) if is_uce else (80, 80, 80))
        draw.rounded_rectangle([x0, y0, x1, y0 + title_h], radius=4,
                               fill=UCE_TITLE if is_uce else (NOTE_BODY if is_note else NODE_TITLE))
        title = node.get("title") or DISPLAY_NAMES.get(node["type"], node["type"])
        draw.text((x0 + 4, y0 + 1), _fit(draw, title, title_font, x1 - x0 - 6), font=title_font, fill=TEXT)
        lines = _body_lines(node)
        y = y0 + title_h + 3
        for line in lines:
            if y + 10 > y1:
                break
            draw.text((x0 + 4, y), _fit(draw, line, small_font, x1 - x0 - 6), font=small_font, fill=DIM_TEXT)
            y += 11

    if caption is None:
        caption = _note_caption(workflow) or "UCE workflow"
    draw.rectangle([0, HEIGHT - CAPTION_HEIGHT, WIDTH, HEIGHT], fill=(20, 20, 20))
    draw.text((MARGIN, HEIGHT - CAPTION_HEIGHT + 6), _fit(draw, caption, caption_font, WIDTH - 2 * MARGIN),
              font=caption_font, fill=TEXT)
    draw.text((MARGIN, HEIGHT - CAPTION_HEIGHT + 26), "Unified Concept Editing (UCE) for ComfyUI: workflow diagram",
              font=small_font, fill=DIM_TEXT)
    return image


def write_thumbnail(workflow_path: str | Path, out_path: str | Path | None = None) -> Path:
    """Render `workflow_path` to a same-named .jpg (under MAX_BYTES) and return its path."""
    workflow_path = Path(workflow_path)
    out_path = Path(out_path) if out_path else workflow_path.with_suffix(".jpg")
    workflow = json.loads(workflow_path.read_text(encoding="utf-8"))
    image = render(workflow)
    for quality in (85, 75, 65, 55, 45):
        image.save(out_path, "JPEG", quality=quality, optimize=True)
        if out_path.stat().st_size <= MAX_BYTES:
            break
    return out_path


def _body_lines(node: dict) -> list[str]:
    values = node.get("widgets_values") or []
    if node["type"] in ("Note", "MarkdownNote"):
        return [line for line in str(values[0] if values else "").splitlines()[2:] if line.strip()]
    if node["type"] in UCE_SUMMARY_INPUTS:
        name, index = UCE_SUMMARY_INPUTS[node["type"]]
        items = [line for line in str(values[index]).splitlines() if line.strip()] if values else []
        lines = [f"{name}: {', '.join(items)}"]
        if node["type"] == "UCEEraseConcepts" and len(values) > 2:
            lines.append(f"type: {values[1]}  guide: {values[2]!r}")
        return lines
    return [str(v) for v in values if isinstance(v, (str, int, float)) and not isinstance(v, bool)][:3]


def _note_caption(workflow: dict) -> str | None:
    for node in workflow["nodes"]:
        if node["type"] in ("Note", "MarkdownNote") and node.get("widgets_values"):
            first = str(node["widgets_values"][0]).splitlines()[0].strip()
            if first:
                return first
    return None


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    text = text.replace("\n", " ")
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _bezier(start: tuple[float, float], end: tuple[float, float], steps: int = 24) -> list[tuple[float, float]]:
    (x0, y0), (x1, y1) = start, end
    bend = max(20.0, abs(x1 - x0) * 0.5)
    c0, c1 = (x0 + bend, y0), (x1 - bend, y1)
    points = []
    for i in range(steps + 1):
        t = i / steps
        u = 1 - t
        x = u**3 * x0 + 3 * u * u * t * c0[0] + 3 * u * t * t * c1[0] + t**3 * x1
        y = u**3 * y0 + 3 * u * u * t * c0[1] + 3 * u * t * t * c1[1] + t**3 * y1
        points.append((x, y))
    return points


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for path in argv:
        out = write_thumbnail(path)
        print(f"{out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
