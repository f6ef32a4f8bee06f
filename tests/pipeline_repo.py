"""A throwaway copy of this project as its own git + DVC repository, for tests
that run the real pipeline with real `dvc` commands.

The copy holds the project's files (tracked and not ignored), params.yaml with
demo.yaml's overrides at TEST_SIZES (fetch pointed at the sample snapshot by absolute path)
and any extra overrides, committed, so `dvc repro` / `dvc exp run` work in it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from iconforge import overrides
from conftest import ROOT, SAMPLE_ARCHIVE, WORKSPACE_OUTPUTS, committed_params


# demo.yaml's settings at test sizes: the demo trains for minutes so that learning shows; the
# pipeline tests need every stage to run, not to learn.
TEST_SIZES = {"model": {"tiny_vae_steps": 2}, "train": {"steps": 30, "checkpoint_every": 10},
              "sample": {"steps": 4, "num_val_prompts": 2}}
MODEL_STAGES = {"train_lora", "sample", "evaluate", "card"}
ALL_STAGES = {"fetch", "filter_license", "rasterize", "caption", "eda", "base"} | MODEL_STAGES


def ran_stages(dvc_output: str) -> set[str]:
    """The stages a `dvc repro` / `dvc exp run` actually ran, from its output."""
    return set(re.findall(r"Running stage '(\w+)'", dvc_output))


def env() -> dict[str, str]:
    """The test's environment with this venv first on PATH (stages run `python -m ...`)."""
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e.setdefault("GIT_AUTHOR_NAME", "iconforge tests")
    e.setdefault("GIT_AUTHOR_EMAIL", "tests@iconforge.invalid")
    e["GIT_COMMITTER_NAME"], e["GIT_COMMITTER_EMAIL"] = e["GIT_AUTHOR_NAME"], e["GIT_AUTHOR_EMAIL"]
    e.pop("MLFLOW_TRACKING_URI", None)  # each repo logs to its own mlflow.db unless a test says otherwise
    return e


def run(repo: Path, *cmd: str, extra_env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run a command in `repo`; on failure raise with its whole output."""
    out = subprocess.run(cmd, cwd=repo, env={**env(), **(extra_env or {})}, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out.stdout + out.stderr


def dvc(repo: Path, *args: str, **kw) -> str:
    return run(repo, sys.executable, "-m", "dvc", *args, **kw)


def git(repo: Path, *args: str) -> str:
    return run(repo, "git", *args)


def project_files() -> list[str]:
    """The project's files as the working tree has them (uncommitted code changes included), but
    none of what a run of the pipeline left there."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return sorted(f for f in listed if f and (ROOT / f).is_file() and not f.startswith(WORKSPACE_OUTPUTS))


def make_repo(dest: Path, extra: dict | None = None) -> Path:
    """Copy the project to `dest`, apply demo.yaml at TEST_SIZES (+ `extra`) to params.yaml, git init, dvc init,
    commit."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in project_files():
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    shutil.rmtree(dest / ".dvc", ignore_errors=True)  # a fresh DVC repo: no config, cache or lock of ours
    params = committed_params()
    demo = overrides.read(ROOT / "demo.yaml")
    demo["fetch"]["url"] = str(SAMPLE_ARCHIVE)
    params = overrides.merged(overrides.merged(overrides.merged(params, demo), TEST_SIZES), extra or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    git(dest, "init", "-q", "-b", "main")
    dvc(dest, "init", "-q")
    dvc(dest, "config", "core.analytics", "false")
    shutil.copy2(ROOT / ".dvc/plots.html", dest / ".dvc/plots.html")  # offline `dvc plots show`, as in ours
    shutil.copytree(ROOT / ".dvc/plots", dest / ".dvc/plots")  # the eda plots' Vega-Lite templates
    dvc(dest, "config", "plots.html_template", "plots.html")
    if (ROOT / "node_modules").is_dir():
        (dest / "node_modules").symlink_to(ROOT / "node_modules")  # the Vega scripts the template loads
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "pipeline under test")
    return dest
