"""train.quantize on the tiny preset: int8 (torchao) trains through the real loading path
(models/base/transformer with diffusers' TorchAoConfig), resumes byte-identically, and its adapter
loads into the unquantized base close to the one trained there; modes this machine cannot run are
refused before any work. Training runs in this process (train_setup.run_in_process)."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import iconforge.flux.train as train_module
from iconforge.config import ConfigError, TrainConfig, build
from iconforge.flux.quantize import check_runnable, delta_differences
from iconforge.flux.train import Data, params_hash
from iconforge.paths import LORA_FILE
from train_setup import PARAMS, assert_adapter_changes_output, leftovers, make_repo, run_in_process

# train_setup's recipe, shortened: two checkpoints, validation at each.
SHORT = dict(steps=12, checkpoint_every=6, val_every=6)
# Bound on the per-module relative difference of the weight deltas B @ A, int8 base vs full base:
# measured at most 0.018 at these settings (0.4% weight error; bench/RESULTS.md: quantized base).
MAX_DELTA_DIFFERENCE = 0.05


class Stop(Exception):
    """Ends a run right after a checkpoint, as a kill there would."""


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, store) -> dict[str, Path]:
    """The same run (seed, data, recipe) on the full and on the int8 base."""
    repos = {}
    for mode in ("none", "int8"):
        repos[mode] = make_repo(tmp_path_factory.mktemp(mode), quantize=mode, **SHORT)
        run_in_process(repos[mode], store)
    return repos


def adapter(repo: Path) -> Path:
    return repo / LORA_FILE


def test_int8_adapter_loads_into_the_unquantized_base(trained):
    m = json.loads((trained["int8"] / "metrics/train.json").read_text())
    assert m["steps"] == 12 and m["trainable_params"] == json.loads(
        (trained["none"] / "metrics/train.json").read_text())["trainable_params"]
    assert leftovers(trained["int8"]) == []
    assert_adapter_changes_output(trained["int8"])  # load_pipeline: the full-precision tiny base


def test_int8_adapter_is_close_to_the_full_base_one(trained):
    diff = delta_differences(adapter(trained["none"]), adapter(trained["int8"]))
    assert len(diff) == 7  # attention targets: q, k, v, out of the double block, q, k, v of the single one
    assert 0 < max(diff.values()) < MAX_DELTA_DIFFERENCE, diff  # > 0: the base really was quantized


def test_int8_stopped_run_resumes_to_the_same_bytes(trained, tmp_path, store, monkeypatch, capsys):
    repo = make_repo(tmp_path, quantize="int8", **SHORT)
    checkpoint = train_module._checkpoint

    def stop_after_first(run, step, run_id):
        checkpoint(run, step, run_id)
        raise Stop

    monkeypatch.setattr(train_module, "_checkpoint", stop_after_first)
    with pytest.raises(Stop):
        run_in_process(repo, store)
    assert not adapter(repo).exists() and (repo / "models/checkpoints/step-00000006").is_dir()
    monkeypatch.setattr(train_module, "_checkpoint", checkpoint)
    capsys.readouterr()
    run_in_process(repo, store)
    assert "resuming from step 6" in capsys.readouterr().err
    assert adapter(repo).read_bytes() == adapter(trained["int8"]).read_bytes()
    for f in ("loss.csv", "val_loss.csv"):
        assert (repo / "metrics" / f).read_bytes() == (trained["int8"] / "metrics" / f).read_bytes()


def test_quantize_is_part_of_the_resume_identity():
    cfg = build(TrainConfig, PARAMS["train"])
    data = Data([], [], [], None)
    assert params_hash(cfg, {}, data, 1) != params_hash(replace(cfg, quantize="int8"), {}, data, 1)


def test_nf4_on_a_machine_without_cuda_is_refused_before_any_work(tmp_path, store):
    if torch.cuda.is_available():
        pytest.skip("this machine can run nf4")
    repo = make_repo(tmp_path, quantize="nf4")
    shutil.rmtree(repo / "models/base")  # not even read: the refusal comes first
    with pytest.raises(ConfigError) as e:  # run_stage prints it as `train_lora: <message>` (tests/test_errors.py)
        run_in_process(repo, store)
    assert str(e.value) == "train.quantize: nf4 (bitsandbytes) needs a CUDA GPU; use none or int8 on this machine, got 'nf4'"
    assert not (repo / "models/lora").exists() and not (repo / ".cache").exists()


@pytest.mark.parametrize("mode,package,pin", [("int8", "torchao", "torchao==0.18.0"),
                                              ("nf4", "bitsandbytes", "bitsandbytes==0.50.2")])
def test_missing_backend_is_named_with_its_install_line(monkeypatch, mode, package, pin):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else find_spec(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the CUDA check passes: the package is next
    with pytest.raises(ConfigError, match=rf"^train\.quantize: {mode} needs the {package} package "
                                          rf"\(pip install {pin}\), which is not installed$"):
        check_runnable(mode)
