"""Stage caption: data/png + data/filtered.csv -> data/dataset/{train,validation}/ (imagefolder
with metadata.jsonl and .txt caption sidecars, plus ATTRIBUTION.md and credits.csv) and
metrics/data.json."""
from __future__ import annotations

import shutil
from pathlib import Path

from iconforge import config
from iconforge.atomic import atomic_dir, write_json
from iconforge.captions import build, metrics, rendered_rows, table
from iconforge.tables import read_csv
from iconforge.errors import run_stage

PNG = Path("data/png")
FILTERED = Path("data/filtered.csv")
FILTER_REJECTS = Path("data/filter_rejects.csv")
RASTER_REJECTS = Path("data/raster_rejects.csv")
CREDITS = Path("data/credits.csv")
ATTRIBUTION = Path("data/ATTRIBUTION.md")
DATASET = Path("data/dataset")
METRICS = Path("metrics/data.json")


def main() -> None:
    cfg = config.load(config.CaptionConfig)
    filtered = read_csv(FILTERED, ["path", "license", "category", "author", "name", "group", "split"])
    filter_rejects = read_csv(FILTER_REJECTS, ["path", "reason"])
    raster_rejects = read_csv(RASTER_REJECTS, ["path", "reason"])
    credits = {c["path"]: c for c in read_csv(CREDITS, ["path", "author", "source_url"])}
    rows = rendered_rows(filtered, PNG, raster_rejects)
    with atomic_dir(DATASET) as tmp:
        records = build(rows, credits, PNG, tmp, cfg)
        # The credits travel with the images: the licenses ask for it.
        shutil.copyfile(ATTRIBUTION, tmp / ATTRIBUTION.name)
        shutil.copyfile(CREDITS, tmp / CREDITS.name)
    m = metrics(filtered, filter_rejects, raster_rejects, records)
    write_json(METRICS, m)
    print(table(m))


if __name__ == "__main__":
    run_stage("caption", main)
