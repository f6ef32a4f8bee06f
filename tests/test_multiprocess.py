"""train_lora under the real `accelerate launch` with 2 CPU processes (gloo): one process writes
everything, the two train on different shards, and the result is one adapter and one MLflow run."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import mlflow

from iconforge.tracking import EXPERIMENT
from train_setup import assert_adapter_changes_output, leftovers, make_repo, stage_env

STEPS, BATCH, ACCUM = 4, 2, 2


def free_port() -> int:
    """A free TCP port for the rendezvous (the default 29500 may be taken by a concurrent run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_train_one_adapter_into_one_run(tmp_path):
    repo = make_repo(tmp_path / "repo", steps=STEPS, batch_size=BATCH, grad_accum=ACCUM, checkpoint_every=2,
                     warmup_steps=0, lr=0.01)  # few steps, so no warmup and a larger lr to move the adapter
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "stages.train_lora"]
    r = subprocess.run(launch, cwd=repo, env={**stage_env(store), "ACCELERATE_USE_CPU": "1"}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    effective = 2 * BATCH * ACCUM
    # Only the main process encoded the data, reported and wrote metrics/train.json.
    assert r.stderr.count("train_lora: encoded ") == 1
    assert r.stderr.count(f"effective batch size {effective} = batch_size {BATCH} x grad_accum {ACCUM} x 2 process") == 1
    assert r.stdout.count(f"train_lora: {STEPS} steps on 6 images, effective batch {effective},") == 1, r.stdout
    m = json.loads((repo / "metrics/train.json").read_text())
    assert m["effective_batch_size"] == effective and m["steps"] == STEPS and m["resumed_from_step"] == 0
    assert len((repo / "metrics/loss.csv").read_text().splitlines()) == STEPS + 1
    assert m["val_loss"] > 0 and (repo / "metrics/val_loss.csv").read_text().splitlines()[-1].startswith(f"{STEPS},")
    assert not any((repo / "models/checkpoints").iterdir()) and leftovers(repo) == []

    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == json.loads((repo / "models/run.json").read_text())["run_id"]
    assert run.data.params["train.num_processes"] == "2"
    assert run.data.params["train.effective_batch_size"] == str(effective)
    assert run.data.metrics["train.effective_batch_size"] == effective
    assert sorted(h.step for h in client.get_metric_history(run.info.run_id, "loss")) == list(range(1, STEPS + 1))

    assert_adapter_changes_output(repo)
