"""The source images' sizes before rasterize squared them: an SVG's viewBox (or its width and height
when it has none), parsed with iconforge.dataset.svg's parser (internal entities only, no network,
libxml2's limits); a raster row's width and height from its header, which is all Pillow reads here."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

from lxml import etree
from PIL import Image

from iconforge.dataset import raster, svg

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_LENGTH = re.compile(rf"^\s*({_NUMBER})\s*(px|pt|pc|mm|cm|in|)\s*$")
_PX = {"": 1.0, "px": 1.0, "pt": 96 / 72, "pc": 16.0, "mm": 96 / 25.4, "cm": 96 / 2.54, "in": 96.0}


class SizeError(ValueError):
    """No size can be read from the file; str(e) says why."""


def length(value: str | None) -> float | None:
    """An absolute SVG length in px ('24', '10mm', '12pt'); None for none, percentages and junk."""
    m = _LENGTH.match(value or "")
    if not m:
        return None
    v = float(m.group(1)) * _PX[m.group(2)]
    return v if v > 0 else None


def view_box(value: str | None) -> tuple[float, float] | None:
    """The viewBox's width and height, None if it is missing or malformed."""
    parts = re.split(r"[\s,]+", (value or "").strip())
    if len(parts) != 4:
        return None
    try:
        w, h = float(parts[2]), float(parts[3])
    except ValueError:
        return None
    return (w, h) if w > 0 and h > 0 else None


def svg_size(data: bytes) -> tuple[float, float, str]:
    """(width, height, "viewBox" or "width_height") of an SVG document: the viewBox, whose aspect is
    what rasterize fits into its square, else the width and height attributes."""
    try:
        root = svg.parse(data)  # the rasterizer's own safe parse (no DTD loading, no network)
    except svg.SvgError as e:
        raise SizeError(str(e)) from None
    if etree.QName(root).localname != "svg":
        raise SizeError(f"not an SVG (root element <{etree.QName(root).localname}>)")
    vb = view_box(root.get("viewBox"))
    if vb:
        return vb[0], vb[1], "viewBox"
    w, h = length(root.get("width")), length(root.get("height"))
    if w and h:
        return w, h, "width_height"
    raise SizeError("no viewBox and no absolute width and height")


def read_svg_size(path: Path, max_bytes: int) -> tuple[float, float, str]:
    """An SVG's size, reading at most max_bytes (filter.max_svg_bytes: what filter let through)."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise SizeError(f"larger than filter.max_svg_bytes ({max_bytes} bytes)")
    return svg_size(data)


def read_raster_size(path: Path) -> tuple[float, float, str]:
    """(width, height, format) from the image header; no pixel is decoded."""
    with open(path, "rb") as f:
        try:
            fmt = raster.sniff(f.read(64))
        except raster.RasterError as e:
            raise SizeError(str(e)) from None
        f.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # only the header is read
                with Image.open(f, formats=[fmt]) as im:
                    w, h = im.size
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            raise SizeError(f"unreadable {fmt} header: {' '.join(str(e).split())[:160]}") from None
    if w < 1 or h < 1:
        raise SizeError(f"{w}x{h} pixels")
    return float(w), float(h), fmt


def read_size(path: Path, parquet: bool, max_svg_bytes: int) -> tuple[float, float, str]:
    """The source's size; SizeError (or OSError) when it cannot be read."""
    return read_raster_size(path) if parquet else read_svg_size(path, max_svg_bytes)
