"""Atomic outputs: a stage's result appears whole or not at all.

Everything is written to a temporary sibling first and moved into place with
os.replace, so an interrupted stage never leaves a half-written file that a
later run (or DVC) would mistake for a finished one. A write that fails for
lack of space leaves the previous `dest` as it was and becomes a DiskFull
naming `dest` and the space it needed. A temporary is named for its host and process
(`.<dest>.tmp-<host>-<pid>-<random>`), so what a killed writer left (a whole data/png, a checkpoint,
a cache entry) can be told from another live writer's: the next atomic_dir in that folder removes
the dead ones, and the caches that write many files (raster, encodings) sweep their folders once per run.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from iconforge.errors import NO_SPACE, DiskFull


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def _disk_full(e: OSError, dest: Path, needed: int | None, written: int) -> DiskFull:
    need = f"{_mb(needed)} needed" if needed else f"more than the {_mb(written)} written before it failed"
    free = shutil.disk_usage(dest.parent).free
    return DiskFull(f"{dest}: no space left to write it ({e.strerror}; {need}, {_mb(free)} "
                    f"free on its disk); free space and rerun (finished outputs and checkpoints are intact)")


_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_TMP = re.compile(rf"\..+\.tmp-{_HOST}-(\d+)-[^.]*")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _prefix(dest: Path) -> str:
    """The start of a temporary's name for `dest`, which _TMP recognises."""
    return f".{dest.name}.tmp-{_HOST}-{os.getpid()}-"


def sweep_dead_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries (directories and files) that killed atomic writers on this host left in
    `folder` (their process is gone); a live writer's, or another host's on a shared disk, stay.
    Returns them."""
    removed = []
    for p in folder.iterdir():
        m = _TMP.fullmatch(p.name)
        if m and not _alive(int(m.group(1))):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_dir(dest: Path, needed: int | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `dest` on success (`needed`: its expected
    size in bytes, for the message if the disk is full)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for p in sweep_dead_temporaries(dest.parent):
        print(f"note: removed {p}, left by a killed write", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(dest), dir=dest.parent))
    try:
        try:
            yield tmp
        except OSError as e:
            if e.errno not in NO_SPACE:
                raise
            written = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
            raise _disk_full(e, dest, needed, written) from e
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
def atomic_file(dest: Path, mode: str = "w", needed: int | None = None) -> Iterator:
    """Yield a file object whose content replaces `dest` when closed cleanly."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(dest), dir=dest.parent)
    try:
        try:
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as f:
                yield f
        except OSError as e:
            if e.errno not in NO_SPACE:
                raise
            raise _disk_full(e, dest, needed, os.path.getsize(tmp)) from e
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(dest: Path, text: str) -> None:
    with atomic_file(dest) as f:
        f.write(text)


def write_bytes(dest: Path, data: bytes) -> None:
    with atomic_file(dest, "wb", needed=len(data)) as f:
        f.write(data)


# os.link's errors that mean "this file system or these two places cannot link": copy instead.
CANNOT_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP}


def link_or_copy(src: Path, dest: Path) -> None:
    """A new file dest as a hard link to src (no second copy of the bytes), or a copy where the file
    system cannot link. The two names share one content: an edit in place changes both (the raster
    cache detects that, iconforge.dataset.rasterize). An existing dest is an error, never written through."""
    try:
        os.link(src, dest)
    except OSError as e:
        if e.errno not in CANNOT_LINK:
            raise
        shutil.copyfile(src, dest)


def write_json(dest: Path, obj) -> None:
    """Stable JSON (sorted keys, fixed indent) so equal content means equal bytes."""
    write_text(dest, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")

