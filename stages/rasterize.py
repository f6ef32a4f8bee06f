"""DVC stage rasterize: data/filtered.csv + data/raw -> data/png, data/raster_rejects.csv,
data/raster_backgrounds.csv (the icons not on white: white-only marks on dark grey)."""
from __future__ import annotations

import csv
from pathlib import Path

from iconforge import config
from iconforge.atomic import atomic_file
from iconforge.rasterize import rasterize
from iconforge.svg import DARK
from iconforge.errors import run_stage

RAW, FILTERED = Path("data/raw"), Path("data/filtered.csv")
PNG, REJECTS, CACHE = Path("data/png"), Path("data/raster_rejects.csv"), Path("data/raster_cache")
BACKGROUNDS = Path("data/raster_backgrounds.csv")


def write_csv(path: Path, header: list[str], rows: list) -> None:
    with atomic_file(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def main() -> None:
    cfg = config.load(config.RasterizeConfig)
    with open(FILTERED, newline="", encoding="utf-8") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    summary = rasterize(paths, RAW, PNG, CACHE, cfg)
    write_csv(REJECTS, ["path", "reason"], sorted(summary.rejects.items()))
    dark = "#{:02x}{:02x}{:02x}".format(*DARK)
    write_csv(BACKGROUNDS, ["path", "background"], [(p, dark) for p in summary.dark])
    print(summary)


if __name__ == "__main__":
    run_stage("rasterize", main)
