"""iconforge.dataset.rasterize and the rasterize stage: the parallel, bounded, cached driver."""
import base64
import csv
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT, SAMPLE_ARCHIVE, needs_sample
from iconforge.config import RENDERERS, RasterizeConfig
from iconforge.dataset.rasterize import rasterize
from iconforge.paths import DIGESTS_JSON as INDEX
from iconforge.dataset.svg import DARK

NS = 'xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"'


def square(colour: str) -> str:
    """A square inset in its viewBox (filling it would be one flat colour: blank)."""
    return f'<svg {NS} viewBox="0 0 10 10"><rect x="1" y="1" width="8" height="8" fill="{colour}"/></svg>'


# 2^29 nested <use> draws: a renderer would run for ages; only the timeout stops it.
USE_BOMB = (f'<svg {NS} viewBox="0 0 10 10"><defs><rect id="a0" width="5" height="5"/>'
            + "".join(f'<g id="a{i}"><use xlink:href="#a{i - 1}"/><use xlink:href="#a{i - 1}"/></g>'
                      for i in range(1, 30))
            + '</defs><use xlink:href="#a29"/></svg>')

ICONS = {
    "cc-0/Cells/A/red.svg": square("red"),
    "cc-0/Cells/A/blue.svg": square("blue"),
    "cc-0/Cells/B/wide.svg": f'<svg {NS} width="1e9" height="5e8"><rect width="100%" height="100%"/></svg>',
    "mit/Lab/C/green.svg": square("#0f0"),
    "mit/Lab/C/white.svg": square("white"),  # a white-only mark: rendered on dark grey
    "mit/Lab/C/blank.svg": square("white").replace("<rect", '<rect opacity="0"'),  # nothing drawn
    "mit/Lab/C/empty.svg": "",
    "mit/Lab/C/truncated.svg": square("red")[:50],
}
GOOD = ["cc-0/Cells/A/blue.svg", "cc-0/Cells/A/red.svg", "cc-0/Cells/B/wide.svg", "mit/Lab/C/green.svg",
        "mit/Lab/C/white.svg"]


def cfg(**kw) -> RasterizeConfig:
    return RasterizeConfig(**{"size": 64, "margin": 0.05, "timeout_s": 30, "max_memory_mb": 1024, "workers": 2,
                              "renderer": "cairosvg", **kw})


def library(root: Path, icons: dict = ICONS) -> list[str]:
    for path, text in icons.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return sorted(icons)


def pngs(png_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(png_dir)): p.read_bytes() for p in sorted(png_dir.rglob("*.png"))}


@pytest.mark.parametrize("renderer", RENDERERS)
def test_renders_good_icons_and_records_rejects(tmp_path, renderer):
    raw, out = tmp_path / "raw", tmp_path / "png"
    s = rasterize(library(raw), raw, out, tmp_path / "cache", cfg(renderer=renderer))
    assert s.rendered == 5 and s.from_cache == 0
    assert sorted(pngs(out)) == [p.replace(".svg", ".png") for p in GOOD]
    assert Image.open(out / "cc-0/Cells/A/red.png").getpixel((32, 32)) == (255, 0, 0)
    assert s.dark == ["mit/Lab/C/white.svg"]
    white = Image.open(out / "mit/Lab/C/white.png")
    assert white.getpixel((32, 32)) == (255, 255, 255) and white.getpixel((2, 2)) == DARK
    assert {p: r.split(" ")[0] for p, r in s.rejects.items()} == {
        "mit/Lab/C/blank.svg": "blank", "mit/Lab/C/empty.svg": "empty", "mit/Lab/C/truncated.svg": "invalid"}
    assert not list(tmp_path.glob(".png.*"))  # no temp dir left behind


@pytest.mark.parametrize("bad", ["../outside.svg", "/etc/passwd", "a/../../b.svg"])
def test_paths_leaving_the_raw_folder_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="must be relative"):
        rasterize([bad], tmp_path / "raw", tmp_path / "png", tmp_path / "cache", cfg())


def test_incremental_rerun_renders_only_what_changed(tmp_path):
    raw, out, cache = tmp_path / "raw", tmp_path / "png", tmp_path / "cache"
    paths = library(raw)
    rasterize(paths, raw, out, cache, cfg())
    first = pngs(out)

    again = rasterize(paths, raw, out, cache, cfg())
    assert again.rendered == 0 and again.from_cache == len(paths)
    assert pngs(out) == first
    assert len(again.rejects) == 3  # rejects come from the cache too, still listed
    assert again.dark == ["mit/Lab/C/white.svg"]  # and so does the background

    (raw / "cc-0/Cells/A/red.svg").write_text(square("#800"))
    changed = rasterize(paths, raw, out, cache, cfg())
    assert changed.rendered == 1 and changed.from_cache == len(paths) - 1 and changed.evicted == 1
    now = pngs(out)
    assert now["cc-0/Cells/A/red.png"] != first["cc-0/Cells/A/red.png"]
    assert {k: v for k, v in now.items() if "red" not in k} == {k: v for k, v in first.items() if "red" not in k}

    # Dropping an icon drops its PNG and evicts its cache entry.
    fewer = rasterize([p for p in paths if "blue" not in p], raw, out, cache, cfg())
    assert fewer.rendered == 0 and fewer.evicted == 1 and "cc-0/Cells/A/blue.png" not in pngs(out)
    assert len({p.name.split(".")[0] for p in cache.iterdir() if p.name != INDEX}) == len(paths) - 1  # one key per icon


def test_size_or_renderer_change_misses_the_cache(tmp_path):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    paths = library(raw)
    rasterize(paths, raw, tmp_path / "a", cache, cfg())
    s = rasterize(paths, raw, tmp_path / "b", cache, cfg(size=32))
    assert s.rendered == 5 and s.from_cache == 0
    assert Image.open(tmp_path / "b/mit/Lab/C/green.png").size == (32, 32)
    s = rasterize(paths, raw, tmp_path / "c", cache, cfg(size=32, renderer="resvg"))
    assert s.rendered == 5 and s.from_cache == 0


def test_output_is_identical_across_worker_counts_and_order(tmp_path):
    raw = tmp_path / "raw"
    paths = library(raw)
    rasterize(paths, raw, tmp_path / "one", tmp_path / "c1", cfg(workers=1))
    rasterize(paths, raw, tmp_path / "two", tmp_path / "c2", cfg(workers=0), biggest_first=False)
    assert pngs(tmp_path / "one") == pngs(tmp_path / "two")
    assert sorted(os.listdir(tmp_path / "c1")) == sorted(os.listdir(tmp_path / "c2"))


def test_timeout_kills_a_stuck_icon_and_is_not_cached(tmp_path):
    raw, out, cache = tmp_path / "raw", tmp_path / "png", tmp_path / "cache"
    paths = library(raw, {"a/bomb.svg": USE_BOMB, "a/ok.svg": square("red")})
    t = time.perf_counter()
    s = rasterize(paths, raw, out, cache, cfg(timeout_s=1, workers=1))
    assert time.perf_counter() - t < 20
    assert s.rejects == {"a/bomb.svg": "timeout (over 1 s)"} and s.rendered == 1
    assert (out / "a/ok.png").exists()
    again = rasterize(paths, raw, out, cache, cfg(timeout_s=1, workers=1))
    assert again.from_cache == 1 and "a/bomb.svg" in again.rejects  # retried, not cached


def test_resvg_refuses_the_use_bomb_quickly(tmp_path):
    # usvg caps the nodes a document may expand to; the worker's timeout stays the backstop.
    raw = tmp_path / "raw"
    paths = library(raw, {"a/bomb.svg": USE_BOMB, "a/ok.svg": square("red")})
    s = rasterize(paths, raw, tmp_path / "png", tmp_path / "cache", cfg(timeout_s=10, workers=1, renderer="resvg"))
    assert s.rejects["a/bomb.svg"].startswith("render error: resvg:") and "NodesLimitReached" in s.rejects["a/bomb.svg"]
    assert s.rendered == 1


@pytest.mark.parametrize("renderer, reason", [
    ("cairosvg", "out of memory (limit 300 MB)"),
    ("resvg", "worker crashed (SIGABRT: out of memory? limit 300 MB)"),  # Rust aborts on a failed allocation
])
def test_memory_limit_rejects_a_memory_hog(tmp_path, renderer, reason):
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, format="PNG")  # 18 KB file, 576 MB once decoded by cairo
    href = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    hog = f'<svg {NS} viewBox="0 0 10 10"><image width="10" height="10" xlink:href="{href}"/></svg>'
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    paths = library(raw, {"a/hog.svg": hog, "a/ok.svg": square("red")})
    s = rasterize(paths, raw, tmp_path / "png", cache, cfg(max_memory_mb=300, workers=1, renderer=renderer))
    assert s.rejects == {"a/hog.svg": reason} and s.rendered == 1
    assert len([p for p in cache.iterdir() if p.name != INDEX]) == 1  # only ok.svg: a limit is not a property of the icon


def run_stage(repo: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stages.rasterize"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)


def stage_repo(tmp_path: Path, raw_src: Path, paths: list[str], size: int) -> Path:
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    shutil.copytree(raw_src, repo / "data/raw")
    (repo / "params.yaml").write_text(
        f"rasterize:\n  size: {size}\n  margin: 0.05\n  timeout_s: 60\n  max_memory_mb: 2048\n  workers: 0\n"
        "  renderer: cairosvg\n")
    with open(repo / "data/filtered.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "license", "split"])
        w.writerows([p, p.split("/")[0], "train"] for p in paths)
    return repo


def test_stage_writes_pngs_and_sorted_rejects(tmp_path):
    paths = library(tmp_path / "src")
    repo = stage_repo(tmp_path, tmp_path / "src", paths, 48)
    r = run_stage(repo)
    assert r.returncode == 0, r.stderr
    assert "rendered 5, from cache 0, rejected 3, on dark grey (white-only mark) 1" in r.stdout
    with open(repo / "data/raster_rejects.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "reason"] and [r[0] for r in rows[1:]] == sorted(set(paths) - set(GOOD))
    assert (repo / "data/raster_backgrounds.csv").read_text() == "path,background\nmit/Lab/C/white.svg,#404040\n"
    assert len(pngs(repo / "data/png")) == 5 and any((repo / "data/raster_cache").iterdir())
    assert "rendered 0, from cache 8" in run_stage(repo).stdout


def test_corrupt_cache_entries_are_rendered_again_and_reported(tmp_path):
    paths = library(tmp_path / "src")
    repo = stage_repo(tmp_path, tmp_path / "src", paths, 48)
    assert run_stage(repo).returncode == 0
    first = pngs(repo / "data/png")
    entries = sorted((repo / "data/raster_cache").glob("*.png"))
    truncated, flipped = entries[0], entries[1]
    truncated.write_bytes(truncated.read_bytes()[:-40])  # an interrupted copy, a full disk
    raw = bytearray(flipped.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of rot
    flipped.write_bytes(bytes(raw))

    r = run_stage(repo)
    assert r.returncode == 0, r.stderr
    assert "rendered 2, from cache 6" in r.stdout
    healed = [line.split(": ", 1)[1] for line in r.stdout.splitlines() if "corrupt cache entry rendered again" in line]
    assert len(healed) == 2 and set(healed) <= set(GOOD), r.stdout
    assert pngs(repo / "data/png") == first  # the damaged bytes reached neither data/png nor the cache
    assert "rendered 0, from cache 8" in run_stage(repo).stdout


def test_an_edit_through_a_linked_png_is_not_trusted_and_clashing_names_are_rejected(tmp_path):
    """data/png hard-links the cache: a valid PNG written in place over a data/png file changes the
    cache entry too (same inode); its mtime gives it away, so the next run renders it again."""
    paths = library(tmp_path / "src")
    repo = stage_repo(tmp_path, tmp_path / "src", paths, 48)
    assert run_stage(repo).returncode == 0
    first = pngs(repo / "data/png")
    edited = sorted((repo / "data/png").rglob("*.png"))[0]
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), "red").save(buf, "PNG")
    edited.write_bytes(buf.getvalue())  # in place: the cache entry shares this inode
    r = run_stage(repo)
    assert "rendered 1, from cache 7" in r.stdout and "changed or corrupt cache entry rendered again" in r.stdout
    assert pngs(repo / "data/png") == first

    raw = tmp_path / "raw"
    (raw / "a").mkdir(parents=True)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><circle cx="5" cy="5" r="4"/></svg>'
    for name in ("a/x.svg", "a/x.SVG"):
        (raw / name).write_bytes(svg)
    s = rasterize(["a/x.SVG", "a/x.svg"], raw, tmp_path / "png", tmp_path / "cache", cfg(size=32))
    assert s.rendered == 1 and s.rejects == {"a/x.svg": "name clash: a/x.SVG is also rendered to a/x.png"}


@needs_sample
@pytest.mark.parametrize("renderer", RENDERERS)
def test_sample_snapshot_renders_completely(tmp_path, renderer):
    with tarfile.open(SAMPLE_ARCHIVE) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    raw = tmp_path / "x/bioicons-sample/static/icons"
    paths = sorted(str(p.relative_to(raw)) for p in raw.rglob("*.svg"))
    s = rasterize(paths, raw, tmp_path / "png", tmp_path / "cache", cfg(size=64, renderer=renderer))
    assert s.rejects == {
        "cc-by-4.0/Viruses/DBCLS/Polyomaviridae.svg": "empty file",  # 0-byte files upstream
        "cc-by-4.0/Viruses/DBCLS/SARS-CoV-2.svg": "empty file",
        "cc-by-4.0/Viruses/DBCLS/virus.svg": "empty file",
    }
    assert s.rendered == len(paths) - 3 == 209
    # A white-on-transparent logo: invisible on white, so on dark grey.
    assert s.dark == ["cc-by-4.0/Chemo-_and_Bioinformatics/Phil-Ewels/nf-core-logo-mono-white.svg"]


# Two text icons of the sample whose cairosvg rendering once depended on which was drawn
# first in a worker (cairo's per-process font cache), so PNGs varied with pool scheduling.
TEXT_ICONS = ("cc-0/Genetics/umasstr/AAV_adenovirus.svg", "cc-0/Amino-Acids/B--Gideon-Bergheim/serine_chem.svg")
ORDER_PROBE = """
import hashlib, sys
from pathlib import Path
from iconforge.dataset.svg import render
for p in sys.argv[2:]:
    print(hashlib.sha256(render(Path(p).read_bytes(), 128, 0.05, sys.argv[1]).png).hexdigest())
"""


@needs_sample
@pytest.mark.parametrize("renderer", RENDERERS)
def test_text_icons_render_the_same_whatever_was_drawn_before(tmp_path, renderer):
    with tarfile.open(SAMPLE_ARCHIVE) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(TEXT_ICONS)]
        tar.extractall(tmp_path, members=members, filter="data")
    paths = sorted(str(p) for p in tmp_path.rglob("*.svg"))
    assert len(paths) == 2

    def digests(order: list[str]) -> dict[str, str]:
        out = subprocess.run([sys.executable, "-c", ORDER_PROBE, renderer, *order], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
        return dict(zip(order, out))

    assert digests(paths) == digests(paths[::-1])
