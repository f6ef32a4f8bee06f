"""Stage eda: data/dataset + data/filtered.csv + data/source.json + data/raw -> metrics/eda.json
(counts and summaries), metrics/eda/*.csv (pre-binned tables for `dvc plots show`) and
data/eda/{wordcloud,contact_sheet}.png (image plots). README: Explore the data."""
from __future__ import annotations

from iconforge import paths
from iconforge.atomic import atomic_dir, write_json
from iconforge.config import CaptionConfig, EdaConfig, FilterConfig, load, load_field
from iconforge.dataset import shards
from iconforge.dataset.selection import MANIFEST_COLUMNS
from iconforge.eda.draw import png_bytes
from iconforge.eda.report import analyse
from iconforge.errors import run_stage
from iconforge.tables import read_csv, read_json, require, write_csv

# Where each table of iconforge.eda.report goes.
TABLES = {"license": paths.EDA_LICENSE, "category": paths.EDA_CATEGORY, "split": paths.EDA_SPLIT,
          "caption_chars": paths.EDA_CAPTION_CHARS, "caption_words": paths.EDA_CAPTION_WORDS,
          "top_words": paths.EDA_TOP_WORDS, "top_bigrams": paths.EDA_TOP_BIGRAMS,
          "source_width": paths.EDA_SOURCE_WIDTH, "source_height": paths.EDA_SOURCE_HEIGHT,
          "source_aspect": paths.EDA_SOURCE_ASPECT, "palette_size": paths.EDA_PALETTE,
          "background_share": paths.EDA_BACKGROUND}


def main() -> None:
    cfg = load(EdaConfig)
    trigger = load_field(CaptionConfig, "trigger")  # removed from the caption words, like any boilerplate
    max_svg_bytes = load_field(FilterConfig, "max_svg_bytes")  # what filter let through: read no more of an SVG
    parquet = shards.is_parquet(read_json(paths.SOURCE))
    filtered = read_csv(paths.FILTERED, MANIFEST_COLUMNS + ["split"])
    require(paths.DATASET, paths.RAW)
    eda = analyse(paths.DATASET, filtered, paths.RAW, parquet, trigger, max_svg_bytes, cfg)

    with atomic_dir(paths.EDA_TABLES) as tmp:
        for name, dest in TABLES.items():
            columns, rows = eda.tables[name]
            write_csv(tmp / dest.relative_to(paths.EDA_TABLES), rows, columns)
    with atomic_dir(paths.EDA_IMAGES) as tmp:
        (tmp / paths.EDA_WORDCLOUD.relative_to(paths.EDA_IMAGES)).write_bytes(png_bytes(eda.wordcloud))
        (tmp / paths.EDA_CONTACT_SHEET.relative_to(paths.EDA_IMAGES)).write_bytes(png_bytes(eda.contact_sheet))
    write_json(paths.EDA_METRICS, eda.metrics)

    m = eda.metrics
    print(f"eda: {m['images']} images ({', '.join(f'{n} {s}' for s, n in m['by_split'].items())}), "
          f"{len(m['by_license'])} licenses, {m['categories']} categories, {m['vocabulary']['words']} distinct words")
    print(f"  source sizes: {m['source_size']['measured']} read, {m['source_size']['skipped']} skipped; "
          f"colours: {m['colour']['measured']} measured, {m['colour']['skipped']} skipped")
    print(f"  tables: {paths.EDA_TABLES}/  images: {paths.EDA_WORDCLOUD}, {paths.EDA_CONTACT_SHEET}  (`dvc plots show`)")


if __name__ == "__main__":
    run_stage("eda", main)
