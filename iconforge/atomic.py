"""Atomic outputs: a stage's result appears whole or not at all.

Everything is written to a temporary sibling first and moved into place with
os.replace, so an interrupted stage never leaves a half-written file that a
later run (or DVC) would mistake for a finished one.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `dest` on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(dest: Path, mode: str = "w") -> Iterator:
    """Yield a file object whose content replaces `dest` when closed cleanly."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as f:
            yield f
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(dest: Path, text: str) -> None:
    with atomic_file(dest) as f:
        f.write(text)


def write_bytes(dest: Path, data: bytes) -> None:
    with atomic_file(dest, "wb") as f:
        f.write(data)


def write_json(dest: Path, obj) -> None:
    """Stable JSON (sorted keys, fixed indent) so equal content means equal bytes."""
    write_text(dest, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")

