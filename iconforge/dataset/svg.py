"""Sanitize one untrusted SVG and render it to a square, opaque RGB PNG.

`sanitize` parses with lxml so that only *internal* DTD entities resolve
(Adobe Illustrator exports declare their namespaces that way, which cairosvg's
defusedxml parser refuses); external entities, the network and entity bombs
are refused by libxml2. It then drops the DTD, strips every link that leaves
the document and rewrites CSS the renderers do not know. `render` hands the
plain SVG to a renderer, which draws it onto a transparent canvas:
  - cairosvg, with a url_fetcher that refuses all but data: URLs, after one
    speed-up (<use> targets copied in place);
  - resvg (Rust), which resolves only data: URLs once the sanitizer has dropped
    every other link, after a font fallback (see _add_font_fallback).
The drawing is then flattened onto white, or onto dark grey when its ink is
(almost) all white, and encoded once. "Blank" means nothing visible was drawn.
Time and memory bounds are the caller's job (iconforge.dataset.rasterize).
"""
from __future__ import annotations

import functools
import io
import re
from copy import deepcopy as copy_element
from dataclasses import dataclass

import cairocffi
import cairosvg
import numpy as np
import PIL
import resvg
from cairosvg.parser import Tree
from cairosvg.surface import PNGSurface
from cairosvg.url import fetch
from lxml import etree
from PIL import Image, ImageChops

from iconforge.dataset.raster import PNG_COMPRESS_LEVEL, WHITE

# Bump when sanitize/render change their output: it is part of the cache key.
# 2: drawn on transparent, white-only marks flattened onto dark grey, blank = nothing visible.
SANITIZER_VERSION = "3"
# config.RENDERERS -> versions of what draws and encodes the PNG (part of the cache key).
RENDERER_VERSIONS = {
    "cairosvg": f"cairosvg {cairosvg.__version__}, cairo {cairocffi.cairo_version_string()}, pillow {PIL.__version__}",
    "resvg": f"resvg {resvg.__version__}, pillow {PIL.__version__}",
}
DARK = (64, 64, 64)  # behind a white-only mark (white on white is invisible): contrast ~10:1
_INK = 32  # a pixel shows on white when a channel is this much below 255
_INK_SHARE = 0.005  # below this share of drawn pixels showing on white, the mark is white-only

SVG_NS = "http://www.w3.org/2000/svg"
_HREFS = ("href", "{http://www.w3.org/1999/xlink}href")
_DROPPED = "{urn:iconforge}dropped"
# Elements whose content is not drawn in place (but cairosvg draws a <clipPath> as is).
_DEFINITIONS = ("defs", "mask", "pattern", "marker", "symbol")
_INLINABLE = ("g", "path", "rect", "circle", "ellipse", "line", "polyline", "polygon")
_INLINE_BUDGET = 200_000  # elements copied per icon: bounds the copies' memory

# Internal entities only; no DTD loading, no network, libxml2's default size
# and entity-amplification limits (huge_tree=False) stop entity bombs.
_PARSER = etree.XMLParser(resolve_entities="internal", no_network=True, load_dtd=False,
                          huge_tree=False, remove_comments=True, remove_pis=True)


class SvgError(ValueError):
    """The file cannot become a training image; str(e) is the recorded reason."""


def _refuse_fetch(url: str, resource_type: str) -> bytes:
    """Only data: URLs; anything else (file, http, a CSS @import) reads as empty,
    which cairosvg draws as nothing, like a broken link in a browser."""
    return fetch(url, resource_type) if url.startswith("data:") else b""


def strip_light_dark(text: str) -> str:
    """CSS `light-dark(a, b)` -> `a`; the renderer does not know the function."""
    while (start := text.find("light-dark(")) >= 0:
        depth, comma, i = 0, None, start + len("light-dark(")
        for i in range(i, len(text)):
            c = text[i]
            if c == "(":
                depth += 1
            elif c == ")":
                if depth == 0:
                    break
                depth -= 1
            elif c == "," and depth == 0 and comma is None:
                comma = i
        else:
            raise SvgError("unbalanced parentheses in light-dark()")
        first = text[start + len("light-dark("):comma if comma is not None else i].strip()
        text = text[:start] + first + text[i + 1:]
    return text


def parse(data: bytes) -> etree._Element:
    try:
        return etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as e:
        # Some Illustrator exports repeat their private data after </svg>: keep the document.
        if not e.msg.startswith("Extra content at the end of the document"):
            raise SvgError(f"invalid XML: {e.msg}") from None
        line, column = e.position
        lines = data.split(b"\n")
        head = b"\n".join(lines[:line - 1] + [lines[line - 1][:column - 1]])
        try:
            return etree.fromstring(head, _PARSER)
        except etree.XMLSyntaxError as e2:
            raise SvgError(f"invalid XML: {e2.msg}") from None


def sanitize(data: bytes) -> bytes:
    """Untrusted SVG bytes -> self-contained SVG bytes safe to hand to any renderer."""
    return etree.tostring(_sanitized_tree(data), encoding="utf-8")  # the element only: no DTD


def _sanitized_tree(data: bytes) -> etree._Element:
    if not data.strip():
        raise SvgError("empty file")
    root = parse(data)
    if root.tag not in (f"{{{SVG_NS}}}svg", "svg"):
        raise SvgError(f"not an SVG (root element <{etree.QName(root).localname}>)")
    ids = {el.get("id") for el in root.iter(etree.Element)}
    for el in root.iter(etree.Element):
        for name in _HREFS:
            href = el.get(name)
            if href is not None and not href.startswith(("#", "data:")):
                del el.attrib[name]  # file://, http://, absolute or relative paths
        if etree.QName(el).localname in ("use", "image") and not any(el.get(n) for n in _HREFS):
            el.tag = _DROPPED  # cairosvg would fetch the document's own folder or <use> itself
        if etree.QName(el).localname == "flowRoot":
            el.tag = _DROPPED  # Inkscape's SVG 1.2 draft text: browsers skip it, cairosvg paints its frame
        for name, value in el.attrib.items():
            if "light-dark(" in value:
                el.set(name, strip_light_dark(value))
        if el.text and "light-dark(" in el.text:  # <style> sheets
            el.text = strip_light_dark(el.text)
        _drop_dangling_filter(el, ids)
    etree.strip_elements(root, _DROPPED, with_tail=False)
    # Fit the whole viewBox into the square: never stretch, never crop.
    root.set("preserveAspectRatio", "xMidYMid meet")
    return root


_URL_ID = r"""url\(\s*["']?#([^)"']*)["']?\s*\)"""
_FILTER_DECLARATION = re.compile(rf"filter\s*:\s*{_URL_ID}\s*;?")


def _drop_dangling_filter(el: etree._Element, ids: set) -> None:
    """A filter that points to no element is ignored, as browsers and cairosvg do
    (Filter Effects 1); resvg follows SVG 1.1 and would not draw the element at all."""
    ref = re.fullmatch(_URL_ID, el.get("filter", "").strip())
    if ref and ref[1] not in ids:
        del el.attrib["filter"]
    if "filter" in el.get("style", ""):
        el.set("style", _FILTER_DECLARATION.sub(lambda m: m[0] if m[1] in ids else "", el.get("style")))


def _inline_uses(root: etree._Element) -> None:
    """A cairosvg speed-up: replace each <use> of a shape or group by a copy of it in a <g>.

    cairosvg finds every <use> target by scanning the whole document, and redraws
    a <clipPath> for each element it clips: icons with thousands of <use> took
    10+ s. It draws the copy exactly as it draws the <use> (its target under a
    group carrying the <use>'s attributes, translated by x, y): byte-identical PNGs
    on all 87 bioicons with <use>, 2.7x faster on them. (A <g> inside <clipPath> is
    not valid SVG for other renderers, hence not part of `sanitize`.) Other targets
    (<svg>, <symbol>, <image>), targets containing <use> (chains, cycles, bombs)
    and <use> inside other definitions are left to cairosvg and its own limits.
    """
    ids = {el.get("id"): el for el in root.iter(etree.Element) if el.get("id")}
    budget = _INLINE_BUDGET
    for use in list(root.iter(f"{{{SVG_NS}}}use")):
        href = next((use.get(n) for n in _HREFS if use.get(n)), "")
        target = ids.get(href[1:]) if href.startswith("#") else None
        if (target is None or etree.QName(target).localname not in _INLINABLE
                or next(target.iter(f"{{{SVG_NS}}}use"), None) is not None
                or any(etree.QName(a).localname in _DEFINITIONS for a in use.iterancestors())):
            continue
        try:
            x, y = float(use.get("x", 0)), float(use.get("y", 0))
        except ValueError:  # units (mm, %) need the renderer's viewport: leave it the <use>
            continue
        copy = copy_element(target)
        budget -= sum(1 for _ in copy.iter())
        if budget < 0:
            return
        for el in copy.iter(etree.Element):
            el.attrib.pop("id", None)  # ids stay unique; the original keeps its id
        for name in (*_HREFS, "x", "y", "viewBox"):
            use.attrib.pop(name, None)
        use.tag = f"{{{SVG_NS}}}g"
        etree.SubElement(use, f"{{{SVG_NS}}}g", transform=f"translate({x!r},{y!r})").append(copy)


@dataclass(frozen=True)
class Raster:
    png: bytes
    background: tuple[int, int, int]  # WHITE, or DARK for a white-only mark


def render(data: bytes, size: int, margin: float, renderer: str) -> Raster:
    """SVG bytes -> a `size` px square RGB PNG, the drawing fitted (aspect kept) and
    centred inside a border of `margin` * size on each side, flattened onto WHITE,
    or onto DARK when (almost) all its ink is white."""
    pad = round(size * margin)
    inner = size - 2 * pad
    drawing = _DRAW[renderer](_sanitized_tree(data), inner)  # RGBA, straight alpha
    alpha = drawing.getchannel("A")
    drawn = inner * inner - alpha.histogram()[0]
    if not drawn:
        raise SvgError("blank (nothing drawn)")
    background = WHITE
    canvas = _flatten(drawing, background, size, pad)
    r, g, b = canvas.crop((pad, pad, pad + inner, pad + inner)).split()
    ink = sum(ImageChops.darker(ImageChops.darker(r, g), b).histogram()[:256 - _INK])
    if ink < _INK_SHARE * drawn:
        background = DARK
        canvas = _flatten(drawing, background, size, pad)
    if all(lo == hi for lo, hi in canvas.crop((pad, pad, pad + inner, pad + inner)).getextrema()):
        raise SvgError("blank (one flat colour)")  # e.g. a background rectangle and nothing on it
    out = io.BytesIO()
    canvas.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)  # no metadata, no timestamp
    return Raster(out.getvalue(), background)


def _flatten(drawing: Image.Image, background: tuple[int, int, int], size: int, pad: int) -> Image.Image:
    canvas = Image.new("RGB", (size, size), background)
    canvas.paste(drawing, (pad, pad), mask=drawing)  # alpha-blends onto the background
    return canvas


def _draw_cairosvg(root: etree._Element, inner: int) -> Image.Image:
    # cairo caches fonts per process, and text then renders differently depending on which
    # icons the worker drew before: start every icon from a clean cache (no cairo object
    # outlives a render), so a PNG does not depend on the pool's scheduling.
    cairocffi.cairo.cairo_debug_reset_static_data()
    _inline_uses(root)
    try:
        tree = Tree(bytestring=etree.tostring(root, encoding="utf-8"), url_fetcher=_refuse_fetch)
        # output=None skips cairosvg's own PNG encoding: we read the surface directly.
        surface = PNGSurface(tree, None, 96, output_width=inner, output_height=inner)
    except MemoryError:
        raise
    except cairocffi.CairoError as e:
        if e.status == cairocffi.STATUS_NO_MEMORY:
            raise MemoryError(str(e)) from None
        raise SvgError(f"render error: CairoError: {_one_line(e)}") from None
    except Exception as e:  # cairosvg raises many types on malformed drawings
        raise SvgError(f"render error: {type(e).__name__}: {_one_line(e)}") from None
    surface.cairo.flush()
    # cairo's ARGB32 is one native-endian, premultiplied uint32 per pixel; as little-endian
    # bytes that is Pillow's "BGRa", which it un-premultiplies.
    pixels = np.frombuffer(surface.cairo.get_data(), "=u4").astype("<u4", copy=False).tobytes()
    drawing = Image.frombuffer("RGBA", (surface.width, surface.height), pixels, "raw", "BGRa",
                               surface.cairo.get_stride(), 1)
    surface.finish()
    return drawing


@functools.cache
def _resvg_options() -> tuple[resvg.usvg.Options, str]:
    """System fonts, like cairo's fontconfig, and the family that stands in for missing ones."""
    options = resvg.usvg.Options.default()
    options.load_system_fonts()
    fonts = options.list_fonts()
    fallback = next((f for f in ("DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial") if f in fonts),
                    fonts[0] if fonts else "sans-serif")
    options.font_family = fallback  # for text that names no font
    return options, fallback


# A CSS font-family value, up to `;`, `}`, `!important` or the end of a style attribute.
_FONT_FAMILY = re.compile(r"(font-family\s*:\s*)([^;}!]+?)(\s*(?:[;}!]|$))")


def _add_font_fallback(root: etree._Element, family: str) -> None:
    """Append `family` to every font-family list. resvg drops text whose fonts are all
    missing (its generic serif/sans-serif mean Times New Roman/Arial, absent here),
    where fontconfig substitutes a font; most bioicons name Arial or Illustrator fonts."""
    fallback = f", '{family}'"
    for el in root.iter(etree.Element):
        if el.get("font-family"):
            el.set("font-family", el.get("font-family") + fallback)
        if "font-family" in el.get("style", ""):
            el.set("style", _FONT_FAMILY.sub(rf"\1\2{fallback}\3", el.get("style")))
        if etree.QName(el).localname == "style" and el.text and "font-family" in el.text:
            el.text = _FONT_FAMILY.sub(rf"\1\2{fallback}\3", el.text)


def _draw_resvg(root: etree._Element, inner: int) -> Image.Image:
    options, fallback = _resvg_options()
    _add_font_fallback(root, fallback)
    if root.get("viewBox"):  # let usvg fit the viewBox into the square (meet), as cairosvg does
        root.set("width", str(inner))
        root.set("height", str(inner))
    try:
        tree = resvg.usvg.Tree.from_str(etree.tostring(root, encoding="unicode"), options)
        w, h = tree.int_size()
        k = inner / max(w, h)
        png = resvg.render(tree, (k, 0, (inner - w * k) / 2, 0, k, (inner - h * k) / 2), bg_size=(inner, inner))
    except MemoryError:
        raise
    except BaseException as e:  # the binding turns parse errors into Rust panics (BaseException)
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise  # KeyboardInterrupt, SystemExit
        raise SvgError(f"render error: resvg: {_one_line(e)}") from None
    return Image.open(io.BytesIO(png)).convert("RGBA")


_DRAW = {"cairosvg": _draw_cairosvg, "resvg": _draw_resvg}


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:200]
