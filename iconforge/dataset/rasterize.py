"""Render many SVGs (or normalise raster images: a parquet dataset's rows, any file not named
.svg) in parallel, each in a worker bounded in time and memory, and keep a content-hash cache
so a re-run renders only images that changed.

Cache entries are written atomically by the worker that renders them, and the
sha256 of each PNG goes into the cache's index (digests.json), written atomically at the end
of a run. An entry is reused only when its bytes still have that digest: data/png
and the imagefolder hard-link the entries, so an edit of one of those files in place
is an edit of the entry; bit rot and truncation show the same way. A changed or
corrupt entry, or one a killed run wrote but never indexed, is rendered again (the
changed ones listed in the summary), never linked into data/png. The index travels
with the cache, so entries DVC restores (another clone, a queued experiment) are reused.

A stuck icon is killed by pebble's per-task timeout, an oversized one hits the
worker's RLIMIT_AS; either becomes a reject and the run goes on. Biggest files
go first (longest-processing-time scheduling) so the slowest icons do not end
up alone on one core at the end of the run. Icons whose mark is white-only are
flattened onto dark grey (iconforge.dataset.svg); the summary lists them.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from iconforge.atomic import atomic_dir, link_or_copy, write_bytes, write_json, write_text
from iconforge.config import RasterizeConfig
from iconforge.dataset import bounded, raster
from iconforge.dataset.svg import DARK, RENDERER_VERSIONS, SANITIZER_VERSION, SvgError, render
from iconforge.paths import DIGESTS_JSON, inside

# Raster images (a few ms each) go to the workers in batches, so that per-task overhead does not
# dominate; a batch that times out or crashes is retried one image per task, which then carries
# the per-image bounds and names the culprit. SVGs go one per task.
RASTER_BATCH = 32
STORED = b""  # Outcome.png of an image the worker has put in the cache
INDEX_SAVE_S = 60  # while rendering, the index is saved this often


@dataclass(frozen=True)
class Outcome:
    png: bytes | None  # None = rejected; the worker stores it in the cache and sends back only `ok`
    reason: str = ""
    cacheable: bool = True  # False for limits (time, memory, crash): retry next run
    dark: bool = False  # flattened onto DARK: a white-only mark
    digest: str = ""  # sha256 of the PNG the worker stored

    @property
    def ok(self) -> bool:
        return self.png is not None

    def stored(self) -> Outcome:
        """What the worker returns once the PNG is in the cache: no image bytes through the pipe."""
        return (Outcome(STORED, self.reason, self.cacheable, self.dark, hashlib.sha256(self.png).hexdigest())
                if self.ok else self)


@dataclass
class Summary:
    rendered: int = 0
    from_cache: int = 0
    rejects: dict[str, str] = field(default_factory=dict)  # path -> reason
    dark: list[str] = field(default_factory=list)  # paths rendered onto DARK, sorted
    evicted: int = 0
    healed: list[str] = field(default_factory=list)  # paths whose cached PNG was corrupt: rendered again, sorted

    def __str__(self) -> str:
        kinds = collections.Counter(r.split(":")[0] for r in self.rejects.values())
        lines = [f"rendered {self.rendered}, from cache {self.from_cache}, rejected {len(self.rejects)}, "
                 f"on dark grey (white-only mark) {len(self.dark)}, cache entries evicted {self.evicted}"]
        lines += [f"  rejected {n:5d}  {kind}" for kind, n in sorted(kinds.items())]
        lines += [f"  changed or corrupt cache entry rendered again: {p}" for p in self.healed]
        return "\n".join(lines)


def is_svg(path: str) -> bool:
    return path.lower().endswith(".svg")


def cache_key(data: bytes, size: int, margin: float, renderer: str, svg: bool = True) -> str:
    versions = (RENDERER_VERSIONS[renderer], SANITIZER_VERSION) if svg else ("raster", raster.NORMALISER_VERSION)
    h = hashlib.sha256()
    for part in (*versions, str(size), repr(margin)):
        h.update(part.encode() + b"\0")
    h.update(data)
    return h.hexdigest()


class RasterCache:
    """<key>.png for a rendered icon (plus an empty <key>.dark when it is on DARK), <key>.reject
    holding the reason for a rejected one, and the index (digests.json): each PNG's sha256."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        index = self.root / DIGESTS_JSON
        try:
            self.digests: dict[str, str] = json.loads(index.read_text(encoding="utf-8")) if index.exists() else {}
        except (ValueError, OSError):  # a broken index: every PNG is a miss, none is trusted
            self.digests = {}
        self.corrupt: set[str] = set()  # keys whose PNG no longer had its digest (deleted: a miss)

    def png(self, key: str) -> Path:
        return self.root / f"{key}.png"

    def get(self, key: str) -> tuple[Path, bool] | str | None:
        """(the cached PNG file, whether it is on DARK), the cached reject reason, or None on a miss
        (also for a PNG whose bytes are not those indexed: deleted, and noted in `corrupt` when changed)."""
        png = self.png(key)
        if png.exists():
            if key in self.digests and hashlib.sha256(png.read_bytes()).hexdigest() == self.digests[key]:
                return png, (self.root / f"{key}.dark").exists()
            if key in self.digests:
                self.corrupt.add(key)
            for p in (png, self.root / f"{key}.dark"):
                p.unlink(missing_ok=True)
            return None
        reject = self.root / f"{key}.reject"
        return reject.read_text(encoding="utf-8") if reject.exists() else None

    def save(self, keep: set[str]) -> int:
        """Write the index of the PNGs this run used, delete every other entry (and stray temp files);
        returns how many were deleted."""
        write_json(self.root / DIGESTS_JSON, {k: d for k, d in self.digests.items() if k in keep})
        stale = [p for p in self.root.iterdir() if p.name != DIGESTS_JSON and p.name.split(".")[0] not in keep]
        for p in stale:
            p.unlink()
        return len(stale)


def put_entry(root: Path, key: str, outcome: Outcome) -> None:
    """Runs in a worker: the PNG (or the reject reason) under its key in the RasterCache at `root`,
    without reading its index (the main process records the digest, `stored`, and saves the index)."""
    if outcome.ok:
        if outcome.dark:  # before the PNG: a cached PNG is always complete with its marker
            write_bytes(root / f"{key}.dark", b"")
        write_bytes(root / f"{key}.png", outcome.png)
    elif outcome.cacheable:
        write_text(root / f"{key}.reject", outcome.reason)


def _render_files(files: list[str], keys: list[str], cache_dir: str, size: int, margin: float, renderer: str,
                  max_memory_mb: int) -> list[Outcome]:
    """Runs in a worker process: renders each file into the cache under its key (the main process
    links it from there), so PNG bytes are neither piped back nor written twice."""
    root, out = Path(cache_dir), []
    for file, key in zip(files, keys):
        outcome = _render_file(file, size, margin, renderer, max_memory_mb)
        put_entry(root, key, outcome)
        out.append(outcome.stored())
    return out


def _render_file(file: str, size: int, margin: float, renderer: str, max_memory_mb: int) -> Outcome:
    try:
        data = Path(file).read_bytes()
        if not is_svg(file):
            return Outcome(raster.normalise(data, size, margin))
        drawn = render(data, size, margin, renderer)
        return Outcome(drawn.png, dark=drawn.background == DARK)
    except (SvgError, raster.RasterError) as e:
        return Outcome(None, str(e))
    except Exception as e:  # out of memory, or a bug of ours on odd input: record it, do not kill the run
        return Outcome(None, bounded.error_reason(e, max_memory_mb), cacheable=False)


def rasterize(paths: list[str], raw_dir: Path, png_dir: Path, cache_dir: Path,
              cfg: RasterizeConfig, *, biggest_first: bool = True) -> Summary:
    """Render raw_dir/<path> to png_dir/<path>.png for every path (relative,
    '/'-separated); png_dir is replaced atomically. Returns counts and rejects."""
    for p in paths:  # the paths come from a CSV: never read or write outside the folders
        inside(raw_dir, p)
    cache = RasterCache(cache_dir)
    summary = Summary()
    owner: dict[str, str] = {}  # x.svg and x.SVG would both become x.png: the first keeps the name
    for p in paths:
        png = str(Path(p).with_suffix(".png"))
        if owner.setdefault(png, p) != p:
            summary.rejects[p] = f"name clash: {owner[png]} is also rendered to {png}"
    paths = [p for p in paths if p not in summary.rejects]
    keys = {p: cache_key((raw_dir / p).read_bytes(), cfg.size, cfg.margin, cfg.renderer, is_svg(p))
            for p in tqdm(paths, desc="hash", unit="image")}
    with atomic_dir(png_dir) as out:

        made: set[Path] = set()

        def store(path: str, outcome: Outcome | Path, dark: bool) -> None:
            """data/png/<path>.png as a link to its cache entry (or the reject recorded)."""
            if isinstance(outcome, Outcome) and not outcome.ok:
                summary.rejects[path] = outcome.reason
                return
            dest = out / Path(path).with_suffix(".png")
            if dest.parent not in made:
                dest.parent.mkdir(parents=True, exist_ok=True)
                made.add(dest.parent)
            link_or_copy(outcome if isinstance(outcome, Path) else cache.png(keys[path]), dest)
            if dark:
                summary.dark.append(path)

        todo = []
        for path in paths:
            hit = cache.get(keys[path])
            if hit is None:
                todo.append(path)
                continue
            summary.from_cache += 1
            if isinstance(hit, str):
                store(path, Outcome(None, hit), False)
            else:
                store(path, *hit)
        if biggest_first:
            todo.sort(key=lambda p: (-(raw_dir / p).stat().st_size, p))

        workers = cfg.workers or os.cpu_count() or 1
        svgs = [p for p in todo if is_svg(p)]
        rasters = [p for p in todo if not is_svg(p)]
        batches = [[p] for p in svgs] + [rasters[i:i + RASTER_BATCH] for i in range(0, len(rasters), RASTER_BATCH)]

        def args(batch: list[str]) -> tuple:
            return ([str(raw_dir / p) for p in batch], [keys[p] for p in batch], str(cache.root), cfg.size,
                    cfg.margin, cfg.renderer, cfg.max_memory_mb)

        next_save = time.monotonic() + INDEX_SAVE_S
        with tqdm(total=len(todo), desc="rasterize", unit="image") as bar:
            for batch, outcomes in bounded.imap(_render_files, batches, args, workers, cfg.max_memory_mb,
                                                cfg.timeout_s, ["iconforge.dataset.svg", "iconforge.dataset.raster"]):
                if isinstance(outcomes, str):  # one image's worker timed out or died
                    outcomes = [Outcome(None, outcomes, cacheable=False)]
                if time.monotonic() > next_save:  # a killed run keeps what it rendered up to here
                    write_json(cache.root / DIGESTS_JSON, cache.digests)
                    next_save = time.monotonic() + INDEX_SAVE_S
                for path, outcome in zip(batch, outcomes):
                    if outcome.ok:
                        cache.digests[keys[path]] = outcome.digest
                    store(path, outcome, outcome.dark)
                    summary.rendered += outcome.ok
                    bar.update()
    summary.dark.sort()
    summary.healed = sorted(p for p in paths if keys[p] in cache.corrupt)
    summary.evicted = cache.save(set(keys.values()))
    return summary
