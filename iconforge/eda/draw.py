"""The two image plots: a word cloud of the caption words and a contact sheet of training images.
Both are drawn with Pillow only (its bundled font), from sorted inputs and a fixed seed, and saved
without metadata: the same dataset and params give the same bytes."""
from __future__ import annotations

import io
import math
import random
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

BACKGROUND = (255, 255, 255)
SHEET_GAP = 4  # px between contact sheet tiles
SHEET_GAP_COLOUR = (225, 225, 225)
SHEET_COLUMNS = 8
# Word colours by rank: saturated, readable on white, none close to the purple of DVC's bars.
PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (188, 189, 34), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194))
CLOUD_SIZE = (900, 450)
MIN_FONT, MAX_FONT = 11, 72
PAD = 2  # px kept free around each word


def png_bytes(im: Image.Image) -> bytes:
    """PNG with no metadata chunks: equal pixels, equal bytes."""
    out = io.BytesIO()
    im.save(out, "PNG", optimize=False, compress_level=6)
    return out.getvalue()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size)  # Pillow's bundled font: the same on every machine


def _message(size: tuple[int, int], text: str) -> Image.Image:
    im = Image.new("RGB", size, BACKGROUND)
    ImageDraw.Draw(im).text((10, 10), text, fill=(90, 90, 90), font=_font(16))
    return im


def word_cloud(freqs: Sequence[tuple[str, int]], seed: int, size: tuple[int, int] = CLOUD_SIZE) -> Image.Image:
    """Most frequent words first, font size growing with frequency, each placed at the first free
    spot on a spiral out from the centre (whose starting angle the seed draws); a word that fits
    nowhere is left out."""
    if not freqs:
        return _message(size, "no caption words")
    width, height = size
    im = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(im)
    taken = np.zeros((height, width), dtype=bool)
    rng = random.Random(seed)
    top = freqs[0][1]
    for rank, (word, n) in enumerate(freqs):
        font = _font(round(MIN_FONT + (MAX_FONT - MIN_FONT) * math.sqrt(n / top)))
        x0, y0, x1, y1 = draw.textbbox((0, 0), word, font=font)
        w, h = x1 - x0 + 2 * PAD, y1 - y0 + 2 * PAD
        if w >= width or h >= height:
            continue
        spot = _free_spot(taken, w, h, rng.uniform(0, 2 * math.pi))
        if spot is None:
            continue
        x, y = spot
        taken[y:y + h, x:x + w] = True
        draw.text((x + PAD - x0, y + PAD - y0), word, fill=PALETTE[rank % len(PALETTE)], font=font)
    return im


def _free_spot(taken: np.ndarray, w: int, h: int, phase: float) -> tuple[int, int] | None:
    """Top-left corner of the first free w x h box along an Archimedean spiral from the centre."""
    height, width = taken.shape
    cx, cy = (width - w) / 2, (height - h) / 2
    aspect = width / height
    t = 0.0
    while True:
        r = 1.5 * t
        if r > max(width, height):
            return None
        x = int(round(cx + aspect * r * math.cos(t + phase)))
        y = int(round(cy + r * math.sin(t + phase)))
        if 0 <= x <= width - w and 0 <= y <= height - h and not taken[y:y + h, x:x + w].any():
            return x, y
        t += 0.35 / (1 + 0.02 * t)  # about one box-width step, finer as the spiral widens


def contact_sheet(images: Sequence[Path], count: int, tile: int, seed: int) -> tuple[Image.Image, int]:
    """Up to `count` of `images` (in the seed's shuffled order of the sorted list) as a grid of
    tiles, each image fit into its tile on white. An image that cannot be read is skipped, the next
    one takes its place. Returns the sheet and the number skipped."""
    order = sorted(images)
    random.Random(seed).shuffle(order)
    tiles, skipped = [], 0
    bar = tqdm(total=min(count, len(order)), desc="eda contact sheet", unit="image")
    for path in order:
        if len(tiles) >= count:
            break
        try:
            with Image.open(path, formats=["PNG"]) as im:
                im.draft("RGB", (tile, tile))
                thumb = im.convert("RGB")
                thumb.thumbnail((tile, tile), Image.Resampling.LANCZOS)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
            skipped += 1
            continue
        tiles.append(thumb)
        bar.update()
    bar.close()
    if not tiles:
        return _message((SHEET_COLUMNS * tile, tile), "no readable training images"), skipped
    cols = min(SHEET_COLUMNS, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    sheet = Image.new("RGB", (cols * (tile + SHEET_GAP) + SHEET_GAP, rows * (tile + SHEET_GAP) + SHEET_GAP),
                      SHEET_GAP_COLOUR)
    for i, thumb in enumerate(tiles):
        x = SHEET_GAP + (i % cols) * (tile + SHEET_GAP)
        y = SHEET_GAP + (i // cols) * (tile + SHEET_GAP)
        cell = Image.new("RGB", (tile, tile), BACKGROUND)
        cell.paste(thumb, ((tile - thumb.width) // 2, (tile - thumb.height) // 2))
        sheet.paste(cell, (x, y))
    return sheet, skipped
