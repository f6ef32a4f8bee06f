"""The whole analysis of one captioned dataset: every table, the metrics and both images, from
data/dataset (captions, images), data/filtered.csv (license, category, split, source path) and
data/raw (the source files, for their sizes). Nothing here writes files: the stage shell does."""
from __future__ import annotations

import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from iconforge.config import EdaConfig
from iconforge.dataset.captions import png_path
from iconforge.dataset.imagefolder import read_metadata
from iconforge.eda import draw, sources, stats, text
from iconforge.evaluate.style import normalize, palette_size, white_background_ratio
from iconforge.paths import SPLITS, inside

NONE = "(none)"  # a category or license the row does not have
UNMATCHED = "(not in filtered.csv)"
_WARN_MAX = 5  # skipped items named on stderr; all are counted in the metrics


@dataclass(frozen=True)
class Item:
    """One image of the captioned dataset."""
    image: Path  # data/dataset/<split>/<file_name>
    split: str
    caption: str
    license: str
    category: str
    source: Path | None  # its source file in data/raw (None when filtered.csv has no row for it)


@dataclass
class Eda:
    tables: dict[str, tuple[list[str], list[dict]]]  # name -> (columns, rows)
    metrics: dict
    wordcloud: Image.Image
    contact_sheet: Image.Image


def items(dataset: Path, filtered: list[dict], raw: Path) -> list[Item]:
    """Every image of every split, with its filtered.csv row's license and category, sorted by split and file."""
    by_png = {png_path(r["path"]): r for r in filtered}
    out = []
    for split in SPLITS:
        for rec in read_metadata(Path(dataset) / split):
            row = by_png.get(rec["file_name"])
            out.append(Item(image=Path(dataset) / split / rec["file_name"], split=split, caption=rec["text"],
                            license=(row["license"] or NONE) if row else UNMATCHED,
                            category=(row["category"] or NONE) if row else UNMATCHED,
                            source=inside(raw, row["path"]) if row else None))
    return out


def _warn(what: str, skipped: list[str]) -> None:
    for line in skipped[:_WARN_MAX]:
        print(f"warning: eda: {what}: skipped {line}", file=sys.stderr)
    if len(skipped) > _WARN_MAX:
        print(f"warning: eda: {what}: skipped {len(skipped) - _WARN_MAX} more", file=sys.stderr)


def source_sizes(all_items: list[Item], parquet: bool,
                 max_svg_bytes: int) -> tuple[list[tuple[float, float]], Counter, list[str]]:
    """(width, height) of each readable source, how each was read, and what was skipped (path: why)."""
    sizes, how, skipped = [], Counter(), []
    for it in tqdm(all_items, desc="eda source sizes", unit="image"):
        if it.source is None:
            skipped.append(f"{it.image}: no filtered.csv row")
            continue
        try:
            w, h, kind = sources.read_size(it.source, parquet, max_svg_bytes)
        except (sources.SizeError, OSError) as e:
            skipped.append(f"{it.source}: {e}")
            continue
        sizes.append((w, h))
        how[kind] += 1
    return sizes, how, skipped


def colour_stats(images: list[Path], limit: int, seed: int) -> tuple[list[int], list[float], list[str]]:
    """Palette size and white background share (iconforge.evaluate.style) of every image, or of a
    seeded sample of `limit` (0 = all); unreadable images are skipped (path: why)."""
    chosen = sorted(images)
    if 0 < limit < len(chosen):
        chosen = sorted(random.Random(seed).sample(chosen, limit))
    palettes, backgrounds, skipped = [], [], []
    for path in tqdm(chosen, desc="eda colours", unit="image"):
        try:
            with Image.open(path, formats=["PNG"]) as im:
                rgb = np.asarray(normalize(im))
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            skipped.append(f"{path}: {' '.join(str(e).split())[:160]}")
            continue
        palettes.append(palette_size(rgb))
        backgrounds.append(white_background_ratio(rgb))
    return palettes, backgrounds, skipped


def _rows(pairs: list[tuple[str, int]], column: str) -> list[dict]:
    return [{column: k, "count": n} for k, n in pairs]


def analyse(dataset: Path, filtered: list[dict], raw: Path, parquet: bool, trigger: str, max_svg_bytes: int,
            cfg: EdaConfig) -> Eda:
    all_items = items(dataset, filtered, raw)
    chars = [len(it.caption) for it in all_items]
    n_words = [len(it.caption.split()) for it in all_items]
    words, bigrams = text.count((it.caption for it in all_items), trigger)
    sizes, size_from, size_skipped = source_sizes(all_items, parquet, max_svg_bytes)
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    aspects = [round(w / h, 6) for w, h in sizes]
    palettes, backgrounds, colour_skipped = colour_stats([it.image for it in all_items], cfg.colour_images, cfg.seed)
    train = [it.image for it in all_items if it.split == "train"]
    sheet, sheet_skipped = draw.contact_sheet(train, cfg.sheet_images, cfg.sheet_tile, cfg.seed)
    cloud = draw.word_cloud(text.top(words, cfg.cloud_words), cfg.seed)
    _warn("source size", size_skipped)
    _warn("colours", colour_skipped)

    b = cfg.max_bins
    split_counts = Counter(it.split for it in all_items)
    tables = {
        "license": (["license", "images"], stats.counts((it.license for it in all_items), "license")),
        "category": (["category", "images"], stats.counts((it.category for it in all_items), "category")),
        "split": (["split", "images"], [{"split": s, "images": split_counts[s]} for s in SPLITS]),
        "caption_chars": (stats.HISTOGRAM_COLUMNS, stats.histogram(chars, b, integer=True)),
        "caption_words": (stats.HISTOGRAM_COLUMNS, stats.histogram(n_words, b, integer=True)),
        "top_words": (["word", "count"], _rows(text.top(words, cfg.top_n), "word")),
        "top_bigrams": (["bigram", "count"], _rows(text.top(bigrams, cfg.top_n), "bigram")),
        "source_width": (stats.HISTOGRAM_COLUMNS, stats.histogram(widths, b)),
        "source_height": (stats.HISTOGRAM_COLUMNS, stats.histogram(heights, b)),
        "source_aspect": (stats.HISTOGRAM_COLUMNS, stats.histogram(aspects, b)),
        "palette_size": (stats.HISTOGRAM_COLUMNS, stats.histogram(palettes, b, integer=True)),
        "background_share": (stats.HISTOGRAM_COLUMNS, stats.histogram(backgrounds, b, span=(0.0, 1.0))),
    }
    metrics = {
        "source": "parquet" if parquet else "bioicons",
        "images": len(all_items),
        "by_split": {s: split_counts[s] for s in SPLITS},
        "by_license": dict(sorted(Counter(it.license for it in all_items).items())),
        "categories": len({it.category for it in all_items}),
        "caption_chars": stats.summary(chars),
        "caption_words": stats.summary(n_words),
        "vocabulary": {"words": len(words), "bigrams": len(bigrams)},
        "source_size": {"measured": len(sizes), "skipped": len(size_skipped), "read_from": dict(sorted(size_from.items())),
                        "width": stats.summary(widths), "height": stats.summary(heights),
                        "aspect": stats.summary(aspects)},
        "colour": {"measured": len(palettes), "skipped": len(colour_skipped),
                   "palette_size": stats.summary(palettes), "background_share": stats.summary(backgrounds)},
        "contact_sheet": {"images": min(cfg.sheet_images, len(train) - sheet_skipped), "skipped": sheet_skipped},
    }
    return Eda(tables, metrics, cloud, sheet)
