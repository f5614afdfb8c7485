"""Sample images and perf_analyzer input files.

The sample JPEGs in data/samples/ are drawn by `draw_samples()` below (simple pictures of food
on a plate, made for this course; same licence as the project). Real Food-11 photos placed in
data/food11/ (any layout, e.g. the dataset's evaluation/<class>/*.jpg) are found by
`food11_images()`: the accuracy checks use them too when they are present.
"""

from __future__ import annotations

import base64
import io
import json
import math
import random
import struct
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from .. import settings
from ..common import atomic_write

SIZE = (320, 240)


def _plate(draw: ImageDraw.ImageDraw, rng: random.Random) -> None:
    w, h = SIZE
    draw.rectangle((0, 0, w, h), fill=(rng.randint(150, 200), rng.randint(110, 150), 90))
    draw.ellipse((30, 15, w - 30, h - 15), fill=(245, 245, 240), outline=(200, 200, 195), width=4)
    draw.ellipse((60, 35, w - 60, h - 35), outline=(225, 225, 220), width=2)


def _bread(draw, rng):
    _plate(draw, rng)
    draw.rounded_rectangle((80, 70, 240, 170), radius=45, fill=(196, 138, 68),
                           outline=(140, 90, 40), width=3)
    for x in (115, 150, 185):
        draw.arc((x - 15, 80, x + 25, 160), 240, 300, fill=(245, 220, 170), width=5)


def _egg(draw, rng):
    _plate(draw, rng)
    pts = [(160 + (70 + rng.randint(-10, 10)) * math.cos(a / 10 * math.tau),
            120 + (50 + rng.randint(-8, 8)) * math.sin(a / 10 * math.tau)) for a in range(10)]
    draw.polygon(pts, fill=(255, 255, 252))
    draw.ellipse((135, 95, 185, 145), fill=(250, 180, 20), outline=(230, 150, 10), width=2)


def _soup(draw, rng):
    _plate(draw, rng)
    draw.ellipse((70, 45, 250, 195), fill=(170, 60, 30), outline=(120, 80, 60), width=6)
    for _ in range(25):
        x, y = rng.randint(100, 220), rng.randint(70, 170)
        draw.ellipse((x, y, x + 7, y + 7), fill=(60, 140, 40))


def _pasta(draw, rng):
    _plate(draw, rng)
    for _ in range(40):
        x0, y0 = rng.randint(80, 240), rng.randint(60, 180)
        draw.arc((x0 - 40, y0 - 25, x0 + 40, y0 + 25), rng.randint(0, 360), rng.randint(0, 360),
                 fill=(240, 210, 120), width=4)
    draw.ellipse((135, 100, 185, 140), fill=(190, 40, 30))


def _rice(draw, rng):
    _plate(draw, rng)
    draw.ellipse((75, 45, 245, 195), fill=(40, 70, 140), outline=(25, 45, 100), width=4)
    for _ in range(500):
        x, y = rng.gauss(158, 30), rng.gauss(118, 22)
        draw.ellipse((x, y, x + 6, y + 3), fill=(250, 250, 245), outline=(215, 215, 205))


def _fruit(draw, rng):
    _plate(draw, rng)
    colours = [(200, 20, 30), (250, 140, 0), (120, 180, 40), (230, 200, 30)]
    for i in range(6):
        x, y, r = rng.randint(90, 230), rng.randint(70, 170), rng.randint(20, 32)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colours[i % len(colours)],
                     outline=(80, 50, 20), width=2)
        draw.line((x, y - r, x + 4, y - r - 10), fill=(90, 60, 20), width=3)


DRAWINGS = {"bread": _bread, "egg": _egg, "soup": _soup, "pasta": _pasta, "rice": _rice,
            "fruit": _fruit}


def draw_samples(folder: Path = settings.SAMPLES, seed: int = 0) -> list[Path]:
    """Draw the course's sample JPEGs into `folder` (deterministic for a given seed)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, paint) in enumerate(DRAWINGS.items()):
        rng = random.Random(seed * 100 + i)
        img = Image.new("RGB", SIZE)
        paint(ImageDraw.Draw(img), rng)
        img = img.filter(ImageFilter.GaussianBlur(0.8))
        path = folder / f"{name}.jpg"
        img.save(path, quality=88)
        paths.append(path)
    return paths


def sample_images(folder: Path = settings.SAMPLES) -> list[Path]:
    """The sample JPEGs, drawn first if the folder is empty."""
    paths = sorted(folder.glob("*.jpg"))
    return paths or draw_samples(folder)


def food11_images(limit: int = 64, folder: Path | None = None) -> list[Path]:
    """Up to `limit` real Food-11 photos under data/food11/ (none if it is absent), taken in
    turns from each folder (the dataset keeps one folder per class), so every class present is
    represented."""
    folder = folder or settings.DATA / "food11"
    if not folder.is_dir():
        return []
    groups: dict[Path, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png") and path.is_file():
            groups.setdefault(path.parent, []).append(path)
    picked: list[Path] = []
    for rank in range(max((len(g) for g in groups.values()), default=0)):
        for group in groups.values():
            if rank < len(group) and len(picked) < limit:
                picked.append(group[rank])
    return picked


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def serialized_bytes(data: bytes) -> bytes:
    """One element of a BYTES tensor as Triton serialises it (in perf_analyzer's input files and
    model_warmup's data files alike): a 4-byte little-endian length, then the bytes."""
    return struct.pack("<I", len(data)) + data


def perf_input_raw(images: list[Path]) -> dict:
    """perf_analyzer input data sending each image's raw JPEG bytes as INPUT_IMAGE.

    perf_analyzer decodes `b64` content on the client and sends it as the BYTES tensor's
    serialised form: a 4-byte little-endian length, then the bytes. The model receives the JPEG.
    """
    data = []
    for path in images:
        payload = serialized_bytes(Path(path).read_bytes())
        data.append({"INPUT_IMAGE": {"content": {"b64": base64.b64encode(payload).decode()},
                                     "shape": [1]}})
    return {"data": data}


def perf_input_base64(images: list[Path]) -> dict:
    """perf_analyzer input data sending base64 text of each JPEG (as many course clients do)."""
    return {"data": [{"INPUT_IMAGE": [base64.b64encode(Path(p).read_bytes()).decode()]}
                     for p in images]}


def write_perf_inputs(folder: Path = settings.PERF_INPUTS,
                      images: list[Path] | None = None) -> dict[str, Path]:
    """Write both perf_analyzer input files (`make data`); returns {'raw': path, 'base64': path}."""
    images = images or sample_images()
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind, build in (("raw", perf_input_raw), ("base64", perf_input_base64)):
        out[kind] = atomic_write(folder / f"food_classifier_{kind}.json",
                                 json.dumps(build(images)))
    return out
