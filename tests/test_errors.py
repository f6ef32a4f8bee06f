"""Every stage reports a problem the user can fix as one line naming the stage and the cause
(`<stage>: <file>: <reason>` for inputs, `<stage>: <key>: <reason>` for params), exit status 1,
no traceback."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, committed_text

MISSING = "missing (run the stage that writes it first)"
INDEX = ('{"size": 64, "steps": 4, "guidance": 3.5, "samples": [{"index": 0, "prompt": "p", "seed": 0, '
         '"files": {"base": "base/000.png", "lora": "lora/000.png", "svg": "svg/000.svg"}}]}')


def run(stage: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def one_line(out: subprocess.CompletedProcess, stage: str) -> str:
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{stage}: "), out.stderr
    return lines[0]


# (stage, files to make first: {path: content}, the expected line)
CASES = [
    ("filter_license", {}, f"filter_license: data/source.json: {MISSING}"),
    ("filter_license", {"data/source.json": '{"sha256": "0", "top_folder": "t", "commit": "c"}'},
     f"filter_license: data/manifest.csv: {MISSING}"),
    ("rasterize", {}, f"rasterize: data/filtered.csv: {MISSING}"),
    ("caption", {}, f"caption: data/filtered.csv: {MISSING}"),
    ("eda", {}, f"eda: data/source.json: {MISSING}"),
    ("eda", {"data/source.json": '{"source": "parquet"}'}, f"eda: data/filtered.csv: {MISSING}"),
    ("eda", {"data/source.json": "{}", "data/filtered.csv": "path,license\n"}, "eda: data/filtered.csv: missing column(s)"),
    ("base", {}, f"base: data/dataset/train: {MISSING}"),
    ("train_lora", {}, f"train_lora: data/dataset/train: {MISSING}"),
    ("train_lora", {"data/dataset/train/metadata.jsonl": ""}, f"train_lora: data/dataset/validation: {MISSING}"),
    ("train_lora", {"data/dataset/train/metadata.jsonl": "", "data/dataset/validation/metadata.jsonl": ""},
     f"train_lora: models/base/base.json: {MISSING}"),
    ("sample", {"models/lora/pytorch_lora_weights.safetensors": "", "models/run.json": '{"run_id": "abc"}'},
     f"sample: data/dataset/validation/metadata.jsonl: {MISSING}"),
    ("sample", {"models/lora/pytorch_lora_weights.safetensors": "", "models/run.json": '{"run_id": "abc"}',
                "data/dataset/validation/metadata.jsonl": '{"file_name": "a.png", "text": "t"}\n{oops\n'},
     "sample: data/dataset/validation/metadata.jsonl:2: not JSON"),
    ("sample", {"models/lora/pytorch_lora_weights.safetensors": ""}, f"sample: models/run.json: {MISSING}"),
    ("evaluate", {}, f"evaluate: samples/index.json: {MISSING}"),
    ("evaluate", {"samples/index.json": INDEX}, f"evaluate: models/run.json: {MISSING}"),
    ("evaluate", {"samples/index.json": INDEX, "models/run.json": "{truncated"},
     "evaluate: models/run.json: not valid JSON"),
    ("evaluate", {"samples/index.json": '{"samples": []}', "models/run.json": '{"run_id": "abc"}'},
     "evaluate: samples/index.json: missing field(s) size"),
]


@pytest.mark.parametrize("stage,files,line", CASES)
def test_missing_or_malformed_input_is_one_line_naming_the_file(tmp_path, stage, files, line):
    (tmp_path / "params.yaml").write_text(committed_text("params.yaml").replace("base: black-forest-labs/FLUX.1-dev",
                                                                                "base: tiny"), encoding="utf-8")
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    assert one_line(run(stage, tmp_path), stage).startswith(line)


@pytest.mark.parametrize("stage", ["fetch", "filter_license", "rasterize", "caption", "eda", "base", "train_lora",
                                   "sample", "card", "evaluate"])
def test_bad_params_are_one_line_naming_the_key(tmp_path, stage):
    (tmp_path / "params.yaml").write_text(committed_text("params.yaml")
                                          .replace("steps: 1000", "steps: -1").replace("size: 1024", "size: -1")
                                          .replace("retries: 3", "retries: -1")
                                          .replace("tiny_vae_steps: 0", "tiny_vae_steps: -1")
                                          .replace("val_fraction: 0.1", "val_fraction: 7")
                                          .replace('"{trigger}, {name}, {category}"', '"{oops}"')
                                          .replace("max_real_images: 256", "max_real_images: -1")
                                          .replace("max_bins: 20", "max_bins: 0"))
    one_line(run(stage, tmp_path), stage)
