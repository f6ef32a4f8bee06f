"""Synthetic logo parquet shards in the real schema of the logo datasets (for `make demo-logos`,
bench/ and tests; no dataset download is possible offline):

    image: struct<bytes: binary, path: string>   (Hugging Face `Image` feature, PNG bytes)
    text:  string, "Simple elegant logo for <Name>, <keywords>, <Category>, successful vibe, ..."

with the `huggingface` schema metadata naming the feature types. Each image is a few Pillow
shapes and the name drawn in colour on white, 54-512 px, greyscale or RGB.

    python -m iconforge.synthetic_logos --rows 2000 --params demo-logos.yaml   # the shard its fetch.shards names
"""
from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from iconforge import overrides
from iconforge.dataset.logo_text import BOILERPLATE

SYLLABLES = ("ka", "lo", "mi", "ra", "ten", "vo", "zu", "pex", "an", "dor", "ly", "nix", "qua", "sol", "tri")
KEYWORDS = ("circle", "leaf", "mountain", "wave", "star", "lines", "shield", "bolt", "arrow", "crown", "eye", "drop")
CATEGORIES = ("Technology", "Food", "Finance", "Health", "Sports", "Education", "Travel", "Network", "Fashion")
TAIL = ("successful vibe, minimalist, thought-provoking, abstract, recognizable, relatable, sharp, vector art, "
        "even edges")
assert set(t.strip() for t in TAIL.split(",")) == BOILERPLATE  # the parser drops exactly this tail
HF_METADATA = {"info": {"features": {"image": {"_type": "Image"}, "text": {"dtype": "string", "_type": "Value"}}}}
SCHEMA = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("text", pa.string())],
                   metadata={"huggingface": json.dumps(HF_METADATA)})
ROW_GROUP = 1000


def description(rng: random.Random) -> tuple[str, str]:
    name = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
    keywords = " ".join(w.capitalize() for w in rng.sample(KEYWORDS, rng.randint(1, 3)))
    return name, f"Simple elegant logo for {name}, {keywords}, {rng.choice(CATEGORIES)}, {TAIL}"


def logo_png(rng: random.Random, name: str) -> bytes:
    size = rng.choice((54, 128, 180, 180, 180, 256, 512))
    grey = rng.random() < 0.3
    im = Image.new("L" if grey else "RGB", (size, size), 255 if grey else (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for _ in range(rng.randint(1, 3)):
        colour = rng.randrange(200) if grey else tuple(rng.randrange(220) for _ in range(3))
        x0, y0 = rng.randrange(size // 2), rng.randrange(size // 2)
        box = (x0, y0, x0 + rng.randint(size // 6, size // 2), y0 + rng.randint(size // 6, size // 2))
        getattr(draw, rng.choice(("ellipse", "rectangle")))(box, fill=colour)
    draw.text((size // 10, size * 3 // 4), name, fill=0 if grey else (20, 20, 20), font_size=max(8, size // 8))
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def rows(n: int, seed: int = 0, start: int = 0):
    """(PNG bytes, text) of rows start..n-1: row i depends on (seed, i) only."""
    for i in range(start, n):
        rng = random.Random(f"{seed}:{i}")
        name, text = description(rng)
        yield logo_png(rng, name), text


def write(path: Path, n: int, seed: int = 0, row_group: int = ROW_GROUP) -> Path:
    """A shard of n synthetic rows, streamed one row group at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, SCHEMA) as w:
        for lo in range(0, n, row_group):
            chunk = list(rows(min(lo + row_group, n), seed, lo))
            w.write_table(table([{"bytes": png, "path": None} for png, _ in chunk], [t for _, t in chunk]))
    return path


def table(images: list, texts: list) -> pa.Table:
    """Rows in SCHEMA (images: {"bytes", "path"} dicts or None)."""
    return pa.table({"image": pa.array(images, SCHEMA.field("image").type), "text": pa.array(texts, pa.string())},
                    schema=SCHEMA)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path)
    where.add_argument("--params", type=Path, help="an overrides file (demo-logos.yaml): write its fetch.shards[0]")
    a = ap.parse_args()
    out = a.out or Path(overrides.read(a.params)["fetch"]["shards"][0])
    print(f"wrote {write(out, a.rows, a.seed)} ({a.rows} rows)")
