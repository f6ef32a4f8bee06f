"""A real `mlflow server` on 127.0.0.1 for tests, which they may kill and start again on the same
port and store (a tracking outage), with a sqlite store and proxied artifact uploads."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, home: Path):
        self.home = home
        self.url = f"http://127.0.0.1:{free_port()}"
        self.artifacts = home / "artifacts"
        self.log = home / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        """Start it (returns at once: its 10-30 s of start-up may overlap other work; `wait` for it)."""
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1],
               "--workers", "1", "--backend-store-uri", f"sqlite:///{self.home / 'm.db'}",
               "--artifacts-destination", str(self.artifacts)]
        # No background job runner (GenAI scorers): it forks ~7 worker processes these tests do not need.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log, "ab") as log:
            # Own process group, so stopping it stops uvicorn and anything else the server started.
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait(self, timeout: float = 180) -> str:
        """Its URL, once it answers (~10 s idle; much longer on a loaded 2-core box)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{self.url}/health", timeout=2).ok:
                    return self.url
            except requests.ConnectionError:
                pass
            log = self.log.read_text(errors="replace")
            assert self.proc.poll() is None, f"mlflow server exited {self.proc.returncode}:\n{log}"
            assert time.monotonic() < deadline, f"mlflow server did not answer on {self.url}:\n{log}"
            time.sleep(0.25)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGKILL: the server vanishes as a crashed or unplugged one does)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
