"""Stage filter_license: data/raw + data/manifest.csv + data/source.json -> data/filtered.csv (kept
rows with group and split), data/filter_rejects.csv, data/credits.csv, data/ATTRIBUTION.md.
bioicons: licenses, categories, sizes, colour/detail variant groups. parquet (source.json says
which): row selection, bounds, exact and near duplicates (iconforge.dataset.logos)."""
from __future__ import annotations

from collections import Counter

from iconforge import paths
from iconforge.atomic import write_text
from iconforge.config import FilterConfig, RasterizeConfig, load, load_field
from iconforge.dataset import logos, shards
from iconforge.dataset.attribution import (CREDIT_COLUMNS, credit_rows, read_authors, read_notices, render_markdown,
                                           unmatched_authors)
from iconforge.dataset.selection import MANIFEST_COLUMNS, check_accounted, kind, screen
from iconforge.dataset.variants import assign_splits, multi_member_share, one_per_group
from iconforge.errors import run_stage
from iconforge.tables import read_csv, read_json, write_csv


def main() -> None:
    cfg = load(FilterConfig)
    source = read_json(paths.SOURCE)
    parquet = shards.is_parquet(source)
    rows = read_csv(paths.MANIFEST, shards.FIELDS if parquet else MANIFEST_COLUMNS)
    if parquet:
        # Bounded like rasterize's workers: the images are decoded here first, for their dHash.
        kept, rejects = logos.screen(rows, cfg, paths.RAW, load_field(RasterizeConfig, "timeout_s"),
                                     load_field(RasterizeConfig, "max_memory_mb"))
        kept = assign_splits(kept, cfg.val_fraction, cfg.seed, group_of=lambda r: r["group"])
    else:
        kept, rejects = screen(rows, cfg, paths.RAW)
        kept = assign_splits(kept, cfg.val_fraction, cfg.seed)
    share = multi_member_share(kept)  # measured before variants: one collapses the groups
    if cfg.variants == "one":
        kept, dropped = one_per_group(kept)
        rejects += dropped
    check_accounted(rows, kept, rejects)
    kept.sort(key=lambda r: r["path"])
    rejects.sort(key=lambda r: r["path"])

    unmatched = []
    if parquet:
        credits = logos.credit_rows(kept, cfg)
        attribution = logos.render_markdown(len(kept), cfg, source.get("shards", []))
    else:
        commit = read_json(paths.SOURCE, required=("commit",))["commit"]  # the credits link the icons fetch extracted
        authors = read_authors(paths.RAW)
        credits = credit_rows(kept, authors, commit)
        unmatched = unmatched_authors(kept, authors)
        attribution = render_markdown(credits, unmatched, read_notices(paths.RAW), commit)
    write_csv(paths.FILTERED, kept, MANIFEST_COLUMNS + (["text"] if parquet else []) + ["group", "split"])
    write_csv(paths.FILTER_REJECTS, rejects, ["path", "reason"])
    write_csv(paths.CREDITS, credits, CREDIT_COLUMNS)
    write_text(paths.ATTRIBUTION, attribution)

    splits = Counter(r["split"] for r in kept)
    print(f"kept {len(kept)} of {len(rows)} {'rows' if parquet else 'icons'}: {splits['train']} train, "
          f"{splits['validation']} validation in {len({r['group'] for r in kept})} groups "
          f"({share:.1%} of kept images have a variant or near-duplicate sibling)")
    for k, n in sorted(Counter(kind(r["reason"]) for r in rejects).items()):
        print(f"  rejected {k}: {n}")
    if unmatched:
        print(f"  {len(unmatched)} author folders not in authors.json (credited without URL): {', '.join(unmatched)}")


if __name__ == "__main__":
    run_stage("filter_license", main)
