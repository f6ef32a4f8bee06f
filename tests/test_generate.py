"""The generator and its CLI on the tiny preset: per-seed reproducibility, trigger, strength,
progress and cancellation, the model of a git revision or DVC experiment, argument errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Iterator

import pytest
from safetensors.torch import load_file, save_file

from iconforge.errors import InputError
from iconforge.generate.__main__ import main as cli
from iconforge.generate.generator import Cancelled, Generator
from iconforge.generate.request import GenerateRequest
from iconforge.generate.source import open_source, sha256_file
from iconforge.paths import LORA_FILE

from serve_setup import EXPERIMENT, child_env, icon_project, trained  # noqa: F401

pytestmark = pytest.mark.xdist_group("generate")  # one worker loads the module's generator


@pytest.fixture(scope="module")
def generator(icon_project) -> Iterator[Generator]:  # noqa: F811
    with open_source(None, icon_project) as source:
        gen = Generator(source)
    yield gen
    gen.close()


def test_each_image_redraws_alone_from_its_seed(generator):
    steps = []
    four = generator.generate(generator.settings(GenerateRequest(prompt="zebrafish embryo", n=4, seed=7)),
                              progress=lambda done, total: steps.append((done, total)))
    assert [im.seed for im in four] == [7, 8, 9, 10]
    assert steps == [(i, 8) for i in range(1, 9)]  # 4 images x the revision's 2 sample steps
    assert len({im.png for im in four}) == 4
    for im in four:  # "again with this seed": n=1 gives the very same bytes, PNG and SVG
        again = generator.generate(generator.settings(GenerateRequest(prompt="zebrafish embryo", seed=im.seed)))
        assert (again[0].png, again[0].svg) == (im.png, im.svg)
        assert again[0].svg.startswith("<?xml") and "<path" in again[0].svg


def test_settings_fill_defaults_and_prepend_the_trigger(generator):
    s = generator.settings(GenerateRequest(prompt="zebrafish embryo", n=2))
    assert (s.prompt_sent, s.trigger, s.steps, s.guidance, s.size, s.strength) == \
        ("bioicons style, zebrafish embryo", "bioicons style", 2, 3.5, 64, 1.0)
    assert 0 <= s.seed and s.seeds == [s.seed, s.seed + 1]
    assert generator.settings(GenerateRequest(prompt="bioicons style, cell")).prompt_sent == "bioicons style, cell"
    record = generator.record(s)
    assert record["model"]["experiment"] == EXPERIMENT and record["model"]["revision"] == "workspace"
    assert record["model"]["adapter_sha256"] == sha256_file(generator.source.lora_file)


def test_strength_scales_the_adapter(generator):
    def png(strength: float) -> bytes:
        req = GenerateRequest(prompt="cell", seed=3, strength=strength, size=64)
        return generator.generate(generator.settings(req))[0].png

    base, half, full = png(0.0), png(0.5), png(1.0)
    assert len({base, half, full}) == 3
    assert png(1.0) == full  # and the adapter is back at full strength after another request


def test_cancel_stops_at_the_next_step(generator):
    seen = []
    s = generator.settings(GenerateRequest(prompt="cell", n=3, seed=1, steps=20))
    with pytest.raises(Cancelled):
        generator.generate(s, progress=lambda done, total: seen.append(done), cancelled=lambda: len(seen) >= 2)
    assert seen == [1, 2]
    with pytest.raises(Cancelled):  # cancelled before it started: no step at all
        generator.generate(s, progress=lambda done, total: seen.append(done), cancelled=lambda: True)
    assert seen == [1, 2]


def test_cli_same_arguments_same_bytes(icon_project, tmp_path, monkeypatch):  # noqa: F811
    """Once as a user runs it (a subprocess), once in-process: the same files, byte for byte."""
    args = ["zebrafish embryo", "-n", "2", "--seed", "7", "--out"]
    res = subprocess.run([sys.executable, "-m", "iconforge.generate", *args, str(tmp_path / "a")], cwd=icon_project,
                         env=child_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    monkeypatch.chdir(icon_project)
    cli([*args, str(tmp_path / "b")])
    outs = [{p.name: p.read_bytes() for p in sorted((tmp_path / run).iterdir())} for run in ("a", "b")]
    assert outs[0] == outs[1]
    assert sorted(outs[0]) == ["generation.json", "seed-7.png", "seed-7.svg", "seed-8.png", "seed-8.svg"]
    record = json.loads(outs[0]["generation.json"])
    assert {k: record[k] for k in ("prompt", "prompt_sent", "trigger", "seed", "seeds", "steps", "guidance", "size",
                                   "strength")} == {
        "prompt": "zebrafish embryo", "prompt_sent": "bioicons style, zebrafish embryo", "trigger": "bioicons style",
        "seed": 7, "seeds": [7, 8], "steps": 2, "guidance": 3.5, "size": 64, "strength": 1.0}
    assert record["model"]["revision"] == "workspace"
    assert record["model"]["adapter_sha256"] == sha256_file(icon_project / LORA_FILE)


@pytest.mark.parametrize("args, message", [
    (["x", "-n", "5"], "n: Input should be less than or equal to 4"),
    (["x", "--size", "100"], "size: Input should be a multiple of 16"),
    (["x", "--steps", "0"], "steps: Input should be greater than or equal to 1"),
    (["x", "--strength", "nan"], "strength: Input should be a finite number"),
    (["x", "--seed", "-3"], "seed: Input should be greater than or equal to 0"),
    (["\x07bell"], "prompt: contains a control or surrogate character (U+0007)"),
    (["x", "-n", "two"], "argument -n: invalid int value: 'two'"),
    (["x"], "the following arguments are required: --out"),
    (["x", "--sizee", "64"], "unrecognized arguments: --sizee 64"),
])
def test_cli_bad_arguments_one_line_exit_2(args, message, tmp_path):
    out = [] if "--out" in message else ["--out", str(tmp_path / "o")]
    res = subprocess.run([sys.executable, "-m", "iconforge.generate", *args, *out], cwd=tmp_path, env=child_env(),
                         capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout, res.stderr) == (2, "", f"generate: {message}\n")
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def rev_repo(icon_project, tmp_path_factory):  # noqa: F811
    """A git + DVC repo: HEAD has the project's adapter; experiment `half` has it at half the weights;
    the workspace keeps the `half` files (as after `dvc exp save`)."""
    repo = tmp_path_factory.mktemp("rev") / "repo"
    shutil.copytree(icon_project, repo)

    def run(*cmd):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True, env=child_env())

    run("git", "init", "-q")
    run("dvc", "init", "-q")
    run("dvc", "add", "-q", "models/base", "models/lora")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "v1")
    adapter = repo / LORA_FILE
    save_file({k: v * 0.5 for k, v in load_file(adapter).items()}, adapter)
    run("dvc", "add", "-q", "models/lora")
    run("dvc", "exp", "save", "-q", "-n", "half")
    return repo


def test_model_of_a_revision_or_experiment_without_checkout(rev_repo, tmp_path):
    workspace_bytes = (rev_repo / LORA_FILE).read_bytes()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=rev_repo, capture_output=True, text=True).stdout
    hashes = {}
    for rev in ("HEAD", "half"):
        with open_source(rev, rev_repo) as source:
            hashes[rev] = source.adapter_sha256
            assert (source.revision, source.trigger, source.experiment) == (rev, "bioicons style", EXPERIMENT)
            assert len(source.commit) == 40 and source.root.is_dir()
            root = source.root
        assert not root.exists()  # the copy is temporary
    assert hashes["half"] == sha256_file(rev_repo / LORA_FILE) != hashes["HEAD"]
    assert (rev_repo / LORA_FILE).read_bytes() == workspace_bytes  # nothing checked out
    assert subprocess.run(["git", "status", "--porcelain"], cwd=rev_repo, capture_output=True, text=True).stdout == status
    with pytest.raises(InputError, match="--rev nope: no such git revision or DVC experiment"):
        with open_source("nope", rev_repo):
            pass


def test_cli_with_rev(rev_repo, tmp_path, monkeypatch):
    monkeypatch.chdir(rev_repo)
    cli(["cell", "--seed", "5", "--rev", "HEAD", "--out", str(tmp_path / "head")])
    cli(["cell", "--seed", "5", "--rev", "half", "--out", str(tmp_path / "half")])
    records = [json.loads((tmp_path / r / "generation.json").read_text()) for r in ("head", "half")]
    assert [r["model"]["revision"] for r in records] == ["HEAD", "half"]
    assert records[0]["model"]["adapter_sha256"] != records[1]["model"]["adapter_sha256"]
    assert (tmp_path / "head/seed-5.png").read_bytes() != (tmp_path / "half/seed-5.png").read_bytes()
    with pytest.raises(SystemExit, match="generate: --rev nope: no such git revision"):
        cli(["cell", "--rev", "nope", "--out", str(tmp_path / "x")])
