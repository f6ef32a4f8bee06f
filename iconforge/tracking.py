"""MLflow tracking: where runs go, and one run shared by train_lora, sample and evaluate.

train_lora starts the run and writes models/run.json {tracking_uri,
experiment_id, run_id}; sample and evaluate log into that same run with
`resume_run()`. The store is `sqlite:///<repo root>/mlflow.db` unless
MLFLOW_TRACKING_URI says otherwise; artifacts of a sqlite store go to
<repo root>/mlartifacts. The repo root is the original repository also for
queued experiments (see repo_root.py), so their runs land beside the workspace
runs, tagged `dvc.exp_name`. View with `mlflow ui --backend-store-uri <uri>`.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from .atomic import write_json
from .repo_root import repo_root

EXPERIMENT = "iconforge"
RUN_JSON = Path("models/run.json")


def tracking_uri() -> str:
    """The MLflow store every stage logs to: MLFLOW_TRACKING_URI, else mlflow.db in the repo root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def _artifact_location(uri: str) -> str | None:
    """Artifacts beside a sqlite store (MLflow's default, ./mlruns of the cwd, would
    land in whatever folder a stage happens to run in); other stores decide themselves."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_tags(stage: str) -> dict[str, str]:
    tags = {"iconforge.stage": stage}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    if rev := git_revision():
        tags["mlflow.source.git.commit"] = rev
    return tags


def flat_params(*configs) -> dict[str, str]:
    """model.base, train.lr, ... as MLflow params (lists comma-joined)."""
    out = {}
    for cfg in configs:
        for k, v in asdict(cfg).items():
            out[f"{cfg.section}.{k}"] = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return out


def _experiment_id(client: mlflow.MlflowClient, uri: str) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(EXPERIMENT, artifact_location=_artifact_location(uri))
    except MlflowException:  # created meanwhile by a concurrent stage
        return client.get_experiment_by_name(EXPERIMENT).experiment_id


@contextlib.contextmanager
def start_run(stage: str, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Open `run_id` again if the store still has it (a resumed training), else a new run."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    if run_id is not None:
        try:
            client.get_run(run_id)
        except MlflowException:
            run_id = None
    exp_id = _experiment_id(client, uri)
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp_id, tags=run_tags(stage),
                          log_system_metrics=False) as run:
        yield run


def log_step_metrics(run_id: str, rows: list[tuple[int, dict[str, float]]]) -> None:
    """Per-step metrics in one batch: [(step, {name: value})]."""
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, step) for step, values in rows for k, v in sorted(values.items())]
    for i in range(0, len(metrics), 1000):  # MLflow's batch limit
        mlflow.MlflowClient().log_batch(run_id, metrics=metrics[i:i + 1000])


def write_run_json(run: mlflow.ActiveRun, path: Path = RUN_JSON) -> None:
    write_json(path, {"tracking_uri": mlflow.get_tracking_uri(), "experiment_id": run.info.experiment_id,
                      "run_id": run.info.run_id})


@contextlib.contextmanager
def resume_run(run_json_path: Path = RUN_JSON) -> Iterator[mlflow.ActiveRun]:
    """Log into the training run recorded in models/run.json (for sample and evaluate)."""
    info = json.loads(Path(run_json_path).read_text(encoding="utf-8"))
    mlflow.set_tracking_uri(info["tracking_uri"])
    with mlflow.start_run(run_id=info["run_id"], log_system_metrics=False) as run:
        yield run
