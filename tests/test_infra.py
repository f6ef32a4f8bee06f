"""The pipeline against real infrastructure on 127.0.0.1, no mocks: an
S3-compatible DVC remote (moto's server), an MLflow tracking server, and queued
DVC experiments that log to the repository's one MLflow store. Each test works
on its own copy of the reproduced tiny_repo."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
import mlflow
import pytest
import yaml
from moto.server import ThreadedMotoServer

from conftest import SAMPLE_ARCHIVE
from mlflow_server import MlflowServer
from iconforge import paths
from iconforge.tracking import tracking_uri
from pipeline_repo import MODEL_STAGES, dvc, git, ran_stages, run
from pipeline_repo import env as pipeline_env

# One xdist worker builds the session's tiny_repo and runs every test that copies it.
pytestmark = pytest.mark.xdist_group("tiny_repo")


# Credentials reach DVC only through the environment, never through a config file.
S3_ENV = {"AWS_ACCESS_KEY_ID": "iconforge-test-key", "AWS_SECRET_ACCESS_KEY": "iconforge-test-secret",
          "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "iconforge"
UP_TO_DATE = "Data and pipelines are up to date."


@pytest.fixture
def repo(tiny_repo, tmp_path) -> Path:
    """A private copy of the reproduced pipeline, free to change. Without tiny_repo's MLflow store:
    its experiment keeps tiny_repo's absolute artifact folder, which runs in the copy would write to."""
    return Path(shutil.copytree(tiny_repo, tmp_path / "repo", symlinks=True,
                                ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts")))


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a free port, with an empty bucket."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        boto3.client("s3", endpoint_url=url, aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
                     region_name=S3_ENV["AWS_DEFAULT_REGION"]).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="module", autouse=True)
def _mlflow_server_process(request, tmp_path_factory):
    """The module's MLflow server, started with the module, so its 10-30 s of start-up overlap the
    S3 test; `mlflow_server` waits for it."""
    if not any("mlflow_server" in item.fixturenames for item in request.session.items):
        yield None
        return
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mlflow_server(_mlflow_server_process) -> tuple[str, Path]:
    """(url, artifact folder) of the module's MLflow server, once it answers."""
    return _mlflow_server_process.wait(), _mlflow_server_process.artifacts


def test_push_to_s3_then_a_fresh_clone_pulls_everything_and_is_up_to_date(repo, s3_endpoint, tmp_path):
    dvc(repo, "remote", "add", "-d", "storage", f"s3://{BUCKET}/dvc")
    dvc(repo, "remote", "modify", "storage", "endpointurl", s3_endpoint)
    git(repo, "add", ".dvc/config")
    git(repo, "commit", "-q", "-m", "S3 remote")
    config = (repo / ".dvc" / "config").read_text(encoding="utf-8")
    assert s3_endpoint in config and not any(v in config for v in S3_ENV.values())
    assert not (repo / ".dvc" / "config.local").exists()

    dvc(repo, "push", extra_env=S3_ENV)
    # A fresh clone has no DVC cache and none of the DVC-cached outputs, only git's files.
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / ".dvc" / "cache").exists()
    assert not any((clone / p).exists() for p in ("data/raw", "data/raster_cache", "data/dataset", "models/checkpoints",
                                                  "samples", paths.LORA_FILE, paths.LORA_KOHYA_FILE, paths.CARD))

    dvc(clone, "pull", extra_env=S3_ENV)
    assert dvc(clone, "status").strip() == UP_TO_DATE
    out = dvc(clone, "repro")
    assert ran_stages(out) == set() and UP_TO_DATE in out, out
    adapter = "models/lora/pytorch_lora_weights.safetensors"
    assert (clone / adapter).read_bytes() == (repo / adapter).read_bytes()


def test_pipeline_logs_params_history_metrics_and_artifacts_to_an_mlflow_server(repo, mlflow_server):
    url, artifact_dir = mlflow_server
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    params["train"]["steps"] = 5  # new params: dvc repro reruns exactly the model stages
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    out = dvc(repo, "repro", extra_env={"MLFLOW_TRACKING_URI": url})
    assert ran_stages(out) == MODEL_STAGES, out

    info = json.loads((repo / "models" / "run.json").read_text(encoding="utf-8"))
    assert info["tracking_uri"] == url
    client = mlflow.MlflowClient(url)
    mlrun = client.get_run(info["run_id"])
    assert mlrun.data.params["train.rank"] == "16" and mlrun.data.params["train.steps"] == "5"
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "loss")] == [1, 2, 3, 4, 5]
    assert any(k.startswith("eval.") for k in mlrun.data.metrics), mlrun.data.metrics  # logged by evaluate

    # Artifacts went over HTTP into the server's store, not into a folder of the client.
    assert mlrun.info.artifact_uri.startswith("mlflow-artifacts:"), mlrun.info.artifact_uri
    assert {a.path for a in client.list_artifacts(mlrun.info.run_id)} >= {"lora", "samples", "metrics"}
    adapter = "lora/pytorch_lora_weights.safetensors"
    got = Path(client.download_artifacts(mlrun.info.run_id, adapter, str(repo.parent)))
    assert got.read_bytes() == (repo / "models" / adapter).read_bytes()
    assert [p.name for p in artifact_dir.rglob("grid.png")] == ["grid.png"]
    assert not (repo / "mlruns").exists()


def test_default_store_is_in_the_original_repo_when_dvc_runs_a_temp_copy(tmp_path, monkeypatch):
    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmp1234"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))  # what DVC sets for a queued experiment
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve()}/repo/mlflow.db"


def test_queued_experiments_log_to_the_repo_store_and_are_findable_both_ways(repo):
    """One queued experiment run with `--run-all` (two queue workers at once: the next test)."""
    # fetch.url relative to the repo root: queued runs happen in a copy under .dvc/tmp/exps/.
    relative_archive = os.path.relpath(SAMPLE_ARCHIVE, repo)
    dvc(repo, "exp", "run", "--queue", "-n", "rank8", "-S", "train.rank=8", "-S", f"fetch.url={relative_archive}")
    out = dvc(repo, "exp", "run", "--run-all")  # exits 0 even when an experiment fails: checked below
    assert ran_stages(out) == MODEL_STAGES | {"fetch"}, out

    shown = json.loads(dvc(repo, "exp", "show", "--json"))
    exps = {e["name"]: e["revs"][0] for commit in shown for e in commit.get("experiments") or []}
    assert set(exps) == {"rank8"}, shown
    exp = exps["rank8"]
    assert exp["error"] is None, exp["error"]
    assert exp["data"]["params"]["params.yaml"]["data"]["train"]["rank"] == 8
    assert exp["data"]["params"]["params.yaml"]["data"]["fetch"]["url"] == relative_archive
    metrics = exp["data"]["metrics"]
    assert metrics["metrics/train.json"]["data"]["steps"] == 30 and "lora" in metrics["metrics/eval.json"]["data"]

    # DVC experiment -> MLflow run: models/run.json is committed in the experiment.
    info = json.loads(git(repo, "show", f"{exp['rev']}:models/run.json"))
    assert info["tracking_uri"] is None  # the repo's own store, found again through DVC_ROOT
    # The store a workspace run logs to (test_pipeline checks that), not one in the deleted temp copy.
    client = mlflow.MlflowClient(f"sqlite:///{repo.resolve() / 'mlflow.db'}")
    mlrun = client.get_run(info["run_id"])
    assert mlrun.data.tags["dvc.exp_name"] == "rank8" and mlrun.data.params["train.rank"] == "8"
    assert any(k.startswith("eval.") for k in mlrun.data.metrics), mlrun.data.metrics
    assert mlrun.info.artifact_uri.startswith((repo / "mlartifacts").resolve().as_uri())
    assert {a.path for a in client.list_artifacts(mlrun.info.run_id)} >= {"lora", "samples", "metrics"}
    # MLflow run -> DVC experiment: the tag names it (`dvc exp apply <name>`).
    tagged = client.search_runs([mlrun.info.experiment_id], "tags.`dvc.exp_name` = 'rank8'")
    assert [r.info.run_id for r in tagged] == [info["run_id"]]
    assert len(client.search_runs([mlrun.info.experiment_id])) == 1


def queue_done(repo: Path, timeout: float = 900) -> str:
    """`dvc queue status` once no task is queued or running."""
    deadline = time.monotonic() + timeout
    while True:
        status = dvc(repo, "queue", "status")
        if not any(word in status for word in ("Queued", "Running")):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(2)


def test_two_queue_workers_log_to_one_server_and_a_second_repro_is_refused(repo, mlflow_server):
    url, _ = mlflow_server
    names = {"par4": 4, "par8": 8}
    for name, rank in names.items():
        dvc(repo, "exp", "run", "--queue", "-n", name, "-S", f"train.rank={rank}")
    dvc(repo, "queue", "start", "-j", "2", extra_env={"MLFLOW_TRACKING_URI": url})  # workers inherit it
    try:
        status = queue_done(repo)
    finally:
        dvc(repo, "queue", "stop")
    assert status.count("Success") == 2, status

    shown = json.loads(dvc(repo, "exp", "show", "--json"))
    exps = {e["name"]: e["revs"][0] for commit in shown for e in commit.get("experiments") or []}
    assert set(exps) == set(names) and all(e["error"] is None for e in exps.values()), shown
    client = mlflow.MlflowClient(url)
    for name, rank in names.items():
        info = json.loads(git(repo, "show", f"{exps[name]['rev']}:models/run.json"))
        mlrun = client.get_run(info["run_id"])
        assert info["tracking_uri"] == url and mlrun.info.status == "FINISHED"
        assert mlrun.data.tags["dvc.exp_name"] == name and mlrun.data.params["train.rank"] == str(rank)
        assert any(k.startswith("eval.") for k in mlrun.data.metrics), mlrun.data.metrics

    # Two `dvc repro` at once in one workspace: the second is refused by DVC's locks, the first finishes.
    first = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", "train_lora"],
                             cwd=repo, env={**pipeline_env(), "PYTHONUNBUFFERED": "1"}, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        while "Running stage 'train_lora'" not in (line := first.stdout.readline()):
            assert line, "the first repro ended before the second started"
        second = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=pipeline_env(),
                                capture_output=True, text=True, timeout=300)
        # Refused by DVC's repo lock if the first holds it at that moment, else by the lock on the paths of
        # the stage it runs (.dvc/tmp/rwlock), held while the stage's command runs.
        assert second.returncode != 0 and "Running stage" not in second.stdout, second.stdout + second.stderr
        assert "Unable to acquire lock" in second.stderr or "is busy, it is being blocked by" in second.stderr, \
            second.stderr
        rest = first.communicate(timeout=600)[0]
    finally:
        first.kill()
    assert first.returncode == 0, rest
    status = json.loads(dvc(repo, "status", "--json"))
    assert "train_lora" not in status and "changed outs" not in json.dumps(status), status
