"""The captioned dataset's split folders, Hugging Face imagefolder layout: one writer, one reader.

    <split>/<path>.png       the image
    <split>/<path>.txt       its caption (the sidecar kohya and ai-toolkit read)
    <split>/metadata.jsonl   one JSON object per image: file_name, text and provenance,
                             what `datasets.load_dataset("imagefolder", data_dir=...)` reads
"""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from iconforge.atomic import atomic_file
from iconforge.errors import InputError
from iconforge.paths import METADATA
from iconforge.tables import require


def write_metadata(split_dir: Path, records: list[dict]) -> None:
    """metadata.jsonl of one split: `records` (each with file_name and text), sorted by file name."""
    with atomic_file(Path(split_dir) / METADATA) as f:
        for rec in sorted(records, key=lambda r: r["file_name"]):
            f.write(json.dumps(rec, sort_keys=True, ensure_ascii=False) + "\n")


def _safe_file_name(value: object) -> str | None:
    """A relative POSIX path inside the split folder, or None: a row never makes us open a file elsewhere."""
    if not isinstance(value, str) or not value or "\\" in value or "\0" in value:
        return None
    p = PurePosixPath(value)
    return value if not p.is_absolute() and ".." not in p.parts else None


def read_metadata(split_dir: Path) -> list[dict]:
    """Every row of a split's metadata.jsonl, sorted by file_name; `file_name` and `text` are checked."""
    path = Path(split_dir) / METADATA
    require(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not JSON ({e})") from None
            if not isinstance(row, dict) or _safe_file_name(row.get("file_name")) is None:
                raise InputError(f"{path}:{n}: file_name must be a relative path inside the split folder")
            if not isinstance(row.get("text"), str):
                raise InputError(f"{path}:{n}: text must be a string")
            rows.append(row)
    return sorted(rows, key=lambda r: r["file_name"])
