"""What real runs hit, with real processes: a tracking server that is down before the run or goes away
in the middle of it (a real `mlflow server`, killed with SIGKILL and started again), a run deleted in the
MLflow UI, and a full disk (RLIMIT_FSIZE in the stage's process: with SIGXFSZ ignored, a write past the
limit fails with EFBIG, as one on a full disk fails with ENOSPC)."""
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from iconforge import paths
from iconforge.tracking import Tracker, TrackingError, read_run_json, resume_run, start_run, write_run_json
from mlflow_server import MlflowServer, free_port
from train_setup import PARAMS, leftovers, make_repo, stage_env

STEP_10 = paths.CHECKPOINTS / "step-00000010"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Started with the module: its start-up overlaps the first tests, which need no server."""
    s = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield s
    s.stop()


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death by signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def start_stage(repo: Path, uri: str, file_size_limit: int | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stages.train_lora"], cwd=repo, env=stage_env(uri),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_file_size_limit(file_size_limit) if file_size_limit else None)


def kill_when(p: subprocess.Popen, path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert path.exists(), "the run ended before it could be interrupted"


def last_line(stderr: str) -> str:
    return stderr.replace("\r", "\n").strip().splitlines()[-1]


def test_a_tracking_server_that_is_down_stops_the_stage_in_seconds_with_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))  # the check comes before any input is read
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    p = start_stage(tmp_path, url)
    _, err = p.communicate(timeout=120)
    took = time.monotonic() - t0
    assert p.returncode == 1 and "Traceback" not in err, err
    assert err.strip() == (f"train_lora: MLflow tracking server {url} does not answer (connection refused or no "
                           f"route): start it, or point MLFLOW_TRACKING_URI at a running one (unset, runs go to "
                           f"mlflow.db in the repo root)"), err
    assert took < 30, f"{took:.1f} s"  # mostly importing mlflow; MLflow's own retries took 256 s
    assert not (tmp_path / "models").exists()


def test_a_run_deleted_in_the_ui_gets_a_fresh_run(tmp_path, monkeypatch, capsys):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)
    with start_run("train_lora") as tracker:
        write_run_json(tracker, tmp_path / "run.json")
    first = tracker.run_id
    client = mlflow.MlflowClient(store)
    client.delete_run(first)

    with start_run("train_lora", first) as tracker:  # an interrupted training resuming its deleted run
        assert tracker.run_id != first
    assert f"MLflow run {first} of the interrupted training is deleted" in capsys.readouterr().err
    with resume_run(read_run_json(tmp_path / "run.json"), "sample") as linked:  # sample after training
        assert linked.run_id not in (first, tracker.run_id)
    assert client.get_run(linked.run_id).data.tags["iconforge.train_run_id"] == first

    client.delete_experiment(client.get_run(linked.run_id).info.experiment_id)
    with pytest.raises(TrackingError, match=r"^MLflow experiment 'iconforge' was deleted in .*: restore it"):
        with start_run("train_lora"):
            pass


def test_a_full_disk_stops_training_with_one_line_and_the_run_resumes_once_space_is_freed(server, tmp_path):
    url = server.wait()  # the store is a server: the limit concerns this machine's disk, not the store's
    repo = make_repo(tmp_path, steps=20)
    kill_when(start_stage(repo, url), repo / STEP_10)
    good = {f.name: f.read_bytes() for f in (repo / STEP_10).iterdir()}

    # Resumed with 32 KiB per file: the step-20 checkpoint (a 54 KiB optimizer state) does not fit.
    p = start_stage(repo, url, file_size_limit=32 * 1024)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 1 and "Traceback" not in err, err
    line = last_line(err)
    step_20 = paths.CHECKPOINTS / "step-00000020"
    assert line.startswith(f"train_lora: {step_20}: no space left to write it (File too large; "), line
    assert " MB needed, " in line and line.endswith("free space and rerun (finished outputs and checkpoints are intact)")
    assert {f.name: f.read_bytes() for f in (repo / STEP_10).iterdir()} == good  # the last good checkpoint
    assert sorted(p.name for p in (repo / paths.CHECKPOINTS).iterdir()) == [STEP_10.name]
    assert not (repo / "models/lora").exists() and leftovers(repo) == []

    p = start_stage(repo, url)  # space freed
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert "resuming from step 10" in err
    assert json.loads((repo / "metrics/train.json").read_text())["resumed_from_step"] == 10


def test_a_tracking_outage_mid_training_costs_nothing_and_is_caught_up(server, tmp_path):
    url = server.wait()
    repo = make_repo(tmp_path, log_every=1)  # a loss per step, stamped when the loop logged it
    p = start_stage(repo, url)
    deadline = time.monotonic() + 300
    while not (repo / STEP_10).exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    server.stop(signal.SIGKILL)  # gone without a word, as a crashed or unplugged server
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err  # training does not end ...
    assert (repo / "models/lora").is_dir() and len((repo / "metrics/loss.csv").read_text().splitlines()) == 41
    run_id = json.loads((repo / "models/run.json").read_text())["run_id"]
    record = repo / paths.MLFLOW_UNLOGGED / f"{run_id}.jsonl"
    assert record.exists() and f"kept in {record}" in last_line(err), err

    # Logging while the store is away never waits; the queue catches up once it is back.
    tracker = Tracker(mlflow.MlflowClient(url), url, run_id, "probe")
    t0 = time.monotonic()
    for step in range(50):
        tracker.log_metrics([(step, {"probe": float(step)})])
    assert time.monotonic() - t0 < 1
    server.start().wait()
    sync = subprocess.run([sys.executable, "-m", "iconforge.tracking", "sync"], cwd=repo, env=stage_env(url),
                          capture_output=True, text=True, timeout=300)
    assert sync.returncode == 0 and not record.exists(), sync.stderr
    tracker.close()

    client = mlflow.MlflowClient(url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.steps"] == "40"
    loss = sorted((m.step, m.timestamp) for m in client.get_metric_history(run_id, "loss"))
    assert [s for s, _ in loss] == list(range(1, 41))
    # ... nor stalls it: consecutive steps were logged (by the loop) less than 10 s apart, outage or not.
    assert max(b - a for (_, a), (_, b) in zip(loss, loss[1:])) < 10_000
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_loss")) == [15, 30, 40]
    assert {a.path for a in client.list_artifacts(run_id, "lora")} == {"lora/pytorch_lora_weights.safetensors",
                                                                       "lora/lora_kohya.safetensors"}
    assert len(client.get_metric_history(run_id, "probe")) == 50


def test_a_sync_cut_short_keeps_only_the_calls_not_sent(tmp_path, capsys):
    from iconforge.tracking import sync

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("iconforge")).info.run_id
    folder = tmp_path / "mlflow-unlogged"
    folder.mkdir()
    weights = folder / run_id / "2" / "lora.safetensors"  # the copy a stage kept beside its record
    ops = [{"kind": "params", "values": [["train.rank", "16"]]},
           {"kind": "metrics", "timestamp": 1000, "values": [[1, "loss", 0.5]]},
           {"kind": "artifact", "file": str(weights), "artifact_path": "lora"},
           {"kind": "end", "status": "FINISHED"}]
    record = folder / f"{run_id}.jsonl"
    record.write_text("".join(json.dumps({"uri": uri, **op}) + "\n" for op in ops))

    assert sync(folder) == 1  # the artifact's copy is missing: the two calls before it are sent, and only they
    assert [json.loads(line)["kind"] for line in record.read_text().splitlines()] == ["artifact", "end"]
    assert "2 of 4 calls sent, the rest not" in capsys.readouterr().err
    run = client.get_run(run_id)
    assert run.data.params == {"train.rank": "16"} and run.info.status == "RUNNING"

    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    assert sync(folder) == 0 and not record.exists() and not (folder / run_id).exists()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id, "lora")] == ["lora/lora.safetensors"]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 0.5)]
