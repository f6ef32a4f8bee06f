"""The encoding cache: shared by experiments, only what a run draws, corrupt entries re-encoded,
least recently used entries evicted past the cap, a full disk reported in one line."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iconforge.config import TrainConfig, build
from iconforge.flux.latent_cache import EncodingCache
from iconforge.flux.train import Paths, drawn_indices, encode_data
from train_setup import NAMES, PARAMS, TRAIN, VAL_NAMES, make_repo

from conftest import ROOT

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make_repo(tmp_path_factory.mktemp("cache"))


def cfg(**overrides) -> TrainConfig:
    return build(TrainConfig, {**PARAMS["train"], **TRAIN, **overrides})


def paths(repo: Path, cache: Path) -> Paths:
    return Paths(dataset=repo / "data/dataset/train", validation=repo / "data/dataset/validation",
                 base=repo / "models/base", lora=repo / "l.safetensors", lora_kohya=repo / "k.safetensors",
                 checkpoints=repo / "ckpt", run_json=repo / "run.json", metrics=repo / "m.json",
                 loss_csv=repo / "loss.csv", val_loss_csv=repo / "val.csv", cache=cache)


def counts(data) -> tuple[int, int, int, int]:
    st = data.cache.stats
    return st.encoded_images, st.encoded_captions, st.reused_images, st.reused_captions


def entries(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(cache.glob("*/*.safetensors"))}


def test_a_run_encodes_only_the_examples_it_draws(repo, tmp_path):
    c = cfg(steps=1, grad_accum=1, val_images=1)  # one step of batch 2: 2 of the 6 training images
    data = encode_data(c, paths(repo, tmp_path / "c"), 1, CPU)
    drawn = drawn_indices(c, len(NAMES), 1)
    assert len(drawn) == 2 and [i for i, e in enumerate(data.examples) if e.image_key] == drawn
    assert len(data.examples) == len(NAMES) and len(data.val) == 1
    # 2 drawn images + 1 validation image; their 3 captions + the empty one (caption dropout)
    assert counts(data) == (3, 4, 0, 0)
    assert len(entries(tmp_path / "c")) == 7


def test_experiments_share_encodings_and_a_new_resolution_reencodes_images(repo, tmp_path):
    p = paths(repo, tmp_path / "c")
    n_images, n_captions = len(NAMES) + len(VAL_NAMES), len(NAMES) + len(VAL_NAMES) + 1
    assert counts(encode_data(cfg(), p, 1, CPU)) == (n_images, n_captions, 0, 0)
    for change in (dict(rank=32), dict(lr=1e-3, steps=10), dict(targets="all_linear", seed=3)):
        assert counts(encode_data(cfg(**change), p, 1, CPU))[:2] == (0, 0), change
    assert counts(encode_data(cfg(resolution=32), p, 1, CPU)) == (n_images, 0, 0, n_captions)


def test_corrupt_or_truncated_entries_are_reencoded_never_used(repo, tmp_path):
    p = paths(repo, tmp_path / "c")
    encode_data(cfg(), p, 1, CPU)
    good = entries(tmp_path / "c")
    flipped, truncated = sorted(tmp_path.glob("c/*/*.safetensors"))[:2]
    raw = bytearray(flipped.read_bytes())
    raw[-3] ^= 0xFF  # one bit of rot in the tensor data
    flipped.write_bytes(bytes(raw))
    truncated.write_bytes(truncated.read_bytes()[:100])
    data = encode_data(cfg(), p, 1, CPU)
    st = data.cache.stats
    assert st.corrupt_entries == 2 and st.encoded_images + st.encoded_captions == 2
    assert entries(tmp_path / "c") == good  # re-encoded to the very same bytes


def test_past_the_cap_all_but_the_runs_own_entries_are_evicted(repo, tmp_path):
    p = paths(repo, tmp_path / "c")
    encode_data(cfg(resolution=32), p, 1, CPU)
    data = encode_data(cfg(cache_max_gb=1e-9), p, 1, CPU)  # a 1-byte cap
    assert data.cache.stats.evicted_entries == len(NAMES) + len(VAL_NAMES)  # the 32 px latents
    captions = {e.caption for e in data.examples + data.val} | {""}
    own = {e.image_key for e in data.examples + data.val} | {data.cache.text_key(c) for c in captions}
    assert {Path(f).stem for f in entries(tmp_path / "c")} == own


def test_eviction_deletes_least_recently_used_first(tmp_path):
    import os
    cache = EncodingCache(tmp_path, "scope", 64, max_bytes=0)
    keys = [c * 64 for c in "abcd"]
    for age, k in enumerate(keys):
        cache.write(k, {"x": torch.zeros(256)})
        os.utime(cache.path(k), ns=(10**18 - age * 10**9,) * 2)  # a: used last, d: longest ago
    size = cache.path(keys[0]).stat().st_size
    cache.max_bytes = 2 * size
    cache.read(keys[3])  # reading marks d used now
    cache.evict(keep={keys[2]})
    assert [cache.path(k).exists() for k in keys] == [False, False, True, True]


def test_an_unusable_image_is_skipped_and_the_draw_recomputed(tmp_path):
    repo = make_repo(tmp_path / "r")
    bad = repo / "data/dataset/train/cc-0/Lab_apparatus/Servier/dna.png"
    bad.write_bytes(b"<html>not a png</html>")
    data = encode_data(cfg(), paths(repo, tmp_path / "c"), 1, CPU)
    assert [s["file"] for s in data.skipped] == [str(bad)] and "not a readable image" in data.skipped[0]["reason"]
    assert sorted(e.file.split("/")[-1] for e in data.examples) == sorted(f"{n}.png" for n in NAMES if n != "dna")
    assert all(data.examples[i].image_key for i in drawn_indices(cfg(), len(data.examples), 1))


def test_a_full_disk_is_one_line_naming_the_entry(tmp_path):
    """RLIMIT_FSIZE makes any write past 4 KiB fail (EFBIG) as a full disk would (ENOSPC)."""
    script = (
        "import resource, signal, torch\n"
        "from pathlib import Path\n"
        "from iconforge.errors import run_stage\n"
        "from iconforge.flux.latent_cache import EncodingCache\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        f"cache = EncodingCache(Path({str(tmp_path / 'c')!r}), 'scope', 64, 2**30)\n"
        "run_stage('train_lora', lambda: cache.write('ab' * 32, {'x': torch.zeros(10000)}))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    entry = tmp_path / "c" / "ab" / f"{'ab' * 32}.safetensors"
    assert out.stderr.startswith(f"train_lora: {entry}: no space left to write it"), out.stderr
    assert not entry.exists() and not [f for f in (tmp_path / "c").rglob("*") if f.is_file()]  # nothing partial


def test_an_entry_reads_back_what_was_written(tmp_path):
    cache = EncodingCache(tmp_path, "scope", 64, 2**30)
    t = {"mean": torch.arange(6.0).reshape(2, 3), "std": torch.ones(2, 3, dtype=torch.bfloat16)}
    cache.write("cd" * 32, t)
    back = cache.read("cd" * 32)
    assert back.keys() == t.keys() and all(torch.equal(back[k], t[k]) and back[k].dtype == t[k].dtype for k in t)
    assert cache.read("ef" * 32) is None and cache.stats.corrupt_entries == 0
    shutil.rmtree(tmp_path / "cd")
    with pytest.raises(Exception, match="vanished or was corrupted during training"):
        cache.load("cd" * 32)
