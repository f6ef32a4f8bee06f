"""Stage rasterize: data/filtered.csv + data/raw -> data/png, data/raster_rejects.csv,
data/raster_backgrounds.csv (the icons not on white: white-only marks on dark grey)."""
from __future__ import annotations

from iconforge import paths
from iconforge.config import RasterizeConfig, load
from iconforge.dataset.rasterize import rasterize
from iconforge.dataset.svg import DARK
from iconforge.errors import run_stage
from iconforge.tables import read_csv, write_csv


def main() -> None:
    cfg = load(RasterizeConfig)
    icons = [row["path"] for row in read_csv(paths.FILTERED, ["path"])]
    summary = rasterize(icons, paths.RAW, paths.PNG, paths.RASTER_CACHE, cfg)
    write_csv(paths.RASTER_REJECTS, [{"path": p, "reason": r} for p, r in sorted(summary.rejects.items())],
              ["path", "reason"])
    dark = "#{:02x}{:02x}{:02x}".format(*DARK)
    write_csv(paths.RASTER_BACKGROUNDS, [{"path": p, "background": dark} for p in summary.dark],
              ["path", "background"])
    print(summary)


if __name__ == "__main__":
    run_stage("rasterize", main)
