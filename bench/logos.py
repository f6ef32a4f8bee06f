"""Benchmark the data stages on a synthetic logo parquet against a plain pandas/Pillow loop.

    python bench/logos.py [--rows 50000] [--size 256] [--workdir DIR]

In one run, on the same machine and the same shards (iconforge.synthetic_logos, the real
schema, written as two shards in parallel):
  1. iconforge: `python -m stages.<name>` for fetch, filter_license, rasterize and caption, each
     a subprocess in a scratch repo; wall time, rows/s and peak RSS of the stage with all its
     worker processes (summed, sampled every 50 ms);
  2. baseline: one process, pandas.read_parquet of every shard, then per row Pillow decode,
     convert to RGB, fit on white at --size, save the PNG and its caption .txt;
  3. the added-shard re-run: a third shard appended to fetch.shards, rasterize again (only
     its rows render, the rest come from the cache).
Prints a markdown table; bench/RESULTS.md keeps the figures. Rows/s count the shards' rows.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import pandas as pd  # noqa: E402
import psutil  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from iconforge import synthetic_logos  # noqa: E402
from iconforge.config import read_params  # noqa: E402
from iconforge.dataset.raster import fit  # noqa: E402

STAGES = ("fetch", "filter_license", "rasterize", "caption")


def tree_usage(proc: psutil.Process, cpu: dict[int, float]) -> int:
    """RSS in bytes of proc and its descendants; records each one's CPU seconds so far in `cpu`."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            with p.oneshot():
                total += p.memory_info().rss
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def measured(fn) -> tuple[float, float, float]:
    """(seconds, CPU seconds, peak RSS in MB of this process and its descendants, summed) while fn()
    runs, sampled every 50 ms. CPU time is what the work costs whatever else the machine runs (up to
    the last 50 ms of each process); wall time is what a user waits."""
    me, peak, done, cpu = psutil.Process(), [0], threading.Event(), {}
    own = me.cpu_times()
    start_cpu = own.user + own.system

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_usage(me, cpu))
            time.sleep(0.05)
    t = threading.Thread(target=sample)
    t.start()
    start = time.perf_counter()
    try:
        fn()
    finally:
        done.set()
        t.join()
    tree_usage(me, cpu)
    return time.perf_counter() - start, sum(cpu.values()) - start_cpu, peak[0] / 2**20


def stage(repo: Path, name: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=repo, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{name} failed:\n{p.stderr[-3000:]}")


def baseline(shard_files: list[Path], out: Path, size: int, margin: float) -> None:
    """What one would write first: load each shard with pandas, loop over the rows."""
    out.mkdir(parents=True)
    n = 0
    for f in shard_files:
        df = pd.read_parquet(f)
        for image, text in zip(df["image"], df["text"]):
            im = Image.open(io.BytesIO(image["bytes"])).convert("RGB")
            fit(im, size, margin).save(out / f"{n:07d}.png", compress_level=1)
            (out / f"{n:07d}.txt").write_text(text)
            n += 1


def write_params(repo: Path, shard_files: list[Path], size: int) -> None:
    params = read_params(ROOT / "params.yaml")
    params["fetch"].update(source="parquet", shards=[str(f) for f in shard_files])
    params["rasterize"]["size"] = size
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workdir", type=Path)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="iconforge-bench-logos-"))
    half = a.rows // 2
    shard_files = [work / "shards" / f"train-{i:05d}.parquet" for i in range(3)]
    t0 = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(2) as pool:  # the third: the added shard of step 3
        list(pool.map(synthetic_logos.write, shard_files, [half, a.rows - half, 2000], [0, 1, 2]))
    print(f"generated {a.rows} + 2000 rows in {time.perf_counter() - t0:.0f} s "
          f"({sum(f.stat().st_size for f in shard_files[:2]) / 1e6:.0f} MB)", flush=True)

    repo = work / "repo"
    repo.mkdir()
    write_params(repo, shard_files[:2], a.size)
    margin = read_params(ROOT / "params.yaml")["rasterize"]["margin"]
    results = []
    for name in STAGES:
        secs, cpu, mb = measured(lambda: stage(repo, name))
        results.append((name, secs, cpu, mb))
        print(f"{name}: {secs:.1f} s, CPU {cpu:.1f} s, {a.rows / secs:.0f} rows/s, peak {mb:.0f} MB", flush=True)
    base = measured(lambda: baseline(shard_files[:2], work / "baseline", a.size, margin))
    print(f"baseline: {base[0]:.1f} s, CPU {base[1]:.1f} s, peak {base[2]:.0f} MB", flush=True)
    write_params(repo, shard_files, a.size)
    stage(repo, "fetch")
    stage(repo, "filter_license")
    add_s, *_ = measured(lambda: stage(repo, "rasterize"))

    total = [sum(r[i] for r in results) for i in (1, 2)] + [max(r[3] for r in results)]
    print(f"\n{a.rows} rows, {a.size} px, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"load average {os.getloadavg()[0]:.2f} at the end\n")
    print("| step | seconds | CPU seconds | rows/s | peak RSS (MB) |\n| --- | ---: | ---: | ---: | ---: |")
    for name, secs, cpu, mb in results + [("**iconforge, 4 stages**", *total),
                                          ("baseline: pandas + Pillow loop, 1 process", *base)]:
        print(f"| {name} | {secs:.1f} | {cpu:.1f} | {a.rows / secs:.0f} | {mb:.0f} |")
    print(f"\nwall time, baseline / ours: rasterize alone {base[0] / results[2][1]:.2f}x, the four stages (which "
          f"also hash, dedupe, group and split) {base[0] / total[0]:.2f}x")
    print(f"added shard (2,000 rows) re-run of rasterize over {a.rows + 2000} rows: {add_s:.1f} s")


if __name__ == "__main__":
    main()
