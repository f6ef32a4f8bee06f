"""Shared setup of the generation tests: a workspace with a tiny base and a trained-looking
adapter (test_sample's `trained` models), and the real API server on a free 127.0.0.1 port."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT
from test_sample import PARAMS, trained  # noqa: F401  (the fixture is used through `icon_project`)

EXPERIMENT = "pytest-serve"


@pytest.fixture(scope="session")
def icon_project(tmp_path_factory, trained) -> Path:  # noqa: F811
    """A workspace as `make demo` leaves it, for the generator: models/, params.yaml (sample: 64 px, 2 steps)."""
    root = tmp_path_factory.mktemp("icons")
    shutil.copytree(trained / "models", root / "models")
    (root / "params.yaml").write_text(PARAMS)
    run = json.loads((root / "models/run.json").read_text())
    (root / "models/run.json").write_text(json.dumps({**run, "dvc_exp_name": EXPERIMENT}))
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def spawn(args: list[str], cwd: Path, log: Path, **env: str) -> subprocess.Popen:
    """A child process whose output goes to `log` (a pipe nobody reads would fill and block it)."""
    with open(log, "w") as f:
        return subprocess.Popen(args, cwd=cwd, env=child_env(**env), stdout=f, stderr=subprocess.STDOUT, text=True)


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not up after {timeout_s} s")


def stop(proc: subprocess.Popen) -> None:
    """Terminate a child we started (by its own handle)."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_api(project: Path, log: Path, *flags: str, **env: str) -> tuple[str, subprocess.Popen]:
    """`python -m iconforge.serve` in `project` on a free port, output to `log`: (base URL, process)."""
    port = free_port()
    proc = spawn([sys.executable, "-m", "iconforge.serve", "--port", str(port), *flags], project, log, **env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", proc, log)
    except BaseException:
        stop(proc)
        raise
    return url, proc
