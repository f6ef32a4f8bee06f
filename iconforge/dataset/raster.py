"""Decode one untrusted raster image (a dataset row's bytes) and normalise it to a square RGB PNG.

The format is recognised by its leading bytes before Pillow sees it, and Pillow may only use
the plugins of RASTER_FORMATS: SVG, HTML or anything else is refused without any parser. The
pixel count is checked from the header before a pixel is decoded (decompression bombs); time and
memory bounds per image are the caller's (iconforge.dataset.rasterize runs this in bounded workers).
Every mode (1, L, P with transparency, LA, RGBA, CMYK, I;16, ...) ends on white, as an RGB PNG; an
animation contributes its first frame.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import PIL
from PIL import Image, ImageOps

# Bump when decode/normalise change their output: it is part of the cache key.
NORMALISER_VERSION = f"3, pillow {PIL.__version__}"
WHITE = (255, 255, 255)  # every image, icon or logo, ends on white (iconforge.dataset.svg uses these too)
# zlib level 1: ~2x faster than Pillow's default 6 for ~15% bigger PNGs.
PNG_COMPRESS_LEVEL = 1
MAX_PIXELS = 25_000_000  # 5000 x 5000; the logo datasets' images are at most 512 px
# Leading bytes -> the one Pillow plugin allowed to read them.
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
          (b"BM", "BMP"))
RASTER_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own check, a second line behind ours


class RasterError(ValueError):
    """The bytes are not a usable raster image; the message says why (a reject reason)."""


def sniff(data: bytes) -> str:
    """The format the leading bytes announce, or RasterError naming what they look like."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    head = data[:64].lstrip()[:24]
    what = "markup (SVG/HTML/XML)" if head.startswith(b"<") else "an unknown format"
    raise RasterError(f"not a raster image: {what}, starts with {head!r}")


def decode(data: bytes) -> Image.Image:
    """The first frame on white, RGB (L for a greyscale image); RasterError for anything that is
    not a sane raster."""
    fmt = sniff(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[fmt])
            w, h = im.size
            if w * h > MAX_PIXELS or w < 1 or h < 1:
                raise RasterError(f"decompression bomb: {w}x{h} pixels (limit {MAX_PIXELS})")
            im.seek(0)  # an animation: its first frame
            im.load()
            im = ImageOps.exif_transpose(im)  # a photo-style JPEG's Orientation tag: upright, as viewers show it
    except RasterError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:
        raise RasterError(f"undecodable {fmt}: {' '.join(str(e).split())[:160]}") from None
    return on_white(im)


def on_white(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # high bit depth: scale, never clip to white
        a = np.asarray(im, dtype=np.float64)
        scale = 257.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 1.0
        grey = np.clip(a / scale, 0, 255).astype(np.uint8)
        key = im.info.get("transparency")  # a 16-bit grey PNG's tRNS: pixels of exactly that value
        im = Image.fromarray(np.where(a == key, 255, grey).astype(np.uint8) if isinstance(key, int) else grey, "L")
    # A palette, grey or RGB image may name one transparent colour (PNG's tRNS, GIF's): on white too.
    keyed = im.mode in ("P", "1", "L", "RGB") and "transparency" in im.info
    if keyed or im.mode in ("LA", "PA", "RGBA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    # Greyscale stays one channel: resizing it is a third of the work, and pasting it onto
    # fit's RGB canvas gives the same pixels as converting first.
    return im.convert("L") if im.mode in ("1", "L") else im.convert("RGB")


def fit(im: Image.Image, size: int, margin: float) -> Image.Image:
    """Scaled to fit size x size less the margin on each side, aspect kept, centred on white."""
    inner = max(1, round(size * (1 - 2 * margin)))
    scale = inner / max(im.size)
    w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
    canvas = Image.new("RGB", (size, size), WHITE)
    canvas.paste(im.resize((w, h), Image.Resampling.LANCZOS), ((size - w) // 2, (size - h) // 2))
    return canvas


def normalise(data: bytes, size: int, margin: float) -> bytes:
    """PNG bytes of the image at size x size on white (RasterError when it is refused)."""
    out = io.BytesIO()
    fit(decode(data), size, margin).save(out, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


def dhash(data: bytes) -> int:
    """64-bit difference hash of the mark (cropped to what is not white: a logo's margins would
    make every sparse mark hash alike): near-identical images differ in few bits."""
    grey = decode(data).convert("L")
    box = Image.eval(grey, lambda v: 255 if v < 240 else 0).getbbox()
    grey = np.asarray(grey.crop(box or (0, 0, *grey.size)).resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")
