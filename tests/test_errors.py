"""Every stage reports a problem the user can fix as one line naming the stage
and the cause, exit status 1, no traceback."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, committed_text


def run(stage: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("stage,message", [
    ("filter_license", "filter_license: data/manifest.csv: missing (run the stage that writes it first)"),
    ("caption", "caption: data/filtered.csv: missing (run the stage that writes it first)"),
])
def test_missing_input_is_one_line_naming_the_file(tmp_path, stage, message):
    (tmp_path / "params.yaml").write_text(committed_text("params.yaml"), encoding="utf-8")
    out = run(stage, tmp_path)
    assert out.returncode == 1 and out.stderr.strip() == message, out.stderr


@pytest.mark.parametrize("stage", ["fetch", "filter_license", "rasterize", "caption", "train_lora", "sample",
                                   "evaluate"])
def test_bad_params_are_one_line_naming_the_key(tmp_path, stage):
    (tmp_path / "params.yaml").write_text(committed_text("params.yaml")
                                          .replace("steps: 1000", "steps: -1").replace("size: 1024", "size: -1")
                                          .replace("retries: 3", "retries: -1")
                                          .replace("val_fraction: 0.1", "val_fraction: 7")
                                          .replace('"{trigger}, {name}, {category}"', '"{oops}"')
                                          .replace("max_real_images: 256", "max_real_images: -1"))
    out = run(stage, tmp_path)
    assert out.returncode == 1 and out.stderr.startswith(f"{stage}: "), out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
