"""Benchmark the rasterize stage on a bioicons snapshot, and compare its renderers.

    python bench/rasterize.py [--archive PATH] [--limit N] [--size PX] [--sheet DIR]

In one run, on the same extracted files and the same machine:
  1. baseline: a plain sequential loop, cairosvg.svg2png(raw bytes) at size x size;
  2. iconforge.dataset.rasterize with each renderer (params.yaml's rasterize section otherwise),
     all cores, cold cache; time, ratio to the baseline, rejects;
  3. the incremental re-run after one icon changed, with each renderer;
  4. how many icons each renderer draws correctly: rendered (no error, not blank) and
     close to the other's PNG (same sanitizer, geometry and flattening): mean absolute
     difference below AGREE and at most CHANGED_SHARE of the pixels changed by more than
     CHANGED levels (catches a dropped label, small in area but plain to see). --sheet DIR
     saves the biggest disagreements side by side (cairosvg left, resvg right).
The full snapshot takes about 15 minutes on 2 cores; run it in the background.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

# Only light imports at module level: every worker process re-imports this main module.
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from iconforge.config import RENDERERS, RasterizeConfig, load  # noqa: E402
from iconforge.dataset.rasterize import rasterize  # noqa: E402
from iconforge.dataset.svg import RENDERER_VERSIONS  # noqa: E402

FULL = ROOT.parent / "shared/bioicons/bioicons-f3f18b86.tar.gz"
AGREE = 5.0  # mean |diff| (0-255) below which two renderings count as the same picture...
CHANGED, CHANGED_SHARE = 64, 0.005  # ...if at most 0.5% of pixels differ by more than 64 levels


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


def timed_rasterize(raw, paths, out: Path, cfg):
    t = time.perf_counter()
    s = rasterize(paths, raw, out / "png", out / "cache", cfg)
    return time.perf_counter() - t, s


def difference(a: Path, b: Path) -> tuple[float, float]:
    """Mean |a - b| over all pixels and channels, and the share of pixels changed by > CHANGED."""
    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.int16)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.int16)
    d = np.abs(x - y)
    return float(d.mean()), float((d.max(axis=-1) > CHANGED).mean())


def save_sheet(pngs: list[Path], worst: list[str], dest: Path) -> None:
    cell = 384
    sheet = Image.new("RGB", (len(pngs) * cell, cell * len(worst)), "gray")
    for i, p in enumerate(worst):
        for j, d in enumerate(pngs):
            sheet.paste(Image.open(d / Path(p).with_suffix(".png")).convert("RGB").resize((cell, cell)),
                        (j * cell, i * cell))
    dest.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(dest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", type=Path, default=FULL)
    ap.add_argument("--limit", type=int, default=0, help="only N icons, evenly spread (0 = all)")
    ap.add_argument("--size", type=int, default=0, help="override rasterize.size from params.yaml")
    ap.add_argument("--sheet", type=Path, help="save the worst renderer disagreements here as PNG sheets")
    ap.add_argument("--no-baseline", action="store_true", help="skip the slow sequential baseline")
    args = ap.parse_args()

    cfg = load(RasterizeConfig, ROOT / "params.yaml")
    cfg = replace(cfg, size=args.size or cfg.size, workers=0)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"machine: {os.cpu_count()} cores, {cpu}; Python {platform.python_version()}; numpy {np.__version__}")
    for name in RENDERERS:
        print(f"  {name}: {RENDERER_VERSIONS[name]}")

    with tempfile.TemporaryDirectory(prefix="bench-rasterize-") as tmp:
        tmp = Path(tmp)
        raw = extract(args.archive, tmp / "src")
        paths = spread(sorted(str(p.relative_to(raw)) for p in raw.rglob("*.svg")), args.limit)
        mb = sum((raw / p).stat().st_size for p in paths) / 1e6
        print(f"icons: {len(paths)} SVGs, {mb:.0f} MB, size {cfg.size}px, margin {cfg.margin}, "
              f"default renderer {cfg.renderer}\n")

        base_s = float("nan")
        if not args.no_baseline:
            base_s, base_fail, per_file = baseline(raw, paths, cfg.size)
            print(f"1. baseline sequential cairosvg.svg2png: {base_s:8.1f} s  ({base_fail} failed)  [{loadavg()}]")
            for p in sorted(per_file, key=per_file.get, reverse=True)[:3]:
                print(f"     {per_file[p]:6.1f} s  {p}")

        runs = {}
        for name in RENDERERS:
            seconds, s = timed_rasterize(raw, paths, tmp / name, replace(cfg, renderer=name))
            runs[name] = s
            print(f"2. iconforge.dataset.rasterize, {name}, {os.cpu_count()} workers, cold cache: {seconds:8.1f} s  "
                  f"-> {base_s / seconds:.2f}x the baseline  [{loadavg()}]")
            print("   " + str(s).replace("\n", "\n   "))
            for p, r in sorted(s.rejects.items()):
                print(f"   reject: {p}: {r}")
            for p in s.dark:
                print(f"   on dark grey: {p}")

        touched = next(p for p in paths if all(p not in s.rejects for s in runs.values()))
        with open(raw / touched, "ab") as f:
            f.write(b"\n<!-- bench: touched -->\n")
        for name in RENDERERS:
            seconds, s = timed_rasterize(raw, paths, tmp / name, replace(cfg, renderer=name))
            print(f"3. incremental re-run after changing one icon, {name}: {seconds:6.1f} s  "
                  f"(rendered {s.rendered}, from cache {s.from_cache})  [{loadavg()}]")

        a, b = RENDERERS[:2]
        both = [p for p in paths if p not in runs[a].rejects and p not in runs[b].rejects]
        diffs = {p: difference(tmp / a / "png" / Path(p).with_suffix(".png"),
                               tmp / b / "png" / Path(p).with_suffix(".png")) for p in both}
        mad = np.array([d[0] for d in diffs.values()])
        changed = np.array([d[1] for d in diffs.values()])
        agree = (mad < AGREE) & (changed <= CHANGED_SHARE)
        print(f"4. {a} vs {b}: both render {len(both)} of {len(paths)}; rendered by only {a}: "
              f"{len(runs[b].rejects) - len(runs[a].rejects)}")
        print(f"   agree (mean |diff| < {AGREE:g} and <= {CHANGED_SHARE:.1%} of pixels changed by > {CHANGED}): "
              f"{int(agree.sum())} of {len(both)}; median mean |diff| {np.median(mad):.2f}")
        for lo, hi in ((0, 1), (1, 2), (2, 5), (5, 10), (10, 20), (20, 256)):
            print(f"     mean |diff| in [{lo:3d}, {hi:3d}): {int(((mad >= lo) & (mad < hi)).sum())}")
        for lo, hi in ((0, 0.001), (0.001, 0.005), (0.005, 0.02), (0.02, 0.1), (0.1, 1.01)):
            print(f"     pixels changed in [{lo:.1%}, {hi:.1%}): {int(((changed >= lo) & (changed < hi)).sum())}")
        worst = sorted(diffs, key=lambda p: (diffs[p][1], diffs[p][0]), reverse=True)[:12]
        for p in worst:
            print(f"     mean |diff| {diffs[p][0]:5.1f}, changed {diffs[p][1]:6.2%}  {p}")
        if args.sheet:
            for i in range(0, len(worst), 4):
                save_sheet([tmp / a / "png", tmp / b / "png"], worst[i:i + 4], args.sheet / f"worst-{i // 4}.png")
            print(f"   sheets of the worst: {args.sheet}/worst-*.png ({a} left, {b} right)")


if __name__ == "__main__":
    main()
