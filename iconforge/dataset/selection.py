"""Which manifest rows may enter the dataset: license, category, size, embedded rasters.

Every row comes back either kept or with a reason "<kind>: <detail>"; the kind
(license, category, size, embedded_raster, missing, path, variant) is what
metrics count, the detail is for the person reading filter_rejects.csv.
"""
from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from iconforge.config import FilterConfig

MANIFEST_COLUMNS = ["path", "license", "category", "author", "name", "bytes", "sha256"]

# An <image> element whose pixels are inlined (data:image/png;base64,...) or linked
# from a raster file: a bitmap inside the "vector" icon, which rasterizes blurry.
_IMAGE_TAG = re.compile(rb"<(?:[\w.-]+:)?image\b[^>]*>", re.IGNORECASE)
_RASTER_REF = re.compile(
    rb"data:image/(?:png|jpe?g|gif|webp|bmp)|href\s*=\s*[\"'][^\"']*\.(?:png|jpe?g|gif|webp|bmp)[\"'?#]",
    re.IGNORECASE)


def embeds_raster(svg: bytes) -> bool:
    """A bytes scan, no XML parse: cheap on multi-MB files and safe on hostile ones."""
    return any(_RASTER_REF.search(tag.group(0)) for tag in _IMAGE_TAG.finditer(svg))


def kind(reason: str) -> str:
    """The reason's kind, the part before ':'."""
    return reason.split(":", 1)[0]


def _reason(row: dict[str, str], cfg: FilterConfig, raw: Path) -> str | None:
    rel = PurePosixPath(row["path"])
    if rel.is_absolute() or ".." in rel.parts or "\\" in row["path"] or rel.suffix.lower() != ".svg":
        return f"path: not a relative .svg path inside data/raw: {row['path']!r}"
    if len(rel.parts) < 3:
        return f"path: {row['path']!r} is not inside a <license>/<category>/ folder"
    if rel.parts[0] != row["license"]:
        return f"path: license column {row['license']!r} disagrees with the folder {rel.parts[0]!r}"
    if row["license"] not in cfg.licenses:
        return f"license: {row['license']} not in filter.licenses"
    if cfg.categories_include and row["category"] not in cfg.categories_include:
        return f"category: {row['category']} not in filter.categories_include"
    if row["category"] in cfg.categories_exclude:
        return f"category: {row['category']} in filter.categories_exclude"
    try:
        st = os.lstat(raw / rel)
    except OSError as e:
        return f"missing: {raw / rel}: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):  # a link or device could point outside data/raw
        return f"path: {raw / rel} is not a regular file"
    if st.st_size > cfg.max_svg_bytes:
        return f"size: {st.st_size} bytes > filter.max_svg_bytes {cfg.max_svg_bytes}"
    if cfg.drop_embedded_raster:
        with open(raw / rel, "rb") as f:
            if embeds_raster(f.read(cfg.max_svg_bytes + 1)):
                return "embedded_raster: <image> with PNG/JPEG pixels (filter.drop_embedded_raster)"
    return None


def screen(rows: list[dict[str, str]], cfg: FilterConfig, raw: Path) -> tuple[list[dict], list[dict]]:
    """Split manifest rows into kept rows and rejects {path, reason}."""
    for key in ("categories_include", "categories_exclude"):  # a typo would otherwise filter nothing
        unknown = sorted(set(getattr(cfg, key)) - {r["category"] for r in rows})
        if unknown:
            print(f"warning: filter.{key}: no icon has category {', '.join(unknown)}", file=sys.stderr)
    kept, rejects = [], []
    for row in tqdm(rows, desc="filter", unit="icon"):
        reason = _reason(row, cfg, Path(raw))
        if reason is None:
            kept.append(row)
        else:
            rejects.append({"path": row["path"], "reason": reason})
    return kept, rejects


def check_accounted(rows: list[dict], kept: list[dict], rejects: list[dict]) -> None:
    """Every manifest row must end up kept or rejected exactly once: nothing silently vanishes."""
    seen = sorted([r["path"] for r in kept] + [r["path"] for r in rejects])
    expected = sorted(r["path"] for r in rows)
    if seen != expected:
        lost = sorted(set(expected) - set(seen))[:5]
        twice = sorted({p for p in seen if seen.count(p) > 1})[:5]
        raise RuntimeError(f"filter accounting broken: lost {lost}, counted twice {twice}")
