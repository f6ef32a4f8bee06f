"""Inject the faults real runs hit into train_lora on the tiny preset and measure what each costs.

    python bench/faults.py            # ~5-10 min on 2 cores; prints a markdown table for RESULTS.md

One tiny training (tests/train_setup.py: 40 steps, checkpoint every 10, a loss logged every step)
per row, logging to a real `mlflow server` on 127.0.0.1:
  baseline        no fault;
  server down     MLFLOW_TRACKING_URI names a server that is not running;
  server killed   the server is SIGKILLed after the step-10 checkpoint and stays down; it is
                  started again after the run and `python -m iconforge.tracking sync` sends the rest;
  stage killed    train_lora is SIGKILLed at a seeded random point after the step-10 checkpoint, then rerun;
  disk full       after a kill at step 10, rerun with RLIMIT_FSIZE 32 KiB (the step-20 checkpoint
                  does not fit), then rerun with the limit lifted.
"Seconds lost" is the fault's wall time (all runs it took) minus the baseline's; "steps redone" the
steps trained twice; "stall" the longest gap between two consecutive steps' MLflow timestamps.
"""
from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tests/ for the tiny repo and the server helpers

import mlflow  # noqa: E402

from iconforge import paths  # noqa: E402
from mlflow_server import MlflowServer, free_port  # noqa: E402
from test_faults import STEP_10, kill_when, last_line, start_stage  # noqa: E402
from train_setup import make_repo, stage_env  # noqa: E402

SEED = 13
STEPS = 40


def finish(p: subprocess.Popen) -> tuple[int, str]:
    _, err = p.communicate(timeout=900)
    return p.returncode, err


def stall_s(url: str, repo: Path) -> float:
    run_id = json.loads((repo / paths.RUN_JSON).read_text())["run_id"]
    ts = sorted((m.step, m.timestamp) for m in mlflow.MlflowClient(url).get_metric_history(run_id, "loss"))
    assert [s for s, _ in ts] == list(range(1, STEPS + 1)), "metrics lost"
    return max(b - a for (_, a), (_, b) in zip(ts, ts[1:])) / 1000


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="iconforge-faults-"))
    (work / "server").mkdir()
    server = MlflowServer(work / "server").start()
    try:
        rows = measure(work, server)
    finally:
        server.stop()
    print("| fault | seconds lost (wall time vs baseline) | steps redone | longest gap between steps | data lost | outcome |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def measure(work: Path, server: MlflowServer) -> list[tuple[str, ...]]:
    url = server.wait()
    rows = []

    def repo(name: str) -> Path:
        return make_repo(work / name, log_every=1)

    r = repo("baseline")
    t0 = time.monotonic()
    rc, err = finish(start_stage(r, url))
    base_s = time.monotonic() - t0
    assert rc == 0, err
    rows.append(("none (baseline)", f"{base_s:.0f} s in all", "0", f"{stall_s(url, r):.1f} s", "nothing", "exit 0"))

    r = repo("down")
    t0 = time.monotonic()
    rc, err = finish(start_stage(r, f"http://127.0.0.1:{free_port()}"))
    rows.append(("tracking server down at start", f"stops after {time.monotonic() - t0:.1f} s (was 256 s)", "-",
                 "-", "nothing (no work started)", f"exit {rc}: `{last_line(err)[:60]}...`"))

    r = repo("outage")
    t0 = time.monotonic()
    p = start_stage(r, url)
    while not (r / STEP_10).exists():
        time.sleep(0.005)
    server.stop(9)
    rc, err = finish(p)
    took = time.monotonic() - t0
    server.start().wait()
    sync = subprocess.run([sys.executable, "-m", "iconforge.tracking", "sync"], cwd=r, env=stage_env(url),
                          capture_output=True, text=True)
    assert sync.returncode == 0, sync.stderr
    rows.append(("tracking server SIGKILLed at step 10, down to the end", f"{took - base_s:+.0f} s", "0",
                 f"{stall_s(url, r):.1f} s", "nothing (sent by `sync` once back)",
                 f"exit {rc}"))

    r = repo("kill")
    t0 = time.monotonic()
    p = start_stage(r, url)
    while not (r / STEP_10).exists():
        time.sleep(0.005)
    time.sleep(random.Random(SEED).uniform(0.5, 3.0))
    p.kill()
    _, err = p.communicate()
    done = max(int(n) for n in re.findall(rf"(\d+)/{STEPS}", err))
    ckpt = max(int(d.name.split("-")[1]) for d in (r / paths.CHECKPOINTS).glob("step-*"))
    rc, err = finish(start_stage(r, url))
    rows.append((f"train_lora SIGKILLed at step {done}", f"{time.monotonic() - t0 - base_s:+.0f} s",
                 f"{done - ckpt} (since step {ckpt})", "-", "nothing", f"exit {rc}, resumed from step {ckpt}"))

    r = repo("disk")
    t0 = time.monotonic()
    kill_when(start_stage(r, url), r / STEP_10)
    rc1, err1 = finish(start_stage(r, url, file_size_limit=32 * 1024))
    rc, err = finish(start_stage(r, url))
    rows.append(("disk full at the step-20 checkpoint (after a kill at step 10)", f"{time.monotonic() - t0 - base_s:+.0f} s",
                 "10 (since step 10)", "-", "nothing (step-10 checkpoint intact)",
                 f"exit {rc1}: `{last_line(err1)[:70]}...`, then exit {rc}"))
    return rows


if __name__ == "__main__":
    main()
