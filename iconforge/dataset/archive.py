"""Get the icon archive (download or local file) and unpack its icons safely.

The archive comes from the internet, so extraction trusts nothing: every entry
is checked before it is written, anything hostile refuses the whole archive,
and the decompressed stream is capped so an archive bomb stops early.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import requests
from tqdm import tqdm

from iconforge.errors import StageError
from iconforge.paths import repo_root

MAX_BYTES = 2 * 1024**3  # decompressed tar stream; the full bioicons tree is ~0.4 GiB
MAX_ENTRIES = 100_000  # the full bioicons tree has ~3,200
ICONS = ("static", "icons")  # the folder we keep, below the archive's single top folder
DATA_FILES = {"authors.json", "categories.json", "icons.json", "LICENSE"}
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
BACKOFF_S = 1.0  # first wait between download attempts, doubled each time
CHUNK = 1 << 20


class ArchiveError(StageError):
    """The archive is missing, unreachable, corrupt or hostile; the message names it and why."""


def locate(source: str, workdir: Path, timeout_s: float, retries: int, *, name: str = "archive.tar.gz",
           what: str = "archive") -> Path:
    """Local path of the file `source` names: http(s) URLs are downloaded to `workdir`/`name`."""
    url = urlparse(source)
    if url.scheme in ("http", "https"):
        return download(source, workdir / name, timeout_s, retries)
    if url.scheme == "file":
        if url.netloc not in ("", "localhost"):
            raise ArchiveError(f"{source}: file:// URL must name a local absolute path")
        path = Path(url2pathname(url.path))
    elif url.scheme == "":
        path = repo_root() / source  # the original repo, also for a queued experiment's temp copy
    else:
        raise ArchiveError(f"{source}: unsupported URL scheme {url.scheme!r} (use https://, file:// or a path)")
    if not path.is_file():
        raise ArchiveError(f"{source}: {what} file not found (looked for {path})")
    return path


def _write_version(path: Path, headers) -> None:
    """What names this version of the file for If-Range: a strong ETag, else Last-Modified (a weak
    ETag may not be used); nothing when the server gives neither, so the download cannot resume."""
    etag = headers.get("ETag", "")
    tag = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified", "")
    if tag and tag.isprintable():
        path.write_text(tag, encoding="utf-8")
    else:
        path.unlink(missing_ok=True)


class _Incomplete(requests.RequestException):
    """The connection ended before Content-Length bytes arrived: retried, resuming."""


def download(url: str, dest: Path, timeout_s: float, retries: int) -> Path:
    """Stream `url` into `dest`, retrying transient failures with exponential backoff.

    Bytes land in `dest`.part first; a retry, or a later run while that file is kept, asks
    for the rest only (HTTP Range) and appends when the server answers 206. The rest is asked
    for only of the same version of the file (If-Range with the ETag or Last-Modified the first
    answer gave, kept in `dest`.part.version): a file changed on the server since comes whole
    (200), never spliced onto the old one's start; without a version to name, no resume.
    `dest` appears only once the whole body has arrived.
    """
    part = dest.with_name(dest.name + ".part")
    version = dest.with_name(dest.name + ".part.version")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        tag = version.read_text(encoding="utf-8") if version.exists() and part.exists() else ""
        have = part.stat().st_size if tag else 0
        try:
            # identity: a Range offset counts the bytes on the wire, which must be the file's own
            headers = {"Accept-Encoding": "identity"} | ({"Range": f"bytes={have}-", "If-Range": tag} if have else {})
            with requests.get(url, stream=True, timeout=timeout_s, headers=headers) as r:
                if r.status_code == 416:  # our partial file is no prefix of theirs: start over
                    part.unlink()
                    raise _Incomplete("range of a stale partial download refused (416)")
                r.raise_for_status()
                resumed = r.status_code == 206
                have = have if resumed else 0
                if not resumed:
                    _write_version(version, r.headers)
                declared = r.headers.get("Content-Length", "")
                length = int(declared) if declared.isdigit() else None  # junk ("5, 5"): no progress total
                total = length and length + have
                with open(part, "ab" if resumed else "wb") as f, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
                    for chunk in r.iter_content(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
                got = part.stat().st_size
                if total and got < total:
                    raise _Incomplete(f"connection closed at {got} of {total} bytes")
            os.replace(part, dest)
            version.unlink(missing_ok=True)
            return dest
        except requests.RequestException as e:
            status = e.response.status_code if e.response is not None else None
            if (status is not None and status not in RETRY_STATUS) or attempt == retries:
                raise ArchiveError(f"{url}: download failed after {attempt + 1} attempt(s): {e}") from e
            wait = BACKOFF_S * 2**attempt
            print(f"fetch: {url}: {e}; retrying in {wait:g} s", file=sys.stderr)
            time.sleep(wait)
    raise AssertionError("unreachable")


class _Capped:
    """Read-only file wrapper that refuses to yield more than `limit` bytes (archive bombs)."""

    def __init__(self, f, limit: int, label: str):
        self.f, self.limit, self.left, self.label = f, limit, limit, label

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(self.left + 1 if n < 0 or n > self.left else n)
        self.left -= len(data)
        if self.left < 0:
            raise ArchiveError(f"{self.label}: refused: unpacks to more than {self.limit} bytes (archive bomb?)")
        return data


# Entry types that could point or write outside the extraction folder, or are no data at all.
_REFUSED_TYPES = ((tarfile.TarInfo.issym, "a symbolic link"), (tarfile.TarInfo.islnk, "a hard link"),
                  (tarfile.TarInfo.ischr, "a device file"), (tarfile.TarInfo.isblk, "a device file"),
                  (tarfile.TarInfo.isfifo, "a fifo"), (tarfile.TarInfo.issparse, "a sparse file"))


def _refused(label: str, m: tarfile.TarInfo, why: str) -> ArchiveError:
    return ArchiveError(f"{label}: refused: entry {m.name!r} {why}")


def _check_entry(label: str, m: tarfile.TarInfo) -> list[str]:
    """Refuse a hostile entry outright; return its path parts ("." dropped)."""
    try:
        m.name.encode("utf-8")
    except UnicodeEncodeError:
        raise _refused(label, m, "has a name that is not valid UTF-8") from None
    if m.name.startswith("/"):
        raise _refused(label, m, "has an absolute path")
    parts = [p for p in m.name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refused(label, m, "contains '..' (path traversal)")
    for is_kind, kind in _REFUSED_TYPES:
        if is_kind(m):
            raise _refused(label, m, f"is {kind}")
    if not (m.isfile() or m.isdir()):
        raise _refused(label, m, f"has unsupported type {m.type!r}")
    return parts


@dataclass(frozen=True)
class Extracted:
    top: str  # the archive's one top folder, e.g. bioicons-<commit> for a GitHub source archive
    skipped: list[str]  # file entries outside static/icons/ or of another type


def extract_icons(archive: Path, dest: Path, label: str | None = None) -> Extracted:
    """Unpack static/icons/ (SVGs and the data files) of a .tar.gz into `dest`.

    `dest` should be a fresh temporary folder (atomic_dir): a refused archive
    may leave part of its files there. Errors name the archive as `label`
    (e.g. its URL rather than the temporary download).
    """
    label = label or str(archive)
    with open(archive, "rb") as f:
        head = f.read(64)
    if not head.startswith(b"\x1f\x8b"):
        raise ArchiveError(f"{label}: not a gzip archive (starts with {head[:32]!r}; "
                           "an HTML error page saved as the archive?)")
    skipped, written = [], set()
    top: str | None = None
    try:
        with gzip.open(archive, "rb") as gz, \
                tarfile.open(fileobj=_Capped(gz, MAX_BYTES, label), mode="r|") as tar:
            for count, m in enumerate(tqdm(tar, desc="extract", unit=" entries"), 1):
                if count > MAX_ENTRIES:
                    raise _refused(label, m, f"is past the limit of {MAX_ENTRIES} entries (archive bomb?)")
                parts = _check_entry(label, m)
                if not parts:
                    continue  # the "./" entry of `tar czf x.tar.gz .`
                top = top or parts[0]
                if parts[0] != top:
                    raise _refused(label, m, f"is outside the top folder {top!r} (more than one top folder)")
                if len(parts) == 1 and not m.isdir():
                    raise _refused(label, m, "is a file at the top level (expected one top folder)")
                rel = parts[1:]
                keep = (tuple(rel[:2]) == ICONS and len(rel) > 2 and m.isfile()
                        and (rel[-1].lower().endswith(".svg") or rel[-1] in DATA_FILES))
                if not keep:
                    if m.isfile():
                        skipped.append(m.name)
                    continue
                out = "/".join(rel[2:])
                if out in written:
                    raise _refused(label, m, "appears twice")
                written.add(out)
                # The 'data' filter re-checks the entry (no escape, no special bits) as a second line.
                tar.extract(m.replace(name=out, deep=False), dest, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ArchiveError(f"{label}: corrupt or truncated archive: {e}") from e
    except OSError as e:
        raise ArchiveError(f"{label}: cannot extract: {e}") from e
    if not any(p.lower().endswith(".svg") for p in written):
        raise ArchiveError(f"{label}: no SVG files under static/icons/ in the top folder")
    return Extracted(top, skipped)


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_sha256(path: Path, expected: str, label: str) -> None:
    """Refuse the archive unless its sha256 is `expected` (checked before extraction)."""
    actual = sha256_of(path)
    if actual != expected.lower():
        raise ArchiveError(f"{label}: sha256 mismatch: expected {expected.lower()}, got {actual}")


def upstream_commit(top: str, revision: str, label: str) -> str:
    """The upstream commit the icons come from: named by a GitHub source archive's top folder
    (<repo>-<40 hex digits>/), else by fetch.revision. The credits link every icon at this
    commit, so a disagreement or no commit at all stops the stage rather than mis-credit."""
    m = re.fullmatch(r".+-([0-9a-f]{40})", top)
    named = m.group(1) if m else ""
    if named and revision and named != revision.lower():
        raise ArchiveError(f"{label}: top folder {top!r} names commit {named}, but fetch.revision is {revision!r}")
    if not (named or revision):
        raise ArchiveError(f"{label}: top folder {top!r} names no commit; set fetch.revision to the upstream "
                           f"commit the archive was made from (the credits link every icon at it)")
    return named or revision.lower()
