"""Resolving and loading the base model: tiny round trip, local dirs, fast clear failures."""
import json
import socket
import time

import pytest
import torch
from diffusers import AutoencoderKL, FluxPipeline
from PIL import Image, ImageDraw
from huggingface_hub import constants as hf_constants

from iconforge.flux import models
from iconforge.config import ModelConfig
from iconforge.flux.models import ModelError, download_base, load_pipeline, resolve_base
from iconforge.flux.tiny import build_tiny_pipeline
from iconforge.flux.vae import train_vae

FLUX = "black-forest-labs/FLUX.1-dev"


def test_tiny_round_trip(tmp_path):
    info = resolve_base(ModelConfig(base="tiny", revision="ignored"), tmp_path / "base")
    assert info == {"base": "tiny", "kind": "tiny", "revision": "", "sha256": info["sha256"]}
    assert json.loads((tmp_path / "base" / "base.json").read_text()) == info
    pipe = load_pipeline(tmp_path / "base", "cpu", torch.float32)
    fresh = build_tiny_pipeline().transformer.state_dict()
    loaded = pipe.transformer.state_dict()
    assert fresh.keys() == loaded.keys() and all(torch.equal(fresh[k], loaded[k]) for k in fresh)


def icon_split(root, n: int = 4):
    """An imagefolder split of n flat two-shape icons on white."""
    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        im = Image.new("RGB", (48, 48), "white")
        ImageDraw.Draw(im).ellipse((4 + 3 * i, 6, 40, 42 - 2 * i), fill=[(200, 30, 30), (30, 120, 200)][i % 2])
        im.save(root / f"icon-{i}.png")
        rows.append(json.dumps({"file_name": f"icon-{i}.png", "text": f"icon {i}"}) + "\n")
    (root / "metadata.jsonl").write_text("".join(rows))
    return root


def test_tiny_vae_training_is_deterministic_and_keyed_in_base_json(tmp_path):
    """model.tiny_vae_steps trains the VAE on the split: the same bytes every run, and a base.json
    (the latent cache's key) that differs from the random VAE's."""
    split = icon_split(tmp_path / "train")
    cfg = ModelConfig(base="tiny", revision="", tiny_vae_steps=3)
    first = resolve_base(cfg, tmp_path / "a", split)
    second = resolve_base(cfg, tmp_path / "b", split)
    weights = "vae/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "a" / weights).read_bytes() == (tmp_path / "b" / weights).read_bytes()
    assert first == second and first["sha256"] != resolve_base(ModelConfig(base="tiny", revision=""),
                                                               tmp_path / "c")["sha256"]
    vae = AutoencoderKL.from_pretrained(tmp_path / "a", subfolder="vae")
    assert (vae.config.shift_factor, vae.config.scaling_factor) != (0.1159, 0.3611)  # set from the icons' latents
    losses = train_vae(build_tiny_pipeline().vae, torch.rand(4, 3, 32, 32) * 2 - 1, 3)
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    with pytest.raises(ValueError, match="needs the train split"):
        resolve_base(cfg, tmp_path / "d")


def test_local_directory_base(tmp_path, monkeypatch):
    build_tiny_pipeline().save_pretrained(tmp_path / "my-flux")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(models.ALLOW_CPU_ENV, "1")  # a small local model may run on CPU
    info = resolve_base(ModelConfig(base="my-flux", revision="r"), tmp_path / "base")
    assert info["kind"] == "local" and not (tmp_path / "base" / "model_index.json").exists()
    assert isinstance(load_pipeline(tmp_path / "base"), FluxPipeline)

    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="model_index.json"):
        resolve_base(ModelConfig(base="empty", revision=""), tmp_path / "base2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_full_model_without_cuda_stops_before_download(tmp_path, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("download attempted")
    monkeypatch.setattr(FluxPipeline, "download", no_download)
    with pytest.raises(ModelError, match="needs a CUDA GPU.*model.base=tiny"):
        resolve_base(ModelConfig(base=FLUX, revision="abc"), tmp_path / "base")
    assert not (tmp_path / "base").exists()


@pytest.mark.parametrize("offline", [True, False])
def test_hub_without_network_fails_fast_with_help(monkeypatch, tmp_path, offline):
    def unreachable(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    t0 = time.monotonic()
    with pytest.raises(ModelError) as e:
        download_base(FLUX, "0ef5fff789c832c5c7f4e127f94c8b54bbcced44")
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert FLUX in msg and "not in the local Hugging Face cache" in msg
    assert "set model.base to the local diffusers directory" in msg
    assert ("HF_HUB_OFFLINE" in msg) == offline
