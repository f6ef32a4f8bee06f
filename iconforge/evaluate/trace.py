"""Raster -> SVG with vtracer, so generated icons can be pasted into figures as vectors."""
from __future__ import annotations

import io

import vtracer
from lxml import etree
from PIL import Image

SVG_NS = "{http://www.w3.org/2000/svg}"


def png_bytes(img: Image.Image) -> bytes:
    """PNG with no metadata chunks, so equal pixels give equal bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def trace_svg(img: Image.Image) -> str:
    """Colour polygon tracing: flat shapes with straight edges, like the icon library's own style."""
    return vtracer.convert_raw_image_to_svg(
        png_bytes(img.convert("RGB")), img_format="png", colormode="color", hierarchical="stacked",
        mode="polygon", filter_speckle=4, color_precision=6, layer_difference=16)


def count_paths(svg: str) -> int:
    """Number of <path> elements; also proves the SVG is well-formed XML."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    root = etree.fromstring(svg.encode("utf-8"), parser)
    return sum(1 for _ in root.iter(f"{SVG_NS}path"))
