"""The Templates-browser thumbnails: screenshots of the frontend (devtools/uce_devtools/thumbnails.py)."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw
from uce_devtools import thumbnails
from uce_devtools.paths import REPO_ROOT

WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))


def test_each_workflow_has_its_thumbnail_at_the_thumbnail_size():
    assert WORKFLOWS
    for path in WORKFLOWS:
        jpg = path.with_suffix(".jpg")
        with Image.open(jpg) as image:
            assert image.format == "JPEG" and image.size == (thumbnails.WIDTH, thumbnails.HEIGHT), jpg.name
        assert jpg.stat().st_size <= thumbnails.MAX_BYTES, jpg.name


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
