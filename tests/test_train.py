"""train_lora on the tiny preset: params checks, a loadable adapter, byte-stable and
resumable training, checkpoints emptied on success, MLflow records. Stage runs are
subprocesses with cwd = a tmp repo."""
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from iconforge.paths import ADAPTER_FILE, KOHYA_FILE
from iconforge.flux.lora_io import add_lora, canonicalize_safetensors, load_adapter_state
from iconforge.flux.models import load_pipeline
from iconforge.tracking import read_run_json, resume_run, tracking_uri
from iconforge.config import TARGET_PRESETS
from iconforge.flux.train import batch_indices
from train_setup import PARAMS, assert_adapter_changes_output, leftovers, make_repo, run_in_process, stage_env

NOTHING_ENCODED = "encoded 0 images and 0 captions"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def start_stage(cwd: Path, store: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stages.train_lora"], cwd=cwd, env=stage_env(store),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_stage(cwd: Path, store: str) -> subprocess.CompletedProcess:
    p = start_stage(cwd, store)
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def adapter_bytes(repo: Path) -> tuple[bytes, bytes]:
    return (repo / "models/lora" / ADAPTER_FILE).read_bytes(), (repo / "models/lora" / KOHYA_FILE).read_bytes()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, store) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("a"))
    r = run_stage(repo, store)
    assert r.returncode == 0, r.stderr[-3000:]
    return repo


def test_bad_params_fail_before_any_work(tmp_path, store):
    cases = {"train.rank": {"rank": 0}, "train.lr": {"lr": -0.001}, "train.targets": {"targets": "everything"}}
    procs = {}
    for key, c in cases.items():
        repo = make_repo(tmp_path / key, **c)
        procs[key] = (repo, start_stage(repo, store))
    for key, (repo, p) in procs.items():
        _, err = p.communicate(timeout=120)
        assert p.returncode == 1, err
        assert err.startswith(f"train_lora: {key}:") and "Traceback" not in err, err
        assert not (repo / "models/lora").exists() and not (repo / ".cache").exists()


def test_outputs_and_adapter_loads_into_flux_pipeline(trained):
    m = json.loads((trained / "metrics/train.json").read_text())
    assert m["steps"] == 40 and m["effective_batch_size"] == 4 and m["resumed_from_step"] == 0
    assert m["trainable_params"] > 0 and m["peak_memory_mb"] > 0 and m["images_per_s"] > 0
    lines = (trained / "metrics/loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss,lr" and len(lines) == 41
    # The validation loss every train.val_every (15) steps and at the end, the last one in train.json.
    val = [line.split(",") for line in (trained / "metrics/val_loss.csv").read_text().splitlines()]
    assert val[0] == ["step", "val_loss"] and [int(r[0]) for r in val[1:]] == [15, 30, 40]
    assert m["val_loss"] == float(val[-1][1]) > 0 and m["val_images"] == 2
    # 6 train + 2 validation images, their 8 captions and the empty one (caption dropout), encoded once.
    assert (m["cache_encoded_images"], m["cache_encoded_captions"], m["cache_reused_images"]) == (8, 9, 0)
    assert json.loads((trained / "models/base/base.json").read_text())["kind"] == "tiny"
    # Checkpoints and the encoding cache only serve an interrupted run: emptied once training succeeded.
    assert (trained / "models/checkpoints").is_dir() and not any((trained / "models/checkpoints").iterdir())
    assert leftovers(trained) == []
    assert_adapter_changes_output(trained)


def _transformer_out(transformer) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        return transformer(hidden_states=torch.randn(1, 16, 64, generator=g), timestep=torch.tensor([0.5]),
                           guidance=torch.tensor([1.0]), pooled_projections=torch.randn(1, 32, generator=g),
                           encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                           txt_ids=torch.zeros(8, 3), img_ids=torch.zeros(16, 3), return_dict=False)[0]


def test_alpha_other_than_rank_is_folded_into_the_file(trained):
    """alpha 8 / rank 4 travels folded into lora_B: diffusers loads it at scale 1.0 (alpha = rank) and
    acts exactly like the trained peft model (lora_B as trained, alpha 8)."""
    pipe = load_pipeline(trained / "models/base")
    pipe.load_lora_weights(trained / "models/lora")
    assert pipe.transformer.peft_config["default_0"].lora_alpha == 4
    loaded = _transformer_out(pipe.transformer)
    folded = {k.removeprefix("transformer."): v for k, v in load_file(trained / "models/lora" / ADAPTER_FILE).items()}
    as_trained = {k: v / 2 if ".lora_B." in k else v for k, v in folded.items()}  # alpha / rank = 2
    outs = {}
    for name, state in (("as trained", as_trained), ("scaled twice", folded)):
        t = load_pipeline(trained / "models/base").transformer
        add_lora(t, rank=4, alpha=8, target_modules=TARGET_PRESETS["attention"], seed=0)
        load_adapter_state(t, state)
        outs[name] = _transformer_out(t)
    assert torch.allclose(loaded, outs["as trained"], atol=1e-6)
    assert not torch.allclose(loaded, outs["scaled twice"], atol=1e-4)


@pytest.fixture
def in_process(store):
    """Run the stage's main() in this process (no import cost), from a given repo folder."""
    return lambda repo: run_in_process(repo, store)


def test_same_params_give_identical_bytes(trained, tmp_path, in_process, capsys):
    other = make_repo(tmp_path)
    for again in (False, True):  # a different process from the one that trained `trained`, then a re-run in place
        in_process(other)
        assert (NOTHING_ENCODED in capsys.readouterr().err) == again  # the re-run reuses every encoding
        assert adapter_bytes(other) == adapter_bytes(trained)
        for f in ("loss.csv", "val_loss.csv"):
            assert (other / "metrics" / f).read_bytes() == (trained / "metrics" / f).read_bytes()


def test_killed_run_resumes_to_the_same_bytes(trained, tmp_path, store, in_process, capsys):
    repo = make_repo(tmp_path)
    first = repo / "models/checkpoints/step-00000010"
    p = start_stage(repo, store)
    deadline = time.monotonic() + 120
    while not first.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert first.exists() and not (repo / "models/lora").exists(), "run was not interrupted mid-training"
    changed = Path(shutil.copytree(repo, tmp_path / "changed"))  # the same interrupted state, for below

    r = run_stage(repo, store)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((repo / "metrics/train.json").read_text())
    assert m["resumed_from_step"] >= 10 and f"resuming from step {m['resumed_from_step']}" in r.stderr
    assert NOTHING_ENCODED in r.stderr  # the interrupted run's encodings are reused
    assert adapter_bytes(repo) == adapter_bytes(trained)
    for f in ("loss.csv", "val_loss.csv"):
        assert (repo / "metrics" / f).read_bytes() == (trained / "metrics" / f).read_bytes()
    assert not any((repo / "models/checkpoints").iterdir()) and leftovers(repo) == []

    # Changed params: the checkpoints are not resumed, and the content-keyed cache is reused.
    resumable = max(int(d.name.split("-")[1]) for d in (changed / "models/checkpoints").glob("step-*"))
    params = yaml.safe_load((changed / "params.yaml").read_text())
    params["train"].update(steps=12, lr=0.001)
    (changed / "params.yaml").write_text(yaml.safe_dump(params))
    capsys.readouterr()
    in_process(changed)
    err = capsys.readouterr().err
    assert f"not resuming from step {resumable} (params or data changed)" in err
    assert NOTHING_ENCODED in err
    assert json.loads((changed / "metrics/train.json").read_text())["resumed_from_step"] == 0
    assert not any((changed / "models/checkpoints").iterdir()) and leftovers(changed) == []


def test_mlflow_run_holds_params_loss_history_and_adapter(trained, store, monkeypatch):
    info = json.loads((trained / "models/run.json").read_text())
    assert info["experiment"] == "iconforge" and info["tracking_uri"] is None  # nothing of this machine
    assert info["dvc_exp_name"] == "pytest-exp" and str(trained) not in json.dumps(info)
    client = mlflow.MlflowClient(store)
    run = client.get_run(info["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "iconforge"
    assert run.data.params["train.rank"] == "4" and run.data.params["model.base"] == "tiny"
    assert run.data.params["train.targets"] == "attention"
    assert run.data.tags["iconforge.stage"] == "train_lora" and run.data.tags["dvc.exp_name"] == "pytest-exp"
    history = client.get_metric_history(info["run_id"], "loss")
    assert sorted(m.step for m in history) == list(range(1, 41))
    # Throughput is measured over each log interval (train.log_every = 10): the loop syncs only there.
    assert sorted(m.step for m in client.get_metric_history(info["run_id"], "images_per_s")) == [10, 20, 30, 40]
    assert sorted(m.step for m in client.get_metric_history(info["run_id"], "val_loss")) == [15, 30, 40]
    assert sorted(a.path for a in client.list_artifacts(info["run_id"], "lora")) == [f"lora/{KOHYA_FILE}",
                                                                                    f"lora/{ADAPTER_FILE}"]

    # sample/evaluate log into the same run through models/run.json.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    with resume_run(read_run_json(trained / "models/run.json"), "evaluate") as tracker:
        assert tracker.run_id == info["run_id"]
        tracker.log_metrics([(0, {"eval.probe": 1.0})])
    assert client.get_run(info["run_id"]).data.metrics["eval.probe"] == 1.0


def test_default_store_is_sqlite_in_the_repo_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri() == "http://mlflow.example:5000"


def test_data_order_covers_every_example_each_epoch():
    n, batch = 6, 2
    order = [i for micro in range(9) for i in batch_indices(7, n, micro, batch)]
    for epoch in range(3):
        assert sorted(order[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert order[:n] != order[n:2 * n]  # reshuffled
    # Two processes split the stream without overlap.
    two = [batch_indices(7, n, m, batch, rank, 2) for m in range(3) for rank in (0, 1)]
    assert [i for b in two for i in b] == order[:12]


def test_canonical_safetensors_header(tmp_path):
    f = tmp_path / "x.safetensors"
    save_file({"b": torch.ones(3), "a": torch.arange(5.0)}, f, metadata={"z": "1", "format": "pt", "m": "2"})
    canonicalize_safetensors(f)
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0 and list(json.loads(raw[8:8 + n])["__metadata__"]) == ["format", "m", "z"]
    t = load_file(f)
    assert torch.equal(t["a"], torch.arange(5.0)) and torch.equal(t["b"], torch.ones(3))


def test_adamw8bit_without_bitsandbytes_is_refused_up_front():
    import importlib.util
    from iconforge.config import ConfigError, build, TrainConfig
    from iconforge.flux.train import preflight
    if importlib.util.find_spec("bitsandbytes"):
        pytest.skip("bitsandbytes is installed")
    cfg = build(TrainConfig, {**PARAMS["train"], "optimizer": "adamw8bit"})
    with pytest.raises(ConfigError, match="train.optimizer: adamw8bit needs the bitsandbytes package"):
        preflight(cfg)
