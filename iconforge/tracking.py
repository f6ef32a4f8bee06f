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

Tracking never costs a stage its results. A tracking server is checked before
any work (`check_reachable`: one line within seconds if it is down). After
that every metric, param and artifact goes through a `Tracker`, whose
background thread sends them in order and retries a failing store; the stage
never waits for it until its end, and then at most FLUSH_S once the store
fails. What could not be sent is written to <repo root>/mlflow-unlogged/<run
id>.jsonl (artifacts copied beside it) and the stage says so in one line;
`python -m iconforge.tracking sync` sends it once the store is back.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

# MLflow's defaults (120 s per request, 7 retries with exponential backoff: ~4 min per call, measured
# stalling a run for 9 min) are read per request; a Tracker retries by itself, in the background, so
# each request is short and tried once. A user's own settings win.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

import mlflow  # noqa: E402  (after the settings above)
import requests  # noqa: E402
from mlflow.entities import Metric, Param, RunStatus  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from iconforge.atomic import write_json, write_text  # noqa: E402
from iconforge.paths import MLFLOW_ARTIFACTS, MLFLOW_DB, MLFLOW_UNLOGGED, repo_root  # noqa: E402
from iconforge.errors import InputError, StageError  # noqa: E402
from iconforge.tables import read_json  # noqa: E402

EXPERIMENT = "iconforge"
LINK_TAG = "iconforge.train_run_id"  # on a run that continues a training run this store lacks
REACH_TIMEOUT_S = 5  # the check before any work
RETRY_S = 2.0  # between attempts while the store fails
FLUSH_S = 10.0  # at the end of a stage: how long a failing store is waited for before what is left is written out
BATCH = 1000  # MLflow's limit of metrics per log_batch (params: 100)


class TrackingError(StageError):
    """The tracking store cannot be used at the start of a stage; the message says what to do."""


def tracking_uri(recorded: str | None = None) -> str:
    """The MLflow store to log to: MLFLOW_TRACKING_URI, else the server a run record names,
    else mlflow.db in the repo root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or recorded or f"sqlite:///{repo_root() / MLFLOW_DB}"


def _is_server(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https", "databricks")


def check_reachable(uri: str) -> None:
    """Before any work: a tracking server that does not answer is one line naming it, within seconds.
    Any HTTP answer counts (a proxy may guard /health); local stores need no check."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=REACH_TIMEOUT_S)
    except requests.RequestException as e:
        reason = type(e).__name__ if not isinstance(e, requests.ConnectionError) else "connection refused or no route"
        raise TrackingError(f"MLflow tracking server {uri} does not answer ({reason}): start it, or point "
                            f"MLFLOW_TRACKING_URI at a running one (unset, runs go to {MLFLOW_DB} in the repo root)"
                            ) from None


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
    if exp is None:
        try:
            return client.create_experiment(EXPERIMENT, artifact_location=_artifact_location(uri))
        except MlflowException:  # created meanwhile by a concurrent stage
            exp = client.get_experiment_by_name(EXPERIMENT)
    if exp.lifecycle_stage == "deleted":  # runs cannot be created in it
        raise TrackingError(f"MLflow experiment '{EXPERIMENT}' was deleted in {uri}: restore it (`mlflow experiments "
                            f"restore --experiment-id {exp.experiment_id}`) or remove it for good (`mlflow gc`)")
    return exp.experiment_id


def _live(client: mlflow.MlflowClient, run_id: str) -> bool:
    """Whether the store has `run_id` and it is not deleted (a deleted run cannot be logged to)."""
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException as e:
        if e.get_http_status_code() == 404:
            return False
        raise


def _unlogged_dir() -> Path:
    return repo_root() / MLFLOW_UNLOGGED


def _send(client: mlflow.MlflowClient, run_id: str, op: dict) -> None:
    """One queued call (a dict, so it can be written out as JSON and replayed by `sync`)."""
    kind = op["kind"]
    if kind == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, v, op["timestamp"], s) for s, k, v in op["values"]])
    elif kind == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in op["values"]])
    elif kind == "artifact":
        client.log_artifact(run_id, op["file"], op["artifact_path"])
    elif kind == "text":
        client.log_text(run_id, op["text"], op["artifact_file"])
    elif kind == "end":
        client.set_terminated(run_id, op["status"])
    else:
        raise ValueError(f"unknown tracking call {kind!r}")


def _permanent(e: Exception) -> bool:
    """A refusal retrying cannot change (a bad request), unlike an unreachable or overloaded store."""
    return isinstance(e, MlflowException) and 400 <= e.get_http_status_code() < 500 and e.get_http_status_code() != 429


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300]


class Tracker:
    """One MLflow run, logged to without ever blocking the caller.

    Calls are queued and return at once; a background thread sends them in order. A store that fails
    (down, timing out, overloaded) is retried every RETRY_S, so an outage costs nothing and the queue
    catches up when the store is back. close() waits for the queue, but once the store fails for
    FLUSH_S it writes what is left to <repo root>/mlflow-unlogged/ and says so.
    """

    def __init__(self, client: mlflow.MlflowClient, uri: str, run_id: str, stage: str):
        self.client, self.uri, self.run_id, self.stage = client, uri, run_id, stage
        self._ops: collections.deque[dict] = collections.deque()
        self._cond = threading.Condition()
        self._failing_since: float | None = None
        self._closed = False
        self.error: str | None = None  # the last failure, for the report
        self.refused: list[str] = []  # calls the store refused for good (not retried)
        self._thread = threading.Thread(target=self._work, name=f"mlflow-{stage}", daemon=True)
        self._thread.start()

    def _put(self, op: dict) -> None:
        with self._cond:
            self._ops.append(op)
            self._cond.notify_all()

    def log_metrics(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """[(step, {name: value})], in batches of MLflow's limit."""
        now = int(time.time() * 1000)
        values = [(step, k, float(v)) for step, d in rows for k, v in sorted(d.items())]
        for i in range(0, len(values), BATCH):
            self._put({"kind": "metrics", "timestamp": now, "values": values[i:i + BATCH]})

    def log_params(self, params: dict[str, object]) -> None:
        items = sorted((k, str(v)) for k, v in params.items())
        for i in range(0, len(items), 100):
            self._put({"kind": "params", "values": items[i:i + 100]})

    def log_artifact(self, file: Path, artifact_path: str) -> None:
        """`file` must stay as it is until close() (stage outputs do)."""
        self._put({"kind": "artifact", "file": str(Path(file).resolve()), "artifact_path": artifact_path})

    def log_text(self, text: str, artifact_file: str) -> None:
        self._put({"kind": "text", "text": text, "artifact_file": artifact_file})

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._ops and not self._closed:
                    self._cond.wait()
                if not self._ops:
                    return
                op = self._ops[0]
            try:
                _send(self.client, self.run_id, op)
            except Exception as e:  # whatever the store raises: the run goes on
                with self._cond:
                    if _permanent(e):
                        self.refused.append(f"{op['kind']}: {_one_line(e)}")
                    else:
                        self.error = _one_line(e)
                        self._failing_since = self._failing_since or time.monotonic()
                        retry = time.monotonic() + RETRY_S  # new calls do not hasten it; close() does
                        while not self._closed and time.monotonic() < retry:
                            self._cond.wait(retry - time.monotonic())
                        continue
            with self._cond:
                if self._ops and self._ops[0] is op:  # close() may have written it out meanwhile
                    self._ops.popleft()
                self._failing_since = None
                self._cond.notify_all()

    def close(self, status: str = "FINISHED") -> None:
        """End the run: wait for the queue, or write what is left out after FLUSH_S of failures."""
        self._put({"kind": "end", "status": status})
        with self._cond:
            while self._ops and (self._failing_since is None or time.monotonic() - self._failing_since < FLUSH_S):
                self._cond.wait(0.2)
            left, self._closed = list(self._ops), True
            self._ops.clear()
            self._cond.notify_all()
        if left:
            print(f"{self.stage}: MLflow {self.uri} failed ({self.error}); {self._write_out(left)}", file=sys.stderr)
        for r in self.refused:
            print(f"{self.stage}: MLflow {self.uri} refused {r}", file=sys.stderr)

    def _write_out(self, ops: list[dict]) -> str:
        """The calls not sent, as <run id>.jsonl (artifacts copied into <run id>/); returns the report."""
        folder = _unlogged_dir()
        for i, op in enumerate(ops):
            if op["kind"] == "artifact":  # the file may be gone when `sync` runs (a queued run's temp copy)
                copy = folder / self.run_id / str(i) / Path(op["file"]).name
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(op["file"], copy)
                op = {**op, "file": str(copy)}
            ops[i] = op
        record = folder / f"{self.run_id}.jsonl"
        old = record.read_text(encoding="utf-8") if record.exists() else ""
        write_text(record, old + "".join(json.dumps({"uri": self.uri, **op}) + "\n" for op in ops))
        kinds = collections.Counter(op["kind"] for op in ops)
        return (f"not logged: {kinds['metrics']} metric batches, {kinds['artifact'] + kinds['text']} artifacts, "
                f"{kinds['params']} param batches, kept in {record}; when the store is back, send them with "
                f"`python -m iconforge.tracking sync`")


def sync(folder: Path | None = None) -> int:
    """Send what stages could not log (mlflow-unlogged/); a record loses each call once it is sent, so a
    sync cut short sends only the rest next time. Returns how many records are left (stores unreachable)."""
    folder = folder or _unlogged_dir()
    left = 0
    for record in sorted(folder.glob("*.jsonl")):
        run_id = record.stem
        lines = record.read_text(encoding="utf-8").splitlines()
        for sent, line in enumerate(lines):
            try:
                op = json.loads(line)
                _send(mlflow.MlflowClient(op["uri"]), run_id, op)
            except Exception as e:
                write_text(record, "".join(x + "\n" for x in lines[sent:]))  # what was sent is not sent again
                print(f"{record}: {sent} of {len(lines)} calls sent, the rest not ({_one_line(e)}); try again later",
                      file=sys.stderr)
                left += 1
                break
        else:
            record.unlink()
            shutil.rmtree(folder / run_id, ignore_errors=True)
            print(f"{record}: sent to run {run_id}", file=sys.stderr)
    return left


@contextlib.contextmanager
def _tracked(client: mlflow.MlflowClient, uri: str, run_id: str, stage: str) -> Iterator[Tracker]:
    tracker = Tracker(client, uri, run_id, stage)
    try:
        yield tracker
    except BaseException:
        tracker.close(RunStatus.to_string(RunStatus.FAILED))
        raise
    tracker.close()


@contextlib.contextmanager
def _store_errors(uri: str) -> Iterator[None]:
    """The calls that open a run are made before any work: a failing store there is one line."""
    try:
        yield
    except MlflowException as e:
        raise TrackingError(f"MLflow {uri}: {_one_line(e)}") from None


@contextlib.contextmanager
def start_run(stage: str, run_id: str | None = None) -> Iterator[Tracker]:
    """Open `run_id` again if the store still has it (a resumed training), else a new run."""
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    with _store_errors(uri):
        if run_id is not None and not _live(client, run_id):
            print(f"{stage}: MLflow run {run_id} of the interrupted training is deleted or not in {uri}; "
                  f"logging to a new run", file=sys.stderr)
            run_id = None
        if run_id is None:
            run_id = client.create_run(_experiment_id(client, uri), tags=run_tags(stage)).info.run_id
        else:
            client.update_run(run_id, RunStatus.to_string(RunStatus.RUNNING))
    with _tracked(client, uri, run_id, stage) as tracker:
        yield tracker


def write_run_json(tracker: Tracker, path: Path) -> None:
    write_json(path, {"run_id": tracker.run_id, "experiment": EXPERIMENT,
                      "tracking_uri": tracker.uri if _is_server(tracker.uri) else None,
                      "dvc_exp_name": os.environ.get("DVC_EXP_NAME"), "git_commit": git_revision()})


def _find_run(client: mlflow.MlflowClient, uri: str, train_run_id: str) -> str | None:
    """The training run itself, else the newest run already linked to it (by sample, say), else None;
    deleted runs do not count."""
    if _live(client, train_run_id):
        return train_run_id
    linked = client.search_runs([_experiment_id(client, uri)], f"tags.`{LINK_TAG}` = '{train_run_id}'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    return linked[0].info.run_id if linked else None


def read_run_json(path: Path) -> dict:
    """models/run.json, checked before a stage does any work (a clear error, not one at the end)."""
    info = read_json(path, required=("run_id",))
    if not isinstance(info["run_id"], str) or not info["run_id"].isalnum():
        raise InputError(f"{path}: run_id must be an MLflow run id, got {info['run_id']!r}")
    return {**info, "path": str(path)}


def check_run_store(info: dict) -> None:
    """The reachability check for a stage that logs into the run of models/run.json (`read_run_json`)."""
    check_reachable(tracking_uri(info.get("tracking_uri")))


@contextlib.contextmanager
def resume_run(info: dict, stage: str) -> Iterator[Tracker]:
    """Log into the training run that models/run.json records (`read_run_json`; for sample and
    evaluate), or, where this store does not have it (or it was deleted), into one new run linked
    to it that both share."""
    uri = tracking_uri(info.get("tracking_uri"))
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    with _store_errors(uri):
        run_id = _find_run(client, uri, info["run_id"])
        if run_id is None:
            run_id = client.create_run(_experiment_id(client, uri),
                                       tags={**run_tags(stage), LINK_TAG: info["run_id"]}).info.run_id
            print(f"{stage}: MLflow run {info['run_id']} of {info['path']} is not in {uri} (deleted, a fresh clone "
                  f"or another machine); logging to new run {run_id}, tagged {LINK_TAG}", file=sys.stderr)
        else:
            client.update_run(run_id, RunStatus.to_string(RunStatus.RUNNING))
    with _tracked(client, uri, run_id, stage) as tracker:
        yield tracker


if __name__ == "__main__":
    if sys.argv[1:] != ["sync"]:
        sys.exit("usage: python -m iconforge.tracking sync   (send what stages could not log to MLflow)")
    sys.exit(1 if sync() else 0)
