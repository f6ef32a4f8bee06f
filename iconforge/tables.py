"""Tables and records between stages (CSV, JSON): read with a clear error naming the file, write
atomically and stably."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable

from iconforge.atomic import atomic_file
from iconforge.errors import InputError, MissingInput


def require(*paths: Path) -> None:
    """Stop with MissingInput naming the first of `paths` that does not exist."""
    for path in paths:
        if not Path(path).exists():
            raise MissingInput(f"{path}: missing (run the stage that writes it first)")


def read_json(path: Path, required: Iterable[str] = ()) -> dict:
    """A JSON object; fails naming the file when it is missing, not JSON, or lacks a required field."""
    path = Path(path)
    require(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a JSON object")
    missing = [k for k in required if k not in data]
    if missing:
        raise InputError(f"{path}: missing field(s) {', '.join(missing)}")
    return data


def read_csv(path: Path, required: Iterable[str] = ()) -> list[dict[str, str]]:
    """All rows of a CSV file; fails naming the file when a required column is missing."""
    path = Path(path)
    require(path)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
        return list(reader)


def write_csv(path: Path, rows: Iterable[dict], columns: list[str]) -> None:
    """Rows in the given order with exactly `columns`; '\\n' line ends so bytes are stable."""
    with atomic_file(Path(path)) as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
