"""Which parquet rows (logos) may enter the dataset, their near-duplicate groups and their credits.

Every manifest row comes back kept or with a reason "<kind>: <detail>" like the icons':
selection, missing, path_only, size, caption, duplicate (same image bytes as a kept row),
decode (not a usable raster image). Near duplicates (dHashes within filter.near_dup_bits
bits) share a group, so train and validation are split by group as icon variants are.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tqdm import tqdm

from iconforge.config import FilterConfig
from iconforge.dataset import bounded, raster
from iconforge.dataset.attribution import PARQUET_CHANGES
from iconforge.dataset.logo_text import parse
from iconforge.dataset.shards import MAX_TEXT_CHARS

CHUNK = 256  # images per worker task: a dHash costs well under a millisecond
WINDOW = 32  # near_groups: neighbours compared per hash in a band's bucket


def _unit(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def select(rows: list[dict], cfg: FilterConfig) -> tuple[list[dict], list[dict]]:
    """filter.select: every row, the last select_n (in shard order), or a seeded random select_n
    (per-row draws: adding rows moves no other row's draw)."""
    if cfg.select == "all" or cfg.select_n >= len(rows):
        return rows, []
    if cfg.select == "last":
        chosen = {r["path"] for r in rows[-cfg.select_n:]}
    else:
        chosen = set(sorted((r["path"] for r in rows), key=lambda p: _unit(cfg.seed, p))[:cfg.select_n])
    why = f"selection: not among the {cfg.select} {cfg.select_n} rows (filter.select)"
    return [r for r in rows if r["path"] in chosen], [{"path": r["path"], "reason": why}
                                                      for r in rows if r["path"] not in chosen]


def _reason(row: dict, cfg: FilterConfig) -> str | None:
    if int(row["bytes"]) == 0:
        if row["image_path"]:
            return f"path_only: the image names a file ({row['image_path'][:80]!r}) but holds no bytes; not read"
        return "missing: no image bytes"
    if int(row["bytes"]) > cfg.max_image_bytes:
        return f"size: {row['bytes']} bytes > filter.max_image_bytes {cfg.max_image_bytes}"
    if len(row["text"]) > MAX_TEXT_CHARS:  # fetch cut it: its length is unknown, and over any sane bound
        return f"caption: over {MAX_TEXT_CHARS} characters"
    text = row["text"].strip()
    if not text:
        return "caption: empty"
    if len(text) > cfg.max_caption_chars:
        return f"caption: {len(text)} characters > filter.max_caption_chars {cfg.max_caption_chars}"
    return None


def _hash_chunk(files: list[str], max_memory_mb: int) -> list[int | str]:
    """Runs in a bounded worker: each image's dHash, or the reason it cannot be decoded."""
    out: list[int | str] = []
    for f in files:
        try:
            out.append(raster.dhash(Path(f).read_bytes()))
        except raster.RasterError as e:
            out.append(str(e))
        except Exception as e:  # out of memory, or a Pillow plugin's own error on hostile bytes: a reject
            out.append(bounded.error_reason(e, max_memory_mb))
    return out


def dhashes(files: list[str], timeout_s: float, max_memory_mb: int) -> list[int | str]:
    """dHash (or why it has none) per file, over every core, in workers bounded like rasterize's
    (rasterize.timeout_s per task, rasterize.max_memory_mb per worker)."""
    chunks = [files[i:i + CHUNK] for i in range(0, len(files), CHUNK)]
    workers = min(len(os.sched_getaffinity(0)), max(len(chunks), 1))
    hashes: dict[str, int | str] = {}
    with tqdm(total=len(files), desc="dhash", unit="image") as bar:
        for chunk, got in bounded.imap(_hash_chunk, chunks, lambda chunk: (chunk, max_memory_mb), workers,
                                       max_memory_mb, timeout_s, ["iconforge.dataset.raster"]):
            hashes.update(zip(chunk, [got] if isinstance(got, str) else got))
            bar.update(len(chunk))
    return [hashes[f] for f in files]


def near_groups(hashes: dict[str, int], bits: int) -> dict[str, str]:
    """path -> its group, the smallest path linked to it: equal dHashes are linked, and so are
    hashes within `bits` differing bits that agree on one of bits + 1 bands (two such hashes
    always do: pigeonhole) and lie within WINDOW places of each other in that band's bucket.
    The window bounds the work at 400k rows (a bucket of blank images would be quadratic)."""
    parent = {p: p for p in hashes}

    def root(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    def link(a: str, b: str) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first: dict[int, str] = {}
    for p in sorted(hashes):
        if hashes[p] in first:
            link(first[hashes[p]], p)
        else:
            first[hashes[p]] = p
    if bits:
        edges = [64 * i // (bits + 1) for i in range(bits + 2)]
        for lo, hi in zip(edges, edges[1:]):
            buckets: dict[int, list[int]] = {}
            for h in sorted(first):
                buckets.setdefault((h >> (64 - hi)) & ((1 << (hi - lo)) - 1), []).append(h)
            for members in buckets.values():
                for i, h in enumerate(members):
                    for g in members[max(0, i - WINDOW):i]:
                        if (h ^ g).bit_count() <= bits:
                            link(first[g], first[h])
    return {p: root(p) for p in hashes}


def screen(rows: list[dict], cfg: FilterConfig, raw: Path, timeout_s: float,
           max_memory_mb: int) -> tuple[list[dict], list[dict]]:
    """Kept rows (MANIFEST_COLUMNS + text + group) and rejects {path, reason}."""
    rows, rejects = select(rows, cfg)
    candidates, first_of = [], {}
    for r in rows:
        reason = _reason(r, cfg)
        if reason is None and r["sha256"] in first_of:
            reason = f"duplicate: same image bytes as {first_of[r['sha256']]}"
        if reason is None:
            first_of[r["sha256"]] = r["path"]
            candidates.append(r)
        else:
            rejects.append({"path": r["path"], "reason": reason})
    hashes = {}
    for r, h in zip(candidates, dhashes([str(raw / r["path"]) for r in candidates], timeout_s, max_memory_mb)):
        if isinstance(h, str):
            rejects.append({"path": r["path"], "reason": f"decode: {h}"})
        else:
            hashes[r["path"]] = h
    groups = near_groups(hashes, cfg.near_dup_bits)
    kept = []
    for r in candidates:
        if r["path"] in groups:
            fields = parse(r["text"])
            kept.append({"path": r["path"], "license": cfg.dataset_license, "category": fields.category,
                         "author": "", "name": fields.name, "bytes": r["bytes"], "sha256": r["sha256"],
                         "text": r["text"].strip(), "group": groups[r["path"]]})
    return kept, rejects


def credit_rows(rows: list[dict], cfg: FilterConfig) -> list[dict]:
    """One credit row per kept image (CREDIT_COLUMNS): the dataset's license and source, shard and row."""
    return [{"path": r["path"], "title": r["name"] or r["text"][:80], "author": cfg.dataset_attribution,
             "author_url": "", "license": cfg.dataset_license, "license_name": cfg.dataset_license,
             "license_url": cfg.dataset_license_url, "needs_attribution": str(bool(cfg.dataset_attribution)).lower(),
             "share_alike": "false", "source_url": f"{cfg.dataset_source}#{r['path']}", "changes": PARQUET_CHANGES}
            for r in rows]


def render_markdown(count: int, cfg: FilterConfig, shards: list[dict]) -> str:
    """ATTRIBUTION.md: the dataset's credit once (credits.csv lists every image)."""
    lic = f"[{cfg.dataset_license}]({cfg.dataset_license_url})" if cfg.dataset_license_url else cfg.dataset_license
    lines = ["# Attribution", "",
             f"The {count} images in this dataset come from {cfg.dataset_source}, license {lic}.",
             *(["", cfg.dataset_attribution] if cfg.dataset_attribution else []), "",
             f"**Every image was modified:** {PARQUET_CHANGES}. `credits.csv` lists each image with its shard and row.",
             "", "Shards (sha256):", ""]
    lines += [f"- {s['name']}: {s['rows']} rows, `{s['sha256']}`" for s in shards]
    return "\n".join(lines) + "\n"
