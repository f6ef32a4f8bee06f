"""Stage filter_license: data/raw + data/manifest.csv + data/source.json -> data/filtered.csv (kept
rows with variant group and split), data/filter_rejects.csv, data/credits.csv, data/ATTRIBUTION.md."""
from __future__ import annotations

from collections import Counter

from iconforge import paths
from iconforge.atomic import write_text
from iconforge.config import FilterConfig, load
from iconforge.dataset.attribution import (CREDIT_COLUMNS, credit_rows, read_authors, read_notices, render_markdown,
                                           unmatched_authors)
from iconforge.dataset.selection import MANIFEST_COLUMNS, check_accounted, kind, screen
from iconforge.dataset.variants import assign_splits, multi_member_share, one_per_group
from iconforge.errors import run_stage
from iconforge.tables import read_csv, read_json, write_csv


def main() -> None:
    cfg = load(FilterConfig)
    rows = read_csv(paths.MANIFEST, MANIFEST_COLUMNS)
    commit = read_json(paths.SOURCE, required=("commit",))["commit"]  # the credits link the icons fetch extracted
    kept, rejects = screen(rows, cfg, paths.RAW)
    kept = assign_splits(kept, cfg.val_fraction, cfg.seed)
    share = multi_member_share(kept)  # measured before variants: one collapses the groups
    if cfg.variants == "one":
        kept, dropped = one_per_group(kept)
        rejects += dropped
    check_accounted(rows, kept, rejects)
    kept.sort(key=lambda r: r["path"])
    rejects.sort(key=lambda r: r["path"])

    authors = read_authors(paths.RAW)
    credits = credit_rows(kept, authors, commit)
    unmatched = unmatched_authors(kept, authors)
    write_csv(paths.FILTERED, kept, MANIFEST_COLUMNS + ["group", "split"])
    write_csv(paths.FILTER_REJECTS, rejects, ["path", "reason"])
    write_csv(paths.CREDITS, credits, CREDIT_COLUMNS)
    write_text(paths.ATTRIBUTION, render_markdown(credits, unmatched, read_notices(paths.RAW), commit))

    splits = Counter(r["split"] for r in kept)
    print(f"kept {len(kept)} of {len(rows)} icons: {splits['train']} train, {splits['validation']} validation "
          f"in {len({r['group'] for r in kept})} variant groups ({share:.1%} of kept icons have a variant sibling)")
    for k, n in sorted(Counter(kind(r["reason"]) for r in rejects).items()):
        print(f"  rejected {k}: {n}")
    if unmatched:
        print(f"  {len(unmatched)} author folders not in authors.json (credited without URL): {', '.join(unmatched)}")


if __name__ == "__main__":
    run_stage("filter_license", main)
