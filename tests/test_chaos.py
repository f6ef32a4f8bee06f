"""Kill any stage at any moment, rerun, same result.

Each stage of the tiny pipeline runs in a private copy of tiny_repo: once uninterrupted (its
duration T measured, its outputs compared with tiny_repo's), then SIGKILLed (with its workers: the
whole process group) at KILLS seeded random points of T, each followed by a look at what a killed
run left: every output is absent or complete, never partial. Then it reruns, and its outputs must be
byte-identical to the uninterrupted run's. As DVC does, each run starts with the stage's outputs
removed, except the persistent ones (the raster cache, the checkpoints), which the next run reuses.
About 3 T per stage: 610 s for the whole pipeline measured on the shared 2-core dev box at load
average ~8; on 2 idle cores ~3 x the ~60 s of one tiny `dvc repro`, about 3 min (estimated).
Lower KILLS to 1 if CI needs it cheaper.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iconforge import paths
from iconforge.paths import DIGESTS_JSON as INDEX
from pipeline_repo import dvc, env
from test_contract import dvc_stages

SEED = 13
KILLS = 2
# What describes how a run went rather than what it produced: timings, resumption, cache use, the
# MLflow run and the commit it ran at (tiny_repo's outputs were committed after they were made).
RUN_KEYS = {"seconds_per_step", "images_per_s", "peak_memory_mb", "total_seconds", "resumed_from_step", "run_id",
            "git_commit"}
# Outputs naming their run (a new MLflow run id each time): put back after their stage, as their
# content is checked here, so later stages see the same inputs as in tiny_repo.
PER_RUN = (paths.RUN_JSON, paths.TRAIN_METRICS)


def outputs(stage: dict) -> tuple[list[str], list[str]]:
    """(outputs DVC removes before running the stage, persistent ones it keeps)."""
    outs, persist = [], []
    for kind in ("outs", "metrics", "plots"):
        for item in stage.get(kind) or []:
            path, opts = next(iter(item.items())) if isinstance(item, dict) else (item, {})
            (persist if (opts or {}).get("persist") else outs).append(path)
    return outs, persist


def content(repo: Path, out: str) -> dict[str, str] | None:
    """sha256 per file of an output (None if absent); of train.json and run.json, the fields that
    do not depend on the run."""
    p = repo / out
    if not p.exists():
        return None
    if p.is_file() and p.suffix == ".json" and Path(out) in PER_RUN:
        d = json.loads(p.read_text(encoding="utf-8"))
        return {k: json.dumps(v) for k, v in d.items() if k not in RUN_KEYS and not k.startswith("cache_")}
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return {str(f.relative_to(p)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def run(repo: Path, stage: str, kill_after: float | None = None) -> bool:
    """Run the stage (its dvc.yaml command); SIGKILL its process group after `kill_after` s.
    Returns whether it ran to the end."""
    with open(repo.parent / f"{stage}.log", "wb") as log:
        p = subprocess.Popen([sys.executable, "-m", f"stages.{stage}"], cwd=repo, env=env(),
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        p.wait(timeout=kill_after if kill_after is not None else 600)
    except subprocess.TimeoutExpired:
        if kill_after is None:
            raise
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return False
    log = (repo.parent / f"{stage}.log").read_text(errors="replace")
    assert p.returncode == 0, f"{stage} exited {p.returncode}:\n{log[-3000:]}"
    return True


def test_every_stage_killed_at_random_points_reruns_to_identical_outputs(tiny_repo, tmp_path):
    repo = Path(shutil.copytree(tiny_repo, tmp_path / "repo", symlinks=True,
                                ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts")))
    rng = random.Random(SEED)
    for name, stage in dvc_stages(None).items():
        outs, persist = outputs(stage)
        reference = {o: content(tiny_repo, o) for o in outs}

        def clean() -> None:
            for o in outs:
                p = repo / o
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)

        clean()
        t0 = time.monotonic()
        run(repo, name)
        duration = time.monotonic() - t0
        assert {o: content(repo, o) for o in outs} == reference, f"{name}: uninterrupted run differs from tiny_repo"

        for u in sorted(rng.uniform(0.05, 0.95) for _ in range(KILLS)):
            at = f"{name} killed at {u * duration:.1f} s of {duration:.1f} s"
            clean()
            run(repo, name, kill_after=u * duration)
            for o in outs:  # what a killed run leaves is absent or whole
                assert content(repo, o) in (None, reference[o]), f"{at}: partial {o}"
            index = repo / paths.RASTER_CACHE / INDEX
            for key, digest in (json.loads(index.read_text()) if index.exists() else {}).items():
                png = repo / paths.RASTER_CACHE / f"{key}.png"  # what the index vouches for is whole
                assert not png.exists() or hashlib.sha256(png.read_bytes()).hexdigest() == digest, f"{at}: {png}"
            for ckpt in (repo / paths.CHECKPOINTS).glob("step-*"):
                assert sorted(f.name for f in ckpt.iterdir()) == ["adapter.safetensors", "meta.json", "state.pt"], at

        clean()
        run(repo, name)
        assert {o: content(repo, o) for o in outs} == reference, f"{name}: rerun after kills differs"
        for o in PER_RUN:
            if str(o) in outs:
                shutil.copyfile(tiny_repo / o, repo / o)

    assert dvc(repo, "status").strip() == "Data and pipelines are up to date."
