"""MLflow tracking: where runs go, and one run shared by train_lora, sample and evaluate.

train_lora starts the run and writes models/run.json {run_id, experiment,
tracking_uri, dvc_exp_name, git_commit}; sample and evaluate log into that same run with `resume_run()`.
The store is MLFLOW_TRACKING_URI if set, else `sqlite:///<repo root>/mlflow.db`
with artifacts in <repo root>/mlartifacts. The repo root is the original
repository also for queued experiments (paths.repo_root), so their runs land
beside the workspace runs, tagged `dvc.exp_name`. View with `mlflow ui
--backend-store-uri <uri>`.

run.json is committed with the experiment, so it holds nothing of one machine:
a tracking server's URL is kept, a local store is not (it is this clone's own).
On a clone whose store lacks the run (a fresh clone after `dvc pull`, another
machine), sample and evaluate start a new run linked to the training run by
the tag iconforge.train_run_id, instead of failing.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from iconforge.atomic import write_json
from iconforge.paths import MLFLOW_ARTIFACTS, MLFLOW_DB, repo_root
from iconforge.errors import InputError
from iconforge.tables import read_json

EXPERIMENT = "iconforge"
LINK_TAG = "iconforge.train_run_id"  # on a run that continues a training run this store lacks


def tracking_uri(recorded: str | None = None) -> str:
    """The MLflow store to log to: MLFLOW_TRACKING_URI, else the server a run record names,
    else mlflow.db in the repo root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or recorded or f"sqlite:///{repo_root() / MLFLOW_DB}"


def _is_server(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https", "databricks")


def _artifact_location(uri: str) -> str | None:
    """Artifacts beside a sqlite store (MLflow's default, ./mlruns of the cwd, would
    land in whatever folder a stage happens to run in); other stores decide themselves."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / MLFLOW_ARTIFACTS).as_uri()
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


def write_run_json(run: mlflow.ActiveRun, path: Path) -> None:
    uri = mlflow.get_tracking_uri()
    write_json(path, {"run_id": run.info.run_id, "experiment": EXPERIMENT,
                      "tracking_uri": uri if _is_server(uri) else None,
                      "dvc_exp_name": os.environ.get("DVC_EXP_NAME"), "git_commit": git_revision()})


def _find_run(client: mlflow.MlflowClient, uri: str, train_run_id: str) -> str | None:
    """The training run itself, else the newest run already linked to it (by sample, say), else None."""
    try:
        return client.get_run(train_run_id).info.run_id
    except MlflowException:
        pass
    linked = client.search_runs([_experiment_id(client, uri)], f"tags.`{LINK_TAG}` = '{train_run_id}'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    return linked[0].info.run_id if linked else None


def read_run_json(path: Path) -> dict:
    """models/run.json, checked before a stage does any work (a clear error, not one at the end)."""
    info = read_json(path, required=("run_id",))
    if not isinstance(info["run_id"], str) or not info["run_id"].isalnum():
        raise InputError(f"{path}: run_id must be an MLflow run id, got {info['run_id']!r}")
    return {**info, "path": str(path)}


@contextlib.contextmanager
def resume_run(info: dict, stage: str) -> Iterator[mlflow.ActiveRun]:
    """Log into the training run that models/run.json records (`read_run_json`; for sample and
    evaluate), or, where this store does not have it, into one new run linked to it that both share."""
    uri = tracking_uri(info.get("tracking_uri"))
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    run_id = _find_run(client, uri, info["run_id"])
    if run_id is not None:
        with mlflow.start_run(run_id=run_id, log_system_metrics=False) as run:
            yield run
        return
    with mlflow.start_run(experiment_id=_experiment_id(client, uri), log_system_metrics=False,
                          tags={**run_tags(stage), LINK_TAG: info["run_id"]}) as run:
        print(f"{stage}: MLflow run {info['run_id']} of {info['path']} is not in {uri} (a fresh clone or another "
              f"machine); logging to new run {run.info.run_id}, tagged {LINK_TAG}", file=sys.stderr)
        yield run
