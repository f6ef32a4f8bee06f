"""Benchmark the rasterize stage on a bioicons snapshot.

    python bench/rasterize.py [--archive PATH] [--limit N] [--size PX] [--sheet DIR]

In one run, on the same extracted files and the same machine:
  1. baseline: a plain sequential loop, cairosvg.svg2png(raw bytes) at size x size;
  2. iconforge.rasterize, all cores, cold cache: biggest files first (LPT) and in path order;
  3. the incremental re-run after one icon changed;
  4. resvg as an alternative renderer, through each binding that is installed
     (`resvg_py`, `resvg`): sequential speed on our sanitized SVGs, and agreement with
     our cairosvg PNGs (mean absolute pixel difference, same geometry). --sheet DIR
     saves the biggest disagreements side by side (cairosvg left, resvg right).
The full snapshot takes about half an hour on 2 cores; run it in the background.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import io
import os
import platform
import sys
import tarfile
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

# Only light imports at module level: every worker process re-imports this main module.
from lxml import etree  # noqa: E402
from PIL import Image  # noqa: E402

from iconforge.config import RasterizeConfig, load  # noqa: E402
from iconforge.rasterize import rasterize  # noqa: E402
from iconforge.svg import RENDERER, sanitize  # noqa: E402

FULL = ROOT.parent / "shared/bioicons/bioicons-f3f18b86.tar.gz"
AGREE = 5.0  # mean |diff| (0-255) below which two renderings count as the same picture


def extract(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return next(dest.glob("*/static/icons"))


def spread(paths: list[str], limit: int) -> list[str]:
    """`limit` paths evenly spread over the sorted list (every license/category)."""
    if not limit or limit >= len(paths):
        return paths
    return [paths[i * len(paths) // limit] for i in range(limit)]


def loadavg() -> str:
    """The box is shared: print the load average beside each timing."""
    return "load %.1f/%.1f" % os.getloadavg()[:2]


def baseline(raw: Path, paths: list[str], size: int) -> tuple[float, int, dict[str, float]]:
    """The naive way: one process, cairosvg on the raw bytes, PNG bytes out."""
    import cairosvg
    times, failures = {}, 0
    t0 = time.perf_counter()
    for p in paths:
        t = time.perf_counter()
        try:
            cairosvg.svg2png((raw / p).read_bytes(), output_width=size, output_height=size)
        except Exception:
            failures += 1
        times[p] = time.perf_counter() - t
    return time.perf_counter() - t0, failures, times


def timed_rasterize(raw, paths, out: Path, cfg, **kw):
    t = time.perf_counter()
    s = rasterize(paths, raw, out / "png", out / "cache", cfg, **kw)
    return time.perf_counter() - t, s


def on_canvas(drawing: Image.Image, size: int, pad: int) -> Image.Image:
    inner = size - 2 * pad
    canvas = Image.new("RGB", (size, size), "white")
    canvas.paste(drawing.convert("RGB"), (pad + (inner - drawing.width) // 2, pad + (inner - drawing.height) // 2))
    return canvas


def without_root_size(svg: bytes) -> str:
    """With a viewBox the root width/height only set the default output size, which
    we override; resvg_py 0.5 rejects some of them (sizes in mm)."""
    root = etree.fromstring(svg)
    if root.get("viewBox"):
        root.attrib.pop("width", None)
        root.attrib.pop("height", None)
    return etree.tostring(root, encoding="unicode")


def resvg_py_renderer():
    import resvg_py

    def draw(svg: bytes, size: int, pad: int) -> Image.Image:
        inner = size - 2 * pad  # resvg_py fits the drawing into width x height, aspect kept
        png = resvg_py.svg_to_bytes(svg_string=without_root_size(svg), width=inner, height=inner,
                                    background="white")
        return on_canvas(Image.open(io.BytesIO(png)), size, pad)
    return draw


def resvg_renderer():
    from resvg import render, usvg
    options = usvg.Options.default()
    options.load_system_fonts()  # cairo uses the system fonts too

    def draw(svg: bytes, size: int, pad: int) -> Image.Image:
        tree = usvg.Tree.from_str(without_root_size(svg), options)
        w, h = tree.int_size()
        inner = size - 2 * pad
        k = inner / max(w, h)
        x, y = pad + (inner - w * k) / 2, pad + (inner - h * k) / 2
        png = render(tree, (k, 0, x, 0, k, y), bg_size=(size, size), bg_color=(255, 255, 255, 255))
        return Image.open(io.BytesIO(png)).convert("RGB")
    return draw


def compare(draw, raw: Path, paths: list[str], ours: Path, cfg) -> dict:
    """Time `draw` over every icon we rendered and diff it against our PNG."""
    import numpy as np
    seconds, diffs, failures = 0.0, {}, {}
    pad = round(cfg.size * cfg.margin)
    for p in paths:
        mine = ours / Path(p).with_suffix(".png")
        if not mine.exists():
            continue
        try:
            t = time.perf_counter()
            im = draw(sanitize((raw / p).read_bytes()), cfg.size, pad)
            seconds += time.perf_counter() - t
        except BaseException as e:  # pyo3 turns Rust panics into BaseExceptions
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            failures[p] = f"{type(e).__name__}: {e}"[:120]
            continue
        a = np.asarray(im, dtype=np.int16)
        b = np.asarray(Image.open(mine).convert("RGB"), dtype=np.int16)
        diffs[p] = float(np.abs(a - b).mean())
    return {"seconds": seconds, "diffs": diffs, "failures": failures}


def save_sheet(draw, raw: Path, ours: Path, worst: list[str], cfg, dest: Path) -> None:
    cell = 256
    sheet = Image.new("RGB", (2 * cell, cell * len(worst)), "gray")
    for i, p in enumerate(worst):
        mine = Image.open(ours / Path(p).with_suffix(".png")).resize((cell, cell))
        other = draw(sanitize((raw / p).read_bytes()), cfg.size, round(cfg.size * cfg.margin)).resize((cell, cell))
        sheet.paste(mine, (0, i * cell))
        sheet.paste(other, (cell, i * cell))
    dest.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(dest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", type=Path, default=FULL)
    ap.add_argument("--limit", type=int, default=0, help="only N icons, evenly spread (0 = all)")
    ap.add_argument("--size", type=int, default=0, help="override rasterize.size from params.yaml")
    ap.add_argument("--sheet", type=Path, help="save the worst resvg disagreements here as PNG sheets")
    args = ap.parse_args()
    import numpy as np
    from scipy.stats import spearmanr

    cfg = load(RasterizeConfig, ROOT / "params.yaml")
    cfg = RasterizeConfig(size=args.size or cfg.size, margin=cfg.margin, timeout_s=cfg.timeout_s,
                          max_memory_mb=cfg.max_memory_mb, workers=0)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"machine: {os.cpu_count()} cores, {cpu}; Python {platform.python_version()}; {RENDERER}")

    with tempfile.TemporaryDirectory(prefix="bench-rasterize-") as tmp:
        tmp = Path(tmp)
        raw = extract(args.archive, tmp / "src")
        paths = spread(sorted(str(p.relative_to(raw)) for p in raw.rglob("*.svg")), args.limit)
        mb = sum((raw / p).stat().st_size for p in paths) / 1e6
        print(f"icons: {len(paths)} SVGs, {mb:.0f} MB, size {cfg.size}px, margin {cfg.margin}\n")

        base_s, base_fail, per_file = baseline(raw, paths, cfg.size)
        print(f"1. baseline sequential cairosvg.svg2png: {base_s:8.1f} s  ({base_fail} failed)  [{loadavg()}]")
        sizes = [(raw / p).stat().st_size for p in paths]
        rho = spearmanr(sizes, [per_file[p] for p in paths]).statistic
        print(f"   file size vs render time: Spearman rho {rho:.2f}; slowest:")
        for p in sorted(per_file, key=per_file.get, reverse=True)[:5]:
            print(f"     {per_file[p]:6.1f} s  {p}")

        lpt_s, s = timed_rasterize(raw, paths, tmp / "lpt", cfg)
        print(f"2. iconforge.rasterize, {os.cpu_count()} workers, biggest first: {lpt_s:8.1f} s  "
              f"-> {base_s / lpt_s:.2f}x the baseline  [{loadavg()}]")
        print("   " + str(s).replace("\n", "\n   "))
        for p, r in sorted(s.rejects.items()):
            print(f"   reject: {p}: {r}")
        path_s, _ = timed_rasterize(raw, paths, tmp / "pathorder", cfg, biggest_first=False)
        print(f"   same, in path order (no LPT):                 {path_s:8.1f} s  -> LPT saves "
              f"{path_s - lpt_s:+.1f} s  [{loadavg()}]")

        touched = next(p for p in paths if p not in s.rejects)
        with open(raw / touched, "ab") as f:
            f.write(b"\n<!-- bench: touched -->\n")
        inc_s, inc = timed_rasterize(raw, paths, tmp / "lpt", cfg)
        print(f"3. incremental re-run after changing one icon:    {inc_s:8.1f} s  "
              f"(rendered {inc.rendered}, from cache {inc.from_cache})  [{loadavg()}]")

        for name, make in (("resvg_py", resvg_py_renderer), ("resvg", resvg_renderer)):
            if importlib.util.find_spec(name) is None:
                print(f"4. {name}: not installed, skipped")
                continue
            draw = make()
            r = compare(draw, raw, paths, tmp / "lpt/png", cfg)
            d = np.array(list(r["diffs"].values()))
            print(f"4. {name} {version(name)} sequential, sanitized SVG to canvas: {r['seconds']:8.1f} s "
                  f"for {len(d) + len(r['failures'])} icons (baseline cairosvg sequential: {base_s:.1f} s)"
                  f"  [{loadavg()}]")
            print(f"   failed: {len(r['failures'])}; agree with cairosvg (mean |diff| < {AGREE:g}): "
                  f"{int((d < AGREE).sum())} of {len(d)}; median diff {np.median(d):.2f}")
            for lo, hi in ((0, 1), (1, 2), (2, 5), (5, 10), (10, 20), (20, 256)):
                print(f"     diff in [{lo:3d}, {hi:3d}): {int(((d >= lo) & (d < hi)).sum())}")
            worst = sorted(r["diffs"], key=r["diffs"].get, reverse=True)[:8]
            for p in worst:
                print(f"     diff {r['diffs'][p]:6.1f}  {p}")
            for k, n in collections.Counter(v[:60] for v in r["failures"].values()).most_common(5):
                print(f"     failure x{n}: {k}")
            if args.sheet:
                save_sheet(draw, raw, tmp / "lpt/png", worst, cfg, args.sheet / f"worst-{name}.png")


if __name__ == "__main__":
    main()
