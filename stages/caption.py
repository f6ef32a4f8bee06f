"""Stage caption: data/png + data/filtered.csv -> data/dataset/{train,validation}/ (imagefolder
with metadata.jsonl and .txt caption sidecars, plus ATTRIBUTION.md and credits.csv) and
metrics/data.json."""
from __future__ import annotations

import shutil

from iconforge import paths
from iconforge.atomic import atomic_dir, write_json
from iconforge.config import CaptionConfig, load
from iconforge.dataset.captions import build, metrics, rendered_rows, table
from iconforge.errors import run_stage
from iconforge.tables import read_csv, require


def main() -> None:
    cfg = load(CaptionConfig)
    filtered = read_csv(paths.FILTERED, ["path", "license", "category", "author", "name", "group", "split"])
    filter_rejects = read_csv(paths.FILTER_REJECTS, ["path", "reason"])
    raster_rejects = read_csv(paths.RASTER_REJECTS, ["path", "reason"])
    credits = {c["path"]: c for c in read_csv(paths.CREDITS, ["path", "author", "source_url"])}
    require(paths.ATTRIBUTION, paths.PNG)
    rows = rendered_rows(filtered, paths.PNG, raster_rejects)
    with atomic_dir(paths.DATASET) as tmp:
        records = build(rows, credits, paths.PNG, tmp, cfg)
        # The credits travel with the images: the licenses ask for it.
        shutil.copyfile(paths.ATTRIBUTION, tmp / paths.ATTRIBUTION.name)
        shutil.copyfile(paths.CREDITS, tmp / paths.CREDITS.name)
    m = metrics(filtered, filter_rejects, raster_rejects, records)
    write_json(paths.DATA_METRICS, m)
    print(table(m))


if __name__ == "__main__":
    run_stage("caption", main)
