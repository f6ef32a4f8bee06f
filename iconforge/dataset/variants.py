"""Colour/detail variant groups, the train/validation split by group, one icon per group.

Servier ships cuvette, cuvette-pink, cuvette-lightpink, cuvette-pinkdarker...:
near-duplicates. If one went to training and another to validation, validation
would measure memorisation. So variants share a group and a group shares a split.
"""
from __future__ import annotations

import hashlib
from typing import Callable

from iconforge.dataset.names import parse


def group_key(row: dict[str, str]) -> str:
    """license/category/author/<name without colours, numbering, v1/v2>."""
    return "/".join((row["license"], row["category"], row["author"], "-".join(parse(row["name"]).core)))


def _unit(seed: int, group: str) -> float:
    """A fixed pseudo-random number in [0, 1) per (seed, group): adding icons moves no other group."""
    digest = hashlib.sha256(f"{seed}\0{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(rows: list[dict[str, str]], val_fraction: float, seed: int,
                  group_of: Callable[[dict], str] = group_key) -> list[dict[str, str]]:
    """Rows with `group` and `split` (train|validation) added; whole groups go to one split."""
    groups = {r["path"]: group_of(r) for r in rows}
    units = {g: _unit(seed, g) for g in sorted(set(groups.values()))}
    val = {g for g, u in units.items() if u < val_fraction}
    if val_fraction > 0 and not val and len(units) > 1:
        # A small dataset can miss the threshold entirely; sample/evaluate need held-out icons.
        val = {min(units, key=lambda g: (units[g], g))}
    return [{**r, "group": groups[r["path"]], "split": "validation" if groups[r["path"]] in val else "train"}
            for r in rows]


def one_per_group(rows: list[dict[str, str]]) -> tuple[list[dict], list[dict]]:
    """Keep one icon per group: the plain name (no colour/number) if any, else the shortest.
    The others become rejects naming the kept one."""
    by_group: dict[str, list[dict]] = {}
    for r in rows:
        by_group.setdefault(r["group"], []).append(r)
    keep = {}
    for g, members in by_group.items():
        best = min(members, key=lambda r: (parse(r["name"]).is_variant, len(r["name"]), r["name"], r["path"]))
        keep[g] = best["path"]
    kept = [r for r in rows if keep[r["group"]] == r["path"]]
    rejects = [{"path": r["path"], "reason": f"variant: of {keep[r['group']]} (filter.variants: one)"}
               for r in rows if keep[r["group"]] != r["path"]]
    return kept, rejects


def multi_member_share(rows: list[dict[str, str]]) -> float:
    """Fraction of icons that have at least one variant sibling."""
    sizes: dict[str, int] = {}
    for r in rows:
        sizes[r["group"]] = sizes.get(r["group"], 0) + 1
    return sum(n for n in sizes.values() if n > 1) / max(len(rows), 1)
