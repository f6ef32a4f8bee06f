"""data/manifest.csv rows: one per extracted SVG, sorted by path (written with tables.write_csv)."""
from __future__ import annotations

import hashlib
from pathlib import Path

FIELDS = ["path", "license", "category", "author", "name", "bytes", "sha256"]


def build(raw: Path) -> list[dict]:
    """Rows for every SVG under `raw` (laid out <license>/<category>/<author>/<name>.svg).

    An SVG outside that layout keeps its row with the missing folders left ""
    (filter_license decides what to do with it), so nothing vanishes here.
    """
    rows = []
    for p in raw.rglob("*"):
        if not (p.is_file() and p.suffix.lower() == ".svg"):
            continue
        rel = p.relative_to(raw).as_posix()
        lic, category, author = (rel.split("/")[:-1] + ["", "", ""])[:3]
        with open(p, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        rows.append(dict(path=rel, license=lic, category=category, author=author,
                         name=p.stem, bytes=p.stat().st_size, sha256=digest))
    return sorted(rows, key=lambda r: r["path"])

