"""DVC stage rasterize: data/filtered.csv + data/raw -> data/png, data/raster_rejects.csv."""
from __future__ import annotations

import csv
from pathlib import Path

from iconforge import config
from iconforge.atomic import atomic_file
from iconforge.rasterize import rasterize

RAW, FILTERED = Path("data/raw"), Path("data/filtered.csv")
PNG, REJECTS, CACHE = Path("data/png"), Path("data/raster_rejects.csv"), Path("data/raster_cache")


def main() -> None:
    cfg = config.load(config.RasterizeConfig)
    with open(FILTERED, newline="", encoding="utf-8") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    summary = rasterize(paths, RAW, PNG, CACHE, cfg)
    with atomic_file(REJECTS) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "reason"])
        w.writerows(sorted(summary.rejects.items()))
    print(summary)


if __name__ == "__main__":
    main()
