"""Shared setup of the train_lora tests: a minimal repo on the tiny preset, the stage's
environment, and the check that a trained adapter really changes the base pipeline."""
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from iconforge.config import ModelConfig, build
from iconforge.flux.models import load_pipeline, resolve_base

from conftest import ROOT, committed_params

PARAMS = committed_params()
# Small but exercising the whole recipe: accumulation, warmup + cosine, caption dropout, alpha != rank.
TRAIN = dict(steps=40, resolution=64, batch_size=2, grad_accum=2, rank=4, alpha=8, lr=0.002,
             mixed_precision="no", gradient_checkpointing=False, checkpoint_every=10, caption_dropout=0.2,
             lr_scheduler="cosine", warmup_steps=5, targets="attention", val_every=15)
NAMES = ["cuvette", "flask", "mouse", "cell", "dna", "tube"]
VAL_NAMES = ["beaker", "pipette"]


def _write_split(split: Path, names: list[str], offset: int) -> None:
    rows = []
    for i, name in enumerate(names, offset):
        im = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
        ImageDraw.Draw(im).ellipse((8 + 6 * i, 12, 88, 84 - 5 * i), fill=(40 * i % 256, 120, 220 - 25 * i, 255))
        f = f"cc-0/Lab_apparatus/Servier/{name}.png"
        (split / f).parent.mkdir(parents=True, exist_ok=True)
        im.save(split / f)
        rows.append({"file_name": f, "text": f"bioicons style, {name}, Lab_apparatus"})
    (split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_repo(path: Path, model=None, **train) -> Path:
    """A minimal repo: params.yaml, a 6-image captioned train split, a 2-image validation split and the
    tiny base in models/base."""
    _write_split(path / "data/dataset/train", NAMES, 0)
    _write_split(path / "data/dataset/validation", VAL_NAMES, len(NAMES))
    params = {**PARAMS, "model": {**PARAMS["model"], "base": "tiny", **(model or {})},
              "train": {**PARAMS["train"], **TRAIN, **train}}
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    resolve_base(build(ModelConfig, params["model"]), path / "models/base", path / "data/dataset/train")  # as the base stage does
    return path


def run_in_process(repo: Path, store: str) -> None:
    """The stage's main() in this process (no import cost), from `repo`, logging to the MLflow `store`."""
    from accelerate.state import AcceleratorState, GradientState
    from stages import train_lora

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(repo)
        mp.setenv("MLFLOW_TRACKING_URI", store)
        try:
            train_lora.main()
        finally:  # accelerate's process-wide state, for the next run in this process
            AcceleratorState._reset_state(True)
            GradientState._reset_state()


def stage_env(store: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "MLFLOW_TRACKING_URI": store, "DVC_EXP_NAME": "pytest-exp"}


def assert_adapter_changes_output(repo: Path) -> None:
    """models/lora loads into the saved tiny FluxPipeline with load_lora_weights and changes its images."""
    pipe = load_pipeline(repo / "models/base")
    kw = dict(prompt="bioicons style, flask", num_inference_steps=2, height=64, width=64, output_type="np",
              max_sequence_length=64)
    base = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(repo / "models/lora")
    tuned = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    assert abs(tuned - base).max() > 1e-3


def leftovers(repo: Path) -> list[str]:
    """Temporary files or folders of interrupted atomic writes (hidden siblings) under models/ and metrics/."""
    return sorted(str(p.relative_to(repo)) for d in ("models", "metrics") for p in (repo / d).rglob(".*"))
