"""Stage eda: pre-binned histograms, caption words without the templates' boilerplate, source sizes
read safely, deterministic images, both sources end to end, and `dvc plots show` drawing the plots
offline in a real browser."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import ROOT, SAMPLE_ARCHIVE, committed_params
import pipeline_repo
from iconforge import paths, synthetic_logos
from iconforge.config import ConfigError, EdaConfig, build
from iconforge.eda import draw, sources, stats, text
from stages import caption as caption_stage
from stages import eda as eda_stage
from stages import fetch, filter_license
from stages import rasterize as rasterize_stage

CHROMIUM = shutil.which("chromium")
VEGA = ROOT / "node_modules/vega/build/vega.min.js"
LOGO = ("Simple elegant logo for Kamran, Circle K Lines, Network, successful vibe, minimalist, thought-provoking, "
        "abstract, recognizable, relatable, sharp, vector art, even edges")
BOILERPLATE_WORDS = {"simple", "elegant", "logo", "successful", "vibe", "minimalist", "thought-provoking", "abstract",
                     "recognizable", "relatable", "sharp", "vector", "art", "even", "edges"}


def read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def digests(repo: Path) -> dict[str, str]:
    files = [repo / paths.EDA_METRICS, *sorted((repo / paths.EDA_TABLES).iterdir()),
             *sorted((repo / paths.EDA_IMAGES).iterdir())]
    return {str(f.relative_to(repo)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


# --- binning -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,integer,step", [(0.7, False, 1.0), (0.07, False, 0.1), (13, False, 20.0),
                                              (2.2, False, 2.5), (0.3, True, 1.0), (2.2, True, 5.0), (0, False, 1.0)])
def test_nice_step(raw, integer, step):
    assert stats.nice_step(raw, integer) == step


def test_histogram_bins_cover_every_value_once_empty_bins_included():
    values = [29, 30, 34, 35, 73, 73]
    rows = stats.histogram(values, max_bins=10, integer=True)
    assert [r["bin"] for r in rows] == ["25-29", "30-34", "35-39", "40-44", "45-49", "50-54", "55-59", "60-64",
                                        "65-69", "70-74"]
    assert [r["images"] for r in rows] == [1, 2, 1, 0, 0, 0, 0, 0, 0, 2]
    assert (rows[0]["lo"], rows[0]["hi"]) == ("25", "30")
    # Floats with a known range: a share in [0, 1], 1.0 in the last bin.
    share = stats.histogram([0.0, 0.05, 0.5, 0.99, 1.0], max_bins=20, span=(0.0, 1.0))
    assert len(share) == 20 and share[0]["bin"] == "0-0.05" and share[1]["images"] == 1
    assert sum(r["images"] for r in share) == 5 and share[-1] == {"bin": "0.95-1", "lo": "0.95", "hi": "1", "images": 2}
    assert [r["bin"] for r in stats.histogram([0.3, 1.7], 20)] == [f"{a:g}-{a + 0.1:g}" for a in
                                                                   [round(0.3 + i / 10, 1) for i in range(14)]]
    assert [r["bin"] for r in stats.histogram([7, 7, 7], 20, integer=True)] == ["7"]
    assert [r["images"] for r in stats.histogram([1.0, 1.0], 20)] == [2]
    assert [r["images"] for r in stats.histogram([10, 20], 10, integer=True)] == [1] + [0] * 9 + [1]  # 20: its own bin
    assert stats.histogram([], 20) == []
    many = stats.histogram(list(range(1000)), max_bins=20, integer=True)
    assert len(many) <= 21 and sum(r["images"] for r in many) == 1000
    # Whole-number bins even when max_bins exceeds the range; labels readable at any scale (viewBoxes
    # come from the internet): no 0-0 for tiny floats, no 1e+08.
    assert [r["bin"] for r in stats.histogram([3, 4], 1000, integer=True)] == ["3", "4"]
    assert [r["bin"] for r in stats.histogram([0.0, 1e-7], 4)] == ["0-2.5e-08", "2.5e-08-5e-08", "5e-08-7.5e-08",
                                                                  "7.5e-08-1e-07"]
    assert stats.histogram([1e8, 3e8], 4)[0]["bin"] == "100000000-150000000"


def test_counts_and_summary():
    assert stats.counts(["b", "a", "b", "c", "a", "b"], "license") == [
        {"license": "b", "images": 3}, {"license": "a", "images": 2}, {"license": "c", "images": 1}]
    assert stats.summary([1, 2, 3, 10]) == {"min": 1.0, "median": 2.5, "mean": 4.0, "max": 10.0}
    assert stats.summary([]) == {}


def test_config_is_checked():
    raw = committed_params()["eda"]
    assert build(EdaConfig, raw).max_bins == raw["max_bins"]
    with pytest.raises(ConfigError, match=r"eda\.sheet_tile: must be >= 16"):
        build(EdaConfig, {**raw, "sheet_tile": 8})


# --- caption words -------------------------------------------------------------------------------------------------

def test_words_without_trigger_and_stop_words():
    words, bigrams = text.words_and_bigrams("bioicons style, cuvette in darker pink, lab apparatus", "bioicons style")
    assert words == ["cuvette", "darker", "pink", "lab", "apparatus"]
    assert bigrams == ["darker pink", "lab apparatus"]  # none across a comma or a stop word
    # The trigger goes only as a whole phrase, case-insensitively; a word containing it stays.
    assert text.words_and_bigrams("Icon style, iconic icons", "icon")[0] == ["style", "iconic", "icons"]


def test_logo_head_and_boilerplate_tail_are_not_words():
    words, bigrams = text.words_and_bigrams(f"elegant logo, {LOGO}", "elegant logo")
    assert words == ["kamran", "circle", "lines", "network"]  # "k": one letter
    assert bigrams == []  # "circle k" and "k lines" hold a one-letter word
    assert not set(words) & BOILERPLATE_WORDS
    counted, _ = text.count([LOGO, "Simple elegant logo for Acme, Leaf Drop, Health, minimalist"], "")
    assert text.top(counted, 3) == [("acme", 1), ("circle", 1), ("drop", 1)]  # ties alphabetical


# --- source sizes --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("root,size", [
    ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 200 100" width="10mm" height="5mm"/>', (200, 100, "viewBox")),
    ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="-5,-5 , 48.5 24"/>', (48.5, 24, "viewBox")),
    ('<svg xmlns="http://www.w3.org/2000/svg" width="72pt" height="1in"/>', (96, 96, "width_height")),
    ('<svg xmlns="http://www.w3.org/2000/svg" width="30" height="60px" viewBox="0 0 0 10"/>', (30, 60, "width_height")),
])
def test_svg_size(root, size):
    w, h, how = sources.svg_size(root.encode())
    assert (round(w, 6), round(h, 6), how) == size


def test_svg_size_refuses_what_it_cannot_read_and_never_reads_external_entities(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("1 0 0 999 999")
    xxe = (f'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY vb SYSTEM "file://{secret}">]>'
           '<svg xmlns="http://www.w3.org/2000/svg" viewBox="&vb;"/>').encode()
    for data, why in ((xxe, "Entity 'vb' not defined"), (b"<html/>", "not an SVG"), (b"", "Document is empty"),
                      (b'<svg xmlns="http://www.w3.org/2000/svg" width="100%" height="50%"/>', "no viewBox"),
                      (b"<svg", "invalid XML")):
        with pytest.raises(sources.SizeError, match=why):
            sources.svg_size(data)


def test_svg_size_reads_no_more_than_filter_lets_through(tmp_path):
    path = tmp_path / "a.svg"
    path.write_bytes(b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 40 20"/>' + b" " * 100)
    assert sources.read_svg_size(path, max_bytes=200) == (40.0, 20.0, "viewBox")
    with pytest.raises(sources.SizeError, match=r"larger than filter.max_svg_bytes \(100 bytes\)"):
        sources.read_svg_size(path, max_bytes=100)


def test_raster_size_reads_the_header_only(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (300, 120), "red").save(png, "PNG")
    path = tmp_path / "a.img"
    path.write_bytes(png.getvalue()[:100])  # header and a cut-off image: the size is all that is read
    assert sources.read_raster_size(path) == (300.0, 120.0, "PNG")
    path.write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    with pytest.raises(sources.SizeError, match="not a raster image"):
        sources.read_raster_size(path)


# --- images --------------------------------------------------------------------------------------------------------

def test_word_cloud_and_contact_sheet_are_deterministic(tmp_path):
    freqs = [(f"word{i}", 50 - i) for i in range(40)]
    a, b = draw.word_cloud(freqs, seed=3), draw.word_cloud(freqs, seed=3)
    assert draw.png_bytes(a) == draw.png_bytes(b) and a.size == draw.CLOUD_SIZE
    assert (np.asarray(a) != 255).any(axis=2).mean() > 0.05  # words were drawn
    images = []
    for i in range(7):
        images.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40 + i, 30), (30 * i, 0, 0)).save(images[-1])
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    images.append(tmp_path / "bad.png")
    sheet, skipped = draw.contact_sheet(images, count=10, tile=16, seed=1)
    again, _ = draw.contact_sheet(list(reversed(images)), count=10, tile=16, seed=1)
    assert skipped == 1 and draw.png_bytes(sheet) == draw.png_bytes(again)
    assert sheet.size == (draw.SHEET_GAP + 7 * (16 + draw.SHEET_GAP), draw.SHEET_GAP + 16 + draw.SHEET_GAP)
    empty, _ = draw.contact_sheet([], count=10, tile=16, seed=1)
    assert draw.word_cloud([], seed=0).size == draw.CLOUD_SIZE and empty.size[0] > 0


# --- logos end to end ----------------------------------------------------------------------------------------------

def test_logo_dataset_eda_without_boilerplate_skipping_bad_images_deterministic(tmp_path, monkeypatch, capsys):
    shard = synthetic_logos.write(tmp_path / "logos.parquet", 40, seed=5)
    repo = tmp_path / "repo"
    repo.mkdir()
    params = committed_params()
    params["fetch"].update(source="parquet", shards=[str(shard)])
    params["filter"].update(val_fraction=0.2, dataset_license="cc-by-4.0")
    params["rasterize"].update(size=32, workers=1)
    # The whole description in the caption, tail included: eda must drop it from the words.
    params["caption"].update(trigger="elegant logo", template="{trigger}, {text}", drop_boilerplate=False)
    params["eda"].update(sheet_images=100, sheet_tile=24)  # every training image: the unreadable one too
    (repo / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.chdir(repo)
    for stage in (fetch, filter_license, rasterize_stage, caption_stage):
        stage.main()
    # One unreadable source and one unreadable training image: skipped and counted, not fatal.
    records = [json.loads(line) for line in (paths.TRAIN_SPLIT / paths.METADATA).read_text().splitlines()]
    broken = paths.TRAIN_SPLIT / records[0]["file_name"]
    broken.unlink()  # a hard link to the raster cache: replace it, do not write through it
    broken.write_bytes(b"not a png")
    filtered = read(paths.FILTERED)
    (paths.RAW / filtered[-1]["path"]).write_bytes(b"<html>oops</html>")
    eda_stage.main()
    first = digests(repo)
    eda_stage.main()
    assert digests(repo) == first  # a rerun writes the same bytes

    m = json.loads(paths.EDA_METRICS.read_text())
    assert m["source"] == "parquet" and m["images"] == len(filtered) == sum(m["by_split"].values())
    assert m["by_license"] == {"cc-by-4.0": len(filtered)}
    assert m["source_size"]["skipped"] == 1 and m["source_size"]["measured"] == len(filtered) - 1
    assert m["source_size"]["read_from"] == {"PNG": len(filtered) - 1}
    assert {m["source_size"]["width"]["min"], m["source_size"]["width"]["max"]} <= {54, 128, 180, 256, 512}
    assert m["source_size"]["aspect"] == {"min": 1.0, "median": 1.0, "mean": 1.0, "max": 1.0}
    assert m["colour"]["skipped"] == 1 and m["colour"]["measured"] == len(filtered) - 1
    train = m["by_split"]["train"]
    assert m["contact_sheet"] == {"images": train - 1, "skipped": 1}
    categories = {r["category"] for r in read(paths.EDA_CATEGORY)}
    assert categories <= set(synthetic_logos.CATEGORIES) and len(categories) > 3
    words = {r["word"] for r in read(paths.EDA_TOP_WORDS)}
    assert words and not words & BOILERPLATE_WORDS
    keywords = {k.lower() for k in synthetic_logos.KEYWORDS}
    assert keywords & words and all(" " in r["bigram"] for r in read(paths.EDA_TOP_BIGRAMS))
    chars = read(paths.EDA_CAPTION_CHARS)
    assert sum(int(r["images"]) for r in chars) == len(filtered) and int(chars[0]["lo"]) > 150  # the tail counts here
    with Image.open(paths.EDA_CONTACT_SHEET) as sheet:
        rows = -(-(train - 1) // draw.SHEET_COLUMNS)
        assert sheet.size == (draw.SHEET_GAP + 8 * (24 + draw.SHEET_GAP), draw.SHEET_GAP + rows * (24 + draw.SHEET_GAP))
    out = capsys.readouterr()
    assert f"eda: {m['images']} images" in out.out
    assert re.search(r"warning: eda: source size: skipped .*not a raster image", out.err)


# --- bioicons through DVC, and the plots in a browser -------------------------------------------------------------

@pytest.fixture(scope="module")
def eda_repo(tmp_path_factory):
    """A copy of the project as a git+DVC repo (sample snapshot, demo params) with `dvc repro eda` run:
    fetch, filter_license, rasterize, caption and eda, nothing of the model stages."""
    if not SAMPLE_ARCHIVE.exists():
        pytest.skip("../shared/bioicons snapshot absent")
    repo = pipeline_repo.make_repo(tmp_path_factory.mktemp("eda") / "repo")
    out = pipeline_repo.dvc(repo, "repro", "eda")
    assert pipeline_repo.ran_stages(out) == {"fetch", "filter_license", "rasterize", "caption", "eda"}, out
    return repo


@pytest.mark.xdist_group("eda_repo")
def test_bioicons_eda_counts_agree_with_the_dataset_and_rerun_identically(eda_repo):
    data = json.loads((eda_repo / paths.DATA_METRICS).read_text())["dataset"]
    m = json.loads((eda_repo / paths.EDA_METRICS).read_text())
    assert m["source"] == "bioicons" and m["images"] == data["images"] == 198
    assert m["by_split"] == data["by_split"]
    assert m["by_license"] == {lic: c["train"] + c["validation"] for lic, c in data["by_license"].items()}
    assert m["source_size"]["skipped"] == 0 and m["colour"]["skipped"] == 0
    assert m["source_size"]["read_from"]["viewBox"] > 150
    assert 30 <= m["categories"] <= 40 and m["contact_sheet"] == {"images": 48, "skipped": 0}
    license_rows = read(eda_repo / paths.EDA_LICENSE)
    assert {r["license"]: int(r["images"]) for r in license_rows} == m["by_license"]
    assert [int(r["images"]) for r in license_rows] == sorted((int(r["images"]) for r in license_rows), reverse=True)
    words = [r["word"] for r in read(eda_repo / paths.EDA_TOP_WORDS)]
    assert "cell" in words and not {"bioicons", "style", "in", "with", "and"} & set(words)
    for table in (paths.EDA_CAPTION_CHARS, paths.EDA_SOURCE_WIDTH, paths.EDA_SOURCE_ASPECT, paths.EDA_PALETTE,
                  paths.EDA_BACKGROUND):
        rows = read(eda_repo / table)
        assert sum(int(r["images"]) for r in rows) == 198 and len(rows) <= 21, table
    assert "Data and pipelines are up to date" in pipeline_repo.dvc(eda_repo, "status", "eda")

    before = digests(eda_repo)
    out = pipeline_repo.dvc(eda_repo, "repro", "--force", "--single-item", "eda")
    assert pipeline_repo.ran_stages(out) == {"eda"}, out
    assert digests(eda_repo) == before


@pytest.mark.xdist_group("eda_repo")
@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed (.ci/run installs it)")
@pytest.mark.skipif(not VEGA.exists(), reason="node_modules absent: `make setup` runs npm ci")
def test_eda_plots_draw_offline_in_a_real_browser(eda_repo, tmp_path):
    """`dvc plots show` with the model plots not yet made: the twelve eda tables are drawn by Vega from
    node_modules (no network) with the templates in .dvc/plots/, and both images are on the page."""
    repo = Path(shutil.copytree(eda_repo, tmp_path / "repo", symlinks=True))
    pipeline_repo.dvc(repo, "plots", "show")
    index = repo / "dvc_plots/index.html"
    html = index.read_text(encoding="utf-8")
    assert "cdn.jsdelivr.net" not in html and "../node_modules/vega/build/vega.min.js" in html
    tables = sorted(p.name for p in (repo / paths.EDA_TABLES).glob("*.csv"))
    assert len(tables) == 12 and all(f'id = "metrics_eda_{t.replace(".", "_")}"' in html for t in tables)
    assert html.count('"sort": null') == 12  # the tables' own order: bins ascending, counts descending
    assert all(p.name in html for p in (paths.EDA_WORDCLOUD, paths.EDA_CONTACT_SHEET))

    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={tmp_path / 'p'}",
               "--virtual-time-budget=10000"]
    dom = subprocess.run([*browser, "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    # vega-embed draws each chart on a canvas inside the chart's div: one per eda table.
    divs = re.split(r'(?=<div id="(?:metrics|data)_)', dom)
    drawn = sorted(t for t in tables for div in divs
                   if div.startswith(f'<div id="metrics_eda_{t.replace(".", "_")}"') and "<canvas" in div)
    assert drawn == tables, f"not drawn: {sorted(set(tables) - set(drawn))}"

    shot = tmp_path / "plots.png"
    subprocess.run([*browser, "--window-size=1200,4000", f"--screenshot={shot}", index.as_uri()],
                   capture_output=True, timeout=120, check=True)
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    # The bars are drawn in DVC's colour for the workspace (#945dd6); an undrawn page has none of it.
    bars = (np.abs(rgb - [0x94, 0x5d, 0xd6]).sum(axis=2) < 40).sum()
    assert bars > 50_000, f"eda plots not drawn ({bars} bar pixels): {shot}"
