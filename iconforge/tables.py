"""CSV tables between stages: read with a clear error, write atomically and stably."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

from iconforge.atomic import atomic_file
from iconforge.errors import InputError, MissingInput


def read_csv(path: Path, required: Iterable[str] = ()) -> list[dict[str, str]]:
    """All rows of a CSV file; fails naming the file when a required column is missing."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: missing (run the stage that writes it first)")
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
