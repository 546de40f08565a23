"""The Templates-browser thumbnails: screenshots of the frontend (devtools/uce_devtools/thumbnails.py),
framed on the UCE node(s) and their loaders so that the cards tell the workflows apart."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat
from uce_devtools import browser, thumbnails
from uce_devtools.paths import REPO_ROOT

WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))
CARD_WIDTH = 300  # about the width of a Templates-browser card, in pixels
# Mean difference (0-255 grey levels) of two thumbnails at card size. Whole-graph pictures of the
# examples (the same samplers and save nodes in each, drawn too small to read) had three pairs
# closer than this, the closest at 0.4; framed on the UCE nodes and loaders, the closest two differ
# by more than 2.5.
MIN_CARD_DIFFERENCE = 2.0


def card(path):
    with Image.open(path) as image:
        return image.convert("L").resize((CARD_WIDTH, round(CARD_WIDTH * image.height / image.width)), Image.Resampling.LANCZOS)


def test_each_workflow_has_its_thumbnail_at_the_thumbnail_size():
    assert WORKFLOWS
    for path in WORKFLOWS:
        jpg = path.with_suffix(".jpg")
        with Image.open(jpg) as image:
            assert image.format == "JPEG" and image.size == (thumbnails.WIDTH, thumbnails.HEIGHT), jpg.name
        assert jpg.stat().st_size <= thumbnails.MAX_BYTES, jpg.name
    assert thumbnails.WIDTH * 9 == thumbnails.HEIGHT * 16 and thumbnails.MAX_BYTES <= 120_000


def test_the_thumbnails_differ_from_each_other_at_card_size():
    cards = {path.stem: card(path.with_suffix(".jpg")) for path in WORKFLOWS}
    differences = {
        (a, b): ImageStat.Stat(ImageChops.difference(cards[a], cards[b])).mean[0]
        for a, b in itertools.combinations(cards, 2)
    }
    alike = {pair: round(d, 2) for pair, d in differences.items() if d < MIN_CARD_DIFFERENCE}
    assert not alike, f"thumbnails that look alike in a card: {alike}"


def test_a_screenshot_becomes_a_small_jpeg_of_the_thumbnail_size(tmp_path):
    # like a screenshot of a graph, only twice as large and wider than 16:9: cropped to the
    # aspect (centred), then scaled
    width, height = thumbnails.WIDTH * 2 + 300, thumbnails.HEIGHT * 2
    shot = Image.new("RGB", (width, height), (18, 18, 18))
    draw = ImageDraw.Draw(shot)
    rng = random.Random(0)
    for _ in range(40):  # nodes with lines of text
        x, y = rng.randrange(150, width - 450), rng.randrange(0, height - 300)
        draw.rectangle((x, y, x + 300, y + 280), fill=(53, 53, 53), outline=(80, 80, 80))
        for line in range(12):
            draw.text((x + 8, y + 8 + 22 * line), f"widget_{line}  {rng.random():.3f}", fill=(220, 220, 220))
    shot.paste((255, 0, 0), (0, 0, 150, height))  # the strip the crop removes
    shot.save(tmp_path / "shot.png")
    out = thumbnails.write_thumbnail(tmp_path / "shot.png", tmp_path / "thumb.jpg")
    with Image.open(out) as image:
        assert image.format == "JPEG" and image.size == (thumbnails.WIDTH, thumbnails.HEIGHT)
        red, green, _ = image.getpixel((2, thumbnails.HEIGHT // 2))
        assert not (red > 200 and green < 60)
    assert out.stat().st_size <= thumbnails.MAX_BYTES


# -- the framing, in the real frontend (skipped where the browser tools are missing) --------------
FRAMED = ["uce_erase_flux", "uce_erase_hidream", "uce_probe_edit"]


@pytest.fixture(scope="module")
def framed(tmp_path_factory):
    frontend = browser.frontends()[0]
    missing = browser.missing_tools() + [m for m in [frontend.missing()] if m]
    if missing:
        pytest.skip("THUMBNAIL FRAMING SKIPPED, cannot drive the frontend here: " + "; ".join(missing))
    paths = [path for path in WORKFLOWS if path.stem in FRAMED]
    tmp = tmp_path_factory.mktemp("thumbnails")
    shots, frames = thumbnails.screenshots(paths, tmp)
    return {path.stem: (json.loads(path.read_text(encoding="utf-8")), shots[path.stem], frames[path.stem]) for path in paths}


def inside(box, view, axis):  # box[lo, hi] within view on axis 0 (x) or 1 (y), a unit of rounding allowed
    return view[axis] - 1 <= box[axis] and box[axis + 2] <= view[axis + 2] + 1


@pytest.mark.parametrize("name", FRAMED)
def test_the_thumbnail_frames_the_uce_nodes_and_what_feeds_them(name, framed):
    workflow, shot, frame = framed[name]
    types = {node["type"] for node in workflow["nodes"]}
    feeders = {  # what the workflow links into its UCE nodes, and on upstream
        "uce_erase_flux": {"UNETLoader", "DualCLIPLoader"},
        "uce_erase_hidream": {"UNETLoader", "ModelSamplingSD3", "QuadrupleCLIPLoader"},
        "uce_probe_edit": {"CheckpointLoaderSimple"},
    }[name]
    uce = {t for t in types if t.startswith("UCE")}
    assert set(frame["nodes"]) == uce | feeders, frame  # no sampler, decoder, save node or VAE loader
    assert frame["scale"] >= thumbnails.MIN_ZOOM - 1e-6, frame  # zoomed in: not the whole graph
    view = frame["view"]
    # the UCE nodes whole across and their title (with the pack's badge) at the top
    assert inside(frame["uce_box"], view, 0) and abs(frame["uce_box"][1] - view[1]) <= 1, frame
    if name != "uce_probe_edit":  # the loaders on the left are in too (the probe's two UCE nodes leave no room)
        assert inside(frame["box"], view, 0), frame
    with Image.open(shot) as image:
        assert image.size == (thumbnails.WIDTH, thumbnails.HEIGHT)
