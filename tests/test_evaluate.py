"""evaluate stage: style metrics, CLIP score, CMMD, and the stage on the tiny preset (random CLIP)."""
import csv
import json
import os
import shutil
import time
from pathlib import Path

import mlflow
import numpy as np
import open_clip
import pytest

from iconforge.errors import InputError
import torch
from huggingface_hub import constants as hf_constants
from PIL import Image, ImageDraw

from iconforge.atomic import write_json
from iconforge.config import ModelConfig
from iconforge.flux.models import resolve_base
from iconforge.evaluate.inception import InceptionWeightsError
from iconforge.evaluate.metrics import ClipWeightsError, clip_scores, cmmd, embed_images, load_clip
from iconforge.paths import BASE_JSON
from iconforge.evaluate.style import ANALYSIS_SIZE, style_metrics
from iconforge.tracking import start_run, write_run_json

PARAMS = ("evaluate: {clip_model: ViT-B-32, clip_pretrained: laion2b_s34b_b79k, max_real_images: 3, "
          "inception_weights: '', fid_min_samples: 3, is_splits: 1, is_min_per_split: 3, kid_subset_size: 1000, "
          "kid_subsets: 100}\n")
N_PROMPTS = 3


def flat_icon(i: int, size: int = 64) -> Image.Image:
    """Real-looking icon: two flat shapes on white."""
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    d.ellipse((6 + i, 6, size - 6, size - 6 - i), fill=[(200, 30, 30), (30, 120, 200), (40, 160, 60)][i % 3])
    d.rectangle((size // 3, size // 4, size // 2, size - 10), fill=(250, 200, 0))
    return im


def noise(i: int, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def run_json(tmp_path_factory) -> Path:
    """models/run.json of a real (sqlite) MLflow training run."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        with start_run("train_lora") as run:
            write_run_json(run, root / "run.json")
    return root / "run.json"


def store_of(run_json: Path) -> str:
    return f"sqlite:///{run_json.parent / 'mlflow.db'}"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """models/base of the tiny preset (random VAE: evaluate encodes with it)."""
    base = tmp_path_factory.mktemp("base") / "base"
    resolve_base(ModelConfig(base="tiny", revision=""), base)
    return base


@pytest.fixture
def project(tmp_path, run_json, tiny_base, monkeypatch) -> Path:
    """samples/ (base = noise, LoRA = flat icons), 5 held-out real icons, a tiny base, the run."""
    (tmp_path / "params.yaml").write_text(PARAMS)
    shutil.copytree(tiny_base, tmp_path / "models/base")
    (tmp_path / "models/run.json").write_bytes(run_json.read_bytes())
    val = tmp_path / "data/dataset/validation"
    val.mkdir(parents=True)
    rows = []
    for i in range(5):
        flat_icon(i + 10).save(val / f"real-{i}.png")
        rows.append({"file_name": f"real-{i}.png", "text": f"bioicons style, real {i}, cells"})
    (val / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = tmp_path / "samples"
    for sub in ("base", "lora"):
        (samples / sub).mkdir(parents=True)
    entries = []
    for i in range(N_PROMPTS):
        noise(i).save(samples / f"base/{i:03d}.png")
        flat_icon(i).save(samples / f"lora/{i:03d}.png")
        entries.append({"index": i, "prompt": f"bioicons style, thing {i}", "seed": i,
                        "files": {"base": f"base/{i:03d}.png", "lora": f"lora/{i:03d}.png", "svg": f"svg/{i:03d}.svg"}})
    write_json(samples / "index.json", {"size": 64, "steps": 4, "guidance": 3.5, "samples": entries})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_of(run_json))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_style_metrics_on_synthetic_images():
    half = Image.new("RGB", (ANALYSIS_SIZE, ANALYSIS_SIZE), "white")
    ImageDraw.Draw(half).rectangle((0, 0, ANALYSIS_SIZE // 2 - 1, ANALYSIS_SIZE - 1), fill=(200, 30, 30))
    m = style_metrics(half)
    assert m["palette_size"] == 2
    assert m["white_background_ratio"] == 0.5
    assert m["sharp_edge_fraction"] == 1.0
    assert m["path_count"] == 2

    speck = np.full((100, 100, 3), 255, np.uint8)
    speck[:60] = (0, 0, 200)
    speck[0, :3] = (0, 200, 0)  # 3 pixels: below the 5% the palette ignores
    assert style_metrics(Image.fromarray(speck))["palette_size"] == 2

    ramp = np.tile(np.linspace(0, 255, ANALYSIS_SIZE).astype(np.uint8), (ANALYSIS_SIZE, 1))
    m = style_metrics(Image.fromarray(ramp).convert("RGB"))
    assert m["sharp_edge_fraction"] == 0.0  # a smooth gradient has no crisp edge
    assert m["palette_size"] == 16

    transparent = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # transparent icons are judged on white
    assert style_metrics(transparent)["white_background_ratio"] == 1.0
    assert style_metrics(noise(0))["palette_size"] > 100


def test_cmmd_is_zero_for_a_set_against_itself():
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(20, 16, generator=gen, dtype=torch.float64), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(20, 16, generator=gen, dtype=torch.float64) + 1, dim=-1)
    assert abs(cmmd(x, x)) < 1e-9
    assert cmmd(x, y) > 0.1
    assert cmmd(x, y) == pytest.approx(cmmd(y, x))
    assert cmmd(x, y) > cmmd(x, torch.nn.functional.normalize(x + 0.01 * y, dim=-1))  # closer set, smaller


def test_clip_score_is_scaled_cosine_clipped_at_zero():
    e = torch.eye(3, dtype=torch.float64)
    assert clip_scores(e, e) == [100.0, 100.0, 100.0]
    assert clip_scores(e, -e) == [0.0, 0.0, 0.0]


def test_evaluate_stage_smoke_run_on_tiny(project):
    from stages import evaluate

    evaluate.main()
    first = (project / "metrics/eval.json").read_bytes()
    m = json.loads(first)
    assert m["smoke"] is True and "say nothing about image quality" in m["note"]
    assert m["clip_pretrained"] == "random-init"
    assert m["real"]["count"] == 3 and m["lora"]["count"] == m["base"]["count"] == N_PROMPTS
    for kind in ("lora", "base"):
        assert 0 <= m[kind]["clip_score"] <= 100
        assert m[kind]["cmmd"] >= 0
        for k, gap in m["gap"][kind].items():
            assert gap == pytest.approx(abs(m[kind][k] - m["real"][k]), abs=2e-6)
    # flat icons are closer to the real icons' style than noise is
    assert m["gap"]["lora"]["palette_size"] < m["gap"]["base"]["palette_size"]
    assert m["gap"]["lora"]["white_background_ratio"] < m["gap"]["base"]["white_background_ratio"]
    assert m["lora"]["cmmd"] < m["base"]["cmmd"]
    latent = m["latent_mmd"]  # in the base VAE's latent space: flat icons are nearer the held-out icons than noise
    assert "unbiased" in latent["estimator"] and latent["count"] == {"lora": 3, "base": 3, "icons": 3, "control": 3}
    assert 0 < latent["icons"]["lora"] < latent["icons"]["base"] and 0 < latent["icons"]["ratio"] < 1
    assert set(latent["control"]) == {"lora", "base", "ratio"}
    inc = m["inception"]  # random-init Inception: numbers (the minimums are lowered in PARAMS), marked smoke
    assert inc["weights"] == "random-init" and inc["weights_sha256"] is None and inc["standard_weights"] is False
    assert inc["count"] == {"lora": 3, "base": 3, "real": 3} and inc["size"] == 64
    assert inc["refused"] == {"fid": None, "kid": None, "inception_score": None}
    assert inc["kid_subset_size"] == 3 and inc["kid_subsets"] == 1
    assert len(inc["below_documented_minimums"]) == 2
    for kind in ("lora", "base"):
        assert m[kind]["fid"] > 0 and m[kind]["inception_score"] >= 1 and m[kind]["inception_score_std"] == 0
    assert m["lora"]["fid"] < m["base"]["fid"]  # flat icons nearer the held-out icons than noise, even so
    assert "FID, KID and Inception Score only show that evaluation runs" in m["note"]

    with open(project / "metrics/eval_per_prompt.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["prompt", "kind", "seed", "clip_score", "palette_size", "sharp_edge_fraction",
                             "white_background_ratio", "path_count"]
    assert [(r["prompt"], r["kind"]) for r in rows] == [
        (f"bioicons style, thing {i}", k) for i in range(N_PROMPTS) for k in ("base", "lora")]

    run = json.loads((project / "models/run.json").read_text())
    logged = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(run["run_id"]).data.metrics
    assert logged["eval.lora.clip_score"] == pytest.approx(m["lora"]["clip_score"])
    assert logged["eval.gap.base.palette_size"] == pytest.approx(m["gap"]["base"]["palette_size"])
    assert logged["eval.latent_mmd.icons.ratio"] == pytest.approx(latent["icons"]["ratio"])
    assert logged["eval.lora.fid"] == pytest.approx(m["lora"]["fid"])
    assert logged["eval.base.kid"] == pytest.approx(m["base"]["kid"])

    evaluate.main()  # same inputs, same bytes
    assert (project / "metrics/eval.json").read_bytes() == first


def test_scores_below_the_minimums_are_null_with_the_reason(project, capsys):
    from stages import evaluate

    (project / "params.yaml").write_text(PARAMS.replace("fid_min_samples: 3", "fid_min_samples: 2048")
                                         .replace("is_splits: 1", "is_splits: 10"))
    evaluate.main()
    m = json.loads((project / "metrics/eval.json").read_text())
    for kind in ("lora", "base"):
        assert m[kind]["fid"] is None and m[kind]["inception_score"] is None and m[kind]["kid"] is not None
    refused = m["inception"]["refused"]
    assert refused["fid"].startswith("FID needs >= 2048 images per set (evaluate.fid_min_samples); "
                                     "got 3 lora samples, 3 base samples, 3 held-out images.")
    assert refused["inception_score"].startswith("Inception Score needs >= 3 images per split x 10 splits = 30")
    out = capsys.readouterr().out
    assert "evaluate: fid not reported: FID needs >= 2048" in out
    assert "evaluate: inception_score not reported: Inception Score needs" in out
    assert "FID refused, KID " in out and "IS refused (random Inception)" in out
    flat = evaluate._flat({k: m[k] for k in ("lora", "base")})  # what goes to MLflow: nulls are left out
    assert "eval.lora.kid" in flat and "eval.lora.fid" not in flat and "eval.base.inception_score" not in flat


def test_index_naming_another_file_is_refused(project):
    from stages import evaluate

    index = json.loads((project / "samples/index.json").read_text())
    index["samples"][0]["files"]["lora"] = "../../etc/passwd"
    (project / "samples/index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match=r"samples/index.json: samples\[0\] is not an entry sample wrote"):
        evaluate.main()


def test_missing_clip_weights_fail_fast_and_say_what_to_do(project, monkeypatch):
    from stages import evaluate

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    write_json(project / "models/base" / BASE_JSON, {"base": "org/model", "kind": "hub", "revision": "x"})
    t = time.monotonic()
    with pytest.raises(ClipWeightsError, match=r"evaluate.clip_pretrained='laion2b_s34b_b79k'.*not available") as e:
        evaluate.main()
    assert time.monotonic() - t < 15
    assert "set evaluate.clip_pretrained to its path" in str(e.value)
    assert "huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in str(e.value)
    assert not (project / "metrics/eval.json").exists()

    with pytest.raises(ClipWeightsError, match="neither an existing file nor an open_clip tag"):
        load_clip("ViT-B-32", "weights/missing.safetensors")
    with pytest.raises(ClipWeightsError, match="evaluate.clip_model='ViT-Q-99': not an open_clip architecture"):
        load_clip("ViT-Q-99", None)


def test_inception_weights_optional_but_a_missing_file_fails_fast(project, monkeypatch):
    """evaluate.inception_weights empty: FID, KID and IS are recorded as not computed, saying how to get
    them (a long training run is not failed for an optional metric). Set to a missing file: the stage
    stops before any work, naming the param and the file to download."""
    from iconforge.evaluate import metrics
    from iconforge.evaluate.inception import Limits, NOT_CONFIGURED, inception_metrics
    from stages import evaluate

    scores, info = inception_metrics(None, {"lora": [flat_icon(0)] * 3, "base": [noise(0)] * 3}, [flat_icon(1)] * 3,
                                     64, Limits(2, 2, 1, 1000, 10))
    assert all(v is None for s in scores.values() for v in s.values())
    assert info["refused"] == dict.fromkeys(("fid", "kid", "inception_score"), NOT_CONFIGURED)
    assert "weights-inception-2015-12-05-6726825d.pth" in NOT_CONFIGURED and info["weights"] is None

    write_json(project / "models/base" / BASE_JSON, {"base": "org/model", "kind": "hub", "revision": "x"})
    (project / "params.yaml").write_text(PARAMS.replace("inception_weights: ''", "inception_weights: weights/nope.pth"))
    monkeypatch.setattr(metrics, "load_clip", lambda *args: None)  # as if the CLIP weights were there
    with pytest.raises(InceptionWeightsError, match=r"evaluate.inception_weights='weights/nope.pth': no such file") as e:
        evaluate.main()
    assert "set evaluate.inception_weights to its path" in str(e.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in str(e.value)
    assert not (project / "metrics/eval.json").exists()


def test_clip_from_a_local_checkpoint_file(tmp_path):
    """The offline escape hatch: evaluate.clip_pretrained = a local open_clip checkpoint file.
    A tiny registered architecture keeps the checkpoint small (ViT-B-32's would be 600 MB)."""
    config = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                              "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "iconforge-test-tiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "iconforge-test-tiny.json")
    random_clip = load_clip("iconforge-test-tiny", None)
    ckpt = tmp_path / "clip.pt"
    torch.save(random_clip.model.state_dict(), ckpt)
    local = load_clip("iconforge-test-tiny", str(ckpt))
    images = [flat_icon(0), noise(1)]
    assert torch.equal(embed_images(local, images), embed_images(random_clip, images))
    torch.save({"not": torch.zeros(1)}, ckpt)
    with pytest.raises(ClipWeightsError, match="cannot load this file"):
        load_clip("iconforge-test-tiny", str(ckpt))
