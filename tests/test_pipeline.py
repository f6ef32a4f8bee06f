"""The whole pipeline through real DVC in a throwaway git+DVC repo (tiny preset,
sample snapshot): every icon accounted for, a clean `dvc status`, experiments
that rerun only what their params touch, byte-identical reruns, MLflow runs."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import FULL_ARCHIVE, ROOT, needs_full
import pipeline_repo
from iconforge import paths
from iconforge.config import KNOWN_LICENSES, parse_params
from pipeline_repo import ALL_STAGES, MODEL_STAGES, dvc, make_repo, ran_stages

# One xdist worker builds the session's tiny_repo and runs every test that copies it.
pytestmark = pytest.mark.xdist_group("tiny_repo")


FULL_SHA256 = "e9020da5bba55f58af08b97879ec7ddd02e6cba0034047b53a6cd17868f7e46d"


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def digests(root: Path, pattern: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.glob(pattern)) if p.is_file()}


@pytest.fixture
def repo(tiny_repo, tmp_path) -> Path:
    """A private copy of the reproduced pipeline, free to change (without tiny_repo's
    MLflow store, whose experiment keeps its artifacts in tiny_repo)."""
    return Path(shutil.copytree(tiny_repo, tmp_path / "repo", symlinks=True,
                                ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts")))


def test_full_pipeline_is_reproduced_and_up_to_date(tiny_repo):
    assert "Data and pipelines are up to date" in dvc(tiny_repo, "status")
    lock = (tiny_repo / "dvc.lock").read_text(encoding="utf-8")
    assert all(f"  {stage}:" in lock for stage in ALL_STAGES)


def test_every_icon_is_used_or_rejected_with_a_reason(tiny_repo):
    data = tiny_repo / "data"
    manifest = {r["path"] for r in rows(data / "manifest.csv")}
    assert len(manifest) == len(list((data / "raw").rglob("*.svg"))) == 212

    kept = {r["path"]: r for r in rows(data / "filtered.csv")}
    filter_rejects = {r["path"]: r["reason"] for r in rows(data / "filter_rejects.csv")}
    assert set(kept) | set(filter_rejects) == manifest and not set(kept) & set(filter_rejects)
    assert all(reason for reason in filter_rejects.values())

    raster_rejects = {r["path"]: r["reason"] for r in rows(data / "raster_rejects.csv")}
    pngs = {str(p.relative_to(data / "png").with_suffix(".svg")) for p in (data / "png").rglob("*.png")}
    assert pngs | set(raster_rejects) == set(kept) and not pngs & set(raster_rejects)
    assert {raster_rejects[p] for p in raster_rejects if p.endswith("/virus.svg")} == {"empty file"}

    dataset = {split: jsonl(data / "dataset" / split / "metadata.jsonl") for split in ("train", "validation")}
    assert sum(map(len, dataset.values())) == len(pngs)
    for split, records in dataset.items():
        for r in records:
            assert r["split"] == split and r["text"].startswith("bioicons style, ")
            image = data / "dataset" / split / r["file_name"]
            assert image.is_file() and image.with_suffix(".txt").read_text(encoding="utf-8") == r["text"]
    # No variant group on both sides of the split.
    groups = {split: {r["group"] for r in records} for split, records in dataset.items()}
    assert groups["train"] and groups["validation"] and not groups["train"] & groups["validation"]

    # Every kept icon that needs credit is credited, in the CSV and in ATTRIBUTION.md.
    credits = {r["path"]: r for r in rows(data / "credits.csv")}
    needing = {p for p, r in kept.items() if r["license"] != "cc-0"}
    assert needing <= set(credits)
    attribution = (data / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert all(credits[p]["source_url"] in attribution for p in needing)

    metrics = json.loads((tiny_repo / "metrics" / "data.json").read_text(encoding="utf-8"))
    assert metrics["dataset"]["images"] == len(pngs)
    assert metrics["dataset"]["by_split"] == {s: len(r) for s, r in dataset.items()}


CHROMIUM = shutil.which("chromium")
VEGA = ROOT / "node_modules/vega/build/vega.min.js"


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed (.ci/run installs it)")
@pytest.mark.skipif(not VEGA.exists(), reason="node_modules absent: `make setup` runs npm ci")
def test_dvc_plots_draw_offline_in_a_real_browser(repo, tmp_path):
    """`dvc plots show` loads Vega from node_modules (.dvc/plots.html), not a CDN: headless Chromium with
    no network draws the loss curves, and the sample grid is on the page."""
    dvc(repo, "plots", "show")
    html = (repo / "dvc_plots/index.html").read_text(encoding="utf-8")
    assert "cdn.jsdelivr.net" not in html and "../node_modules/vega/build/vega.min.js" in html
    assert "grid.png" in html
    shot = tmp_path / "plots.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400", "--virtual-time-budget=10000",
                    f"--screenshot={shot}", (repo / "dvc_plots/index.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    # Vega plots come first, images (the grid) after them. Vega draws series in saturated colours;
    # an undrawn page is white with black text at most.
    top = rgb[:450]
    coloured = (top.max(axis=2) - top.min(axis=2)) > 60
    assert coloured.sum() > 1000, f"no plot drawn ({coloured.sum()} coloured pixels): {shot}"


def test_model_outputs_and_mlflow_run(tiny_repo):
    assert (tiny_repo / "models" / "lora" / "pytorch_lora_weights.safetensors").stat().st_size > 0
    assert not any((tiny_repo / "models" / "checkpoints").iterdir()), "checkpoints are emptied after success"
    index = json.loads((tiny_repo / "samples" / "index.json").read_text(encoding="utf-8"))
    assert (tiny_repo / "samples" / "grid.png").is_file() and len(list((tiny_repo / "samples" / "svg").glob("*.svg")))
    assert len(index["samples"]) == len(list((tiny_repo / "samples" / "lora").glob("*.png"))) == 6
    evaluation = json.loads((tiny_repo / "metrics" / "eval.json").read_text(encoding="utf-8"))
    assert evaluation["smoke"] is True and {"base", "lora", "real"} <= set(evaluation)

    run_info = json.loads((tiny_repo / "models" / "run.json").read_text(encoding="utf-8"))
    assert run_info["tracking_uri"] is None  # the repo's own store: nothing of this machine in a committed file
    client = mlflow.MlflowClient(f"sqlite:///{tiny_repo / 'mlflow.db'}")
    run = client.get_run(run_info["run_id"])
    assert run.data.params["train.rank"] == "16" and run.data.params["model.base"] == "tiny"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, 31))
    assert any(k.startswith("eval.") for k in run.data.metrics), run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"lora", "samples"} <= artifacts, artifacts


def test_model_card_and_registered_artifact(tiny_repo):
    from huggingface_hub import ModelCard

    lora = tiny_repo / "models" / "lora"
    assert sorted(p.name for p in lora.iterdir() if not p.name.startswith(".")) == [
        "ATTRIBUTION.md", "README.md", "grid.png", "lora_kohya.safetensors", "pytorch_lora_weights.safetensors"]
    card = ModelCard.load(lora / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "diffusers" and meta["instance_prompt"] == "bioicons style"
    assert meta["license"] == "other" and "lora" in meta["tags"] and meta["widget"][0]["output"]["url"] == "grid.png"
    run_id = json.loads((tiny_repo / "models" / "run.json").read_text(encoding="utf-8"))["run_id"]
    assert run_id in card.text and "ATTRIBUTION.md" in card.text and "Test build" in card.text
    assert (lora / "ATTRIBUTION.md").read_bytes() == (tiny_repo / "data" / "ATTRIBUTION.md").read_bytes()
    from dvc.repo import Repo
    declared = {name: art for arts in Repo(str(tiny_repo)).artifacts.read().values() for name, art in arts.items()}
    assert declared["iconforge-lora"].type == "model" and "lora" in declared["iconforge-lora"].labels


def test_registered_adapter_version_is_found_through_dvc_api(repo):
    import dvc.api

    pipeline_repo.git(repo, "tag", "-a", "iconforge-lora@v1.0.0", "-m", "register the adapter")  # what `gto register` does
    shown = dvc.api.artifacts_show("iconforge-lora", repo=str(repo))
    assert shown["path"] == paths.LORA_FILE.as_posix(), shown
    assert shown["rev"] == pipeline_repo.git(repo, "rev-parse", "HEAD").strip()


def test_rank_experiment_reruns_only_the_model_stages_and_changes_metrics(repo):
    out = dvc(repo, "exp", "run", "-n", "rank32", "-S", "train.rank=32")
    assert ran_stages(out) == MODEL_STAGES, out
    lock = (repo / "dvc.lock").read_text(encoding="utf-8")
    assert "rank: 32" in lock
    # The encodings of the first run are reused from the shared cache (.cache/encodings, outside DVC).
    assert "train_lora: encoded 0 images and 0 captions" in out, out
    m = json.loads((repo / "metrics/train.json").read_text())
    assert (m["cache_encoded_images"], m["cache_encoded_captions"]) == (0, 0) and m["cache_reused_images"] > 0

    diff = json.loads(dvc(repo, "metrics", "diff", "HEAD", "--json"))
    changed = {name for path in diff.values() for name in path}
    assert "final_loss" in changed and "lora.cmmd" in changed, diff

    shown = json.loads(dvc(repo, "exp", "show", "--json"))
    names = {e.get("name") for commit in shown for e in commit.get("experiments") or []}
    assert "rank32" in names, shown


def set_params(repo: Path, **values) -> None:
    """Edit params.yaml as `dvc exp run -S` would, e.g. set_params(repo, train__lr=0.002)."""
    params = parse_params((repo / "params.yaml").read_text(encoding="utf-8"))
    for key, value in values.items():
        section, name = key.split("__")
        params[section][name] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def changed_stages(repo: Path) -> set[str]:
    """The stages `dvc status` reports changed (downstream ones follow when their deps change)."""
    return set(json.loads(dvc(repo, "status", "--json")))


OPERATIONAL = {"fetch__timeout_s": 5, "fetch__retries": 1, "rasterize__workers": 1, "rasterize__timeout_s": 30,
               "rasterize__max_memory_mb": 1024, "train__checkpoint_every": 7, "train__log_every": 3, "train__cache_max_gb": 7}


def test_operational_knobs_rerun_nothing(repo):
    set_params(repo, **OPERATIONAL)
    assert changed_stages(repo) == set()
    pipeline_repo.git(repo, "checkout", "params.yaml")
    out = dvc(repo, "exp", "run", *[a for k, v in OPERATIONAL.items() for a in ("-S", f"{k.replace('__', '.')}={v}")])
    assert ran_stages(out) == set(), out


@pytest.mark.parametrize("key,value", [("train__lr", 0.00123), ("train__rank", 8), ("train__steps", 20)])
def test_a_training_param_changes_train_lora_and_nothing_upstream(repo, key, value):
    set_params(repo, **{key: value})
    assert changed_stages(repo) == {"train_lora", "card"}  # the card lists the training settings


def test_a_sampling_param_reruns_exactly_sample_and_downstream(repo):
    """(A training param's run: the rank experiment above.)"""
    set_params(repo, sample__steps=3)
    assert changed_stages(repo) == {"sample"}
    pipeline_repo.git(repo, "checkout", "params.yaml")
    out = dvc(repo, "exp", "run", "-S", "sample.steps=3")
    assert ran_stages(out) == {"sample", "evaluate", "card"}, out


def test_fresh_clone_pulls_and_reruns_sample_logging_to_its_own_store(repo, tmp_path):
    """models/run.json names a run of the original repo's store; a clone has none of it."""
    dvc(repo, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    pipeline_repo.git(repo, "commit", "-qam", "local remote")
    dvc(repo, "push")
    clone = tmp_path / "clone"
    pipeline_repo.run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    dvc(clone, "pull")
    assert "Data and pipelines are up to date" in dvc(clone, "status")
    record = (clone / "models" / "run.json").read_text(encoding="utf-8")
    assert str(repo) not in record and str(tmp_path) not in record

    set_params(clone, sample__steps=3)
    out = dvc(clone, "repro")
    assert ran_stages(out) == {"sample", "evaluate", "card"}, out
    train_run = json.loads(record)["run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`iconforge.train_run_id` = '{train_run}'")
    assert len(runs) == 1, runs  # sample started it, evaluate found it
    assert "eval.lora.clip_score" in runs[0].data.metrics
    assert "samples" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}


def test_forced_rerun_gives_byte_identical_pngs_adapter_and_samples(repo):
    outputs = ("data/png/**/*.png", "models/lora/*", "samples/**/*.png")
    before = {k: v for pattern in outputs for k, v in digests(repo, pattern).items()}
    shutil.rmtree(repo / "data" / "raster_cache")  # render every icon again, in another worker order
    out = dvc(repo, "repro", "--force", "--single-item", "rasterize", "train_lora", "sample")
    assert ran_stages(out) == {"rasterize", "train_lora", "sample"}, out
    assert {k: v for pattern in outputs for k, v in digests(repo, pattern).items()} == before


def test_bad_param_stops_train_lora_naming_the_key(repo):
    with pytest.raises(AssertionError, match=r"train\.rank: must be > 0"):
        dvc(repo, "exp", "run", "-S", "train.rank=0")


DATA_STAGES = ("fetch", "filter_license", "rasterize", "caption", "eda")


def lock_outs(repo: Path, stages) -> dict:
    lock = yaml.safe_load((repo / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    return {s: {o["path"]: o["md5"] for o in lock[s]["outs"]} for s in stages}


def test_switching_to_logos_and_back_gives_the_same_hashes(repo, tmp_path):
    """fetch.source switches every stage to a parquet dataset; switching back reruns the data stages
    to the very same outputs, so everything downstream (base, train_lora, ...) is up to date as before."""
    from iconforge import synthetic_logos

    icons = lock_outs(repo, DATA_STAGES)
    shard = synthetic_logos.write(tmp_path / "logos.parquet", 120)
    set_params(repo, fetch__source="parquet", fetch__shards=[str(shard)], caption__trigger="elegant logo",
               caption__template="{trigger}, {name}, {keywords}, {category}")
    assert ran_stages(dvc(repo, "repro", "eda")) == set(DATA_STAGES)
    logos = lock_outs(repo, DATA_STAGES)
    assert all(logos[s] != icons[s] for s in DATA_STAGES)
    eda = json.loads((repo / paths.EDA_METRICS).read_text())
    assert eda["source"] == "parquet" and eda["images"] == 120 - len(rows(repo / paths.FILTER_REJECTS))
    assert sum(eda["by_split"].values()) == eda["images"] and set(eda["by_license"]) == {"unspecified"}

    pipeline_repo.git(repo, "checkout", "params.yaml")
    dvc(repo, "repro", "eda")  # runs the stages again, or restores their outputs from DVC's run cache
    assert lock_outs(repo, DATA_STAGES) == icons
    assert "Data and pipelines are up to date" in dvc(repo, "status")


@needs_full
@pytest.mark.xdist_group("full_snapshot")  # the heaviest test: on whichever worker is free
def test_full_snapshot_data_stages(tmp_path):
    """The four data stages on the whole library, every license and size allowed
    (at 256 px to keep CI short: whether an icon renders does not depend on size)."""
    repo = make_repo(tmp_path / "repo", {
        "fetch": {"url": str(FULL_ARCHIVE), "sha256": FULL_SHA256},
        "filter": {"licenses": list(KNOWN_LICENSES), "max_svg_bytes": 10**9},
        "rasterize": {"size": 256},
    })
    out = dvc(repo, "repro", "caption")
    assert ran_stages(out) == {"fetch", "filter_license", "rasterize", "caption"}, out
    assert "Data and pipelines are up to date" in dvc(repo, "status", "caption")
    data = repo / "data"
    assert len(rows(data / "manifest.csv")) == 2801 and rows(data / "filter_rejects.csv") == []
    raster_rejects = {r["path"]: r["reason"] for r in rows(data / "raster_rejects.csv")}
    assert raster_rejects == {f"cc-by-4.0/Viruses/DBCLS/{n}.svg": "empty file"
                              for n in ("Polyomaviridae", "SARS-CoV-2", "virus")}
    assert len(list((data / "png").rglob("*.png"))) == 2798

    credits = {r["path"]: r for r in rows(data / "credits.csv")}
    needing = {r["path"] for r in rows(data / "filtered.csv") if r["license"] != "cc-0"}
    assert needing <= {p for p, r in credits.items() if r["needs_attribution"] == "true"}
    assert all(credits[p]["author"] and credits[p]["license_url"] for p in needing)

    metrics = json.loads((repo / "metrics" / "data.json").read_text(encoding="utf-8"))
    assert metrics["rasterize"] == {"rendered": 2798, "rejected": 3}
    assert sum(metrics["dataset"]["by_split"].values()) == 2798
    assert "cc-by-3.0" in out and "validation" in out  # the counts are printed too
