"""The tiny preset: a real FluxPipeline structure, runs end to end, offline and byte-stable."""
import socket

import numpy as np
import pytest
import torch

from iconforge.flux.tiny import build_tiny_pipeline


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve or connect fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_generates_an_image_end_to_end(no_network):
    pipe = build_tiny_pipeline()
    out = pipe("bioicons style, zebrafish embryo", num_inference_steps=2, height=64, width=64,
               generator=torch.Generator().manual_seed(0), max_sequence_length=32)
    img = np.asarray(out.images[0])
    assert img.shape == (64, 64, 3)
    assert img.std() > 0  # a decoded image, not a constant fill


def test_keeps_flux_structure(no_network):
    pipe = build_tiny_pipeline()
    assert pipe.transformer.config.in_channels == 64 and pipe.transformer.config.guidance_embeds
    assert pipe.vae.config.latent_channels == 16 and pipe.vae_scale_factor == 8
    assert pipe.scheduler.config.use_dynamic_shifting
    # The real CLIP BPE: known token ids of the OpenAI tokenizer.
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(pipe.tokenizer) == 49408
    ids = pipe.tokenizer_2(["a cat", "a dog"], padding="max_length", max_length=16, truncation=True).input_ids
    assert [len(i) for i in ids] == [16, 16] and ids[0] != ids[1]
    tok2 = pipe.tokenizer_2  # "▁a▁cat" as characters, then </s>, then <pad>
    assert ids[0][6:8] == [tok2.eos_token_id, tok2.pad_token_id] == [1, 0]


def test_same_bytes_every_build(tmp_path, no_network):
    rng_before = torch.get_rng_state()
    build_tiny_pipeline().save_pretrained(tmp_path / "a")
    build_tiny_pipeline().save_pretrained(tmp_path / "b")
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert any(f.suffix == ".safetensors" for f in files)
    total = 0
    for f in files:
        a, b = (tmp_path / "a" / f).read_bytes(), (tmp_path / "b" / f).read_bytes()
        assert a == b, f
        total += len(a)
    assert total < 20e6
