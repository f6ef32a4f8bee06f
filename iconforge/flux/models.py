"""The base model: resolve params' `model.base` once, load the very same one everywhere.

The base stage calls `resolve_base`, which writes models/base/ (base.json, plus the
saved pipeline for `tiny`); train_lora reads it with `read_base`, sample and
evaluate call `load_pipeline` on that directory, so all of them use identical
base weights. A missing or
unreachable hub model fails in seconds with a message saying what to do, and a
full-size model on a machine without CUDA stops before any download.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from huggingface_hub import constants as hf_constants

from iconforge.atomic import atomic_dir, write_json
from iconforge.config import ModelConfig
from iconforge.errors import StageError
from iconforge.paths import BASE_JSON
from iconforge.tables import read_json

if TYPE_CHECKING:
    from diffusers import FluxPipeline

# diffusers and the tiny builder (open_clip, transformers) are imported where used:
# evaluate needs only read_base, and the imports cost seconds per stage.

TINY, LOCAL, HUB = "tiny", "local", "hub"
# Lets a small local diffusers model (e.g. a saved tiny pipeline) run on CPU in tests.
ALLOW_CPU_ENV = "ICONFORGE_ALLOW_CPU"


class ModelError(StageError, RuntimeError):
    """The base model cannot be used here; the message says why and what to do."""


def base_kind(base: str) -> str:
    if base == TINY:
        return TINY
    return LOCAL if Path(base).is_dir() else HUB


def require_cuda(kind: str, base: str, device: torch.device | str | None = None) -> None:
    """Full-size FLUX on CPU would take hours per step: refuse before downloading 30 GB."""
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if kind == TINY or on_cuda or os.environ.get(ALLOW_CPU_ENV) == "1":
        return
    raise ModelError(
        f"model.base={base!r} is a full-size FLUX model and needs a CUDA GPU, but none is available. "
        f"Run on a GPU machine, or use model.base=tiny for the offline CPU preset "
        f"(e.g. dvc exp run -S model.base=tiny).")


def download_base(base: str, revision: str) -> Path:
    """Local snapshot folder of a hub pipeline: the HF cache first, then the network."""
    if not os.environ.get("HF_HUB_ETAG_TIMEOUT"):
        hf_constants.HF_HUB_ETAG_TIMEOUT = 5  # fail fast when the hub is unreachable
    from diffusers import FluxPipeline

    rev = revision or None
    try:
        return Path(FluxPipeline.download(base, revision=rev, local_files_only=True))
    except OSError as e:
        reason = f"not in the local Hugging Face cache ({hf_constants.HF_HUB_CACHE})"
        if hf_constants.HF_HUB_OFFLINE:
            raise ModelError(_missing(base, revision, reason + " and HF_HUB_OFFLINE is set")) from e
    try:
        return Path(FluxPipeline.download(base, revision=rev))
    except OSError as e:  # huggingface_hub's HTTP, gated-repo and not-found errors are all OSErrors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(_missing(base, revision, f"{reason}, and downloading failed: {first}")) from e


def _missing(base: str, revision: str, reason: str) -> str:
    return (f"model.base={base!r} (model.revision={revision!r}) is {reason}. "
            f"Either give this machine access to huggingface.co (gated models such as FLUX.1-dev need their "
            f"license accepted on the model page and a token: `hf auth login` or HF_TOKEN), or download it "
            f"elsewhere and set model.base to the local diffusers directory (the folder with model_index.json).")


def resolve_base(cfg: ModelConfig, out_dir: Path, train_split: Path | None = None) -> dict:
    """Check the base is usable here and write `out_dir` describing it; returns base.json's content.

    For `tiny` the pipeline itself is saved there, its VAE first trained for `model.tiny_vae_steps`
    on the images of `train_split`; base.json then also holds the sha256 of the saved files,
    so anything keyed on base.json (the latent cache) tells two tiny bases apart."""
    kind = base_kind(cfg.base)
    require_cuda(kind, cfg.base)
    if kind == HUB:
        download_base(cfg.base, cfg.revision)
    if kind == LOCAL and not (Path(cfg.base) / "model_index.json").is_file():
        raise ModelError(f"model.base={cfg.base!r}: no model_index.json there; "
                         f"point it at a diffusers FluxPipeline directory")
    info = {"base": cfg.base, "kind": kind, "revision": cfg.revision if kind == HUB else ""}
    with atomic_dir(out_dir) as tmp:
        if kind == TINY:
            from iconforge.flux.tiny import build_tiny_pipeline

            pipe = build_tiny_pipeline()
            if cfg.tiny_vae_steps:
                from iconforge.flux.vae import load_split, train_vae

                if train_split is None:
                    raise ValueError("model.tiny_vae_steps > 0 needs the train split to train the VAE on")
                train_vae(pipe.vae, load_split(train_split), cfg.tiny_vae_steps)
            pipe.save_pretrained(tmp)
            info["sha256"] = folder_digest(tmp)
        write_json(tmp / BASE_JSON, info)
    return info


def folder_digest(folder: Path) -> str:
    """One sha256 over every file of a folder (relative path and content, in path order)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def read_base(base_dir: Path) -> dict:
    return read_json(Path(base_dir) / BASE_JSON, required=("base", "kind", "revision"))


def model_source(base_dir: Path, device: torch.device | str | None = None) -> Path:
    """The local diffusers folder holding the base that `resolve_base` recorded in `base_dir`."""
    info = read_base(base_dir)
    kind, base = info["kind"], info["base"]
    require_cuda(kind, base, device)
    if kind == HUB:
        return download_base(base, info["revision"])
    source = Path(base_dir) if kind == TINY else Path(base)
    if not (source / "model_index.json").is_file():
        raise ModelError(f"{source}: no model_index.json there; model.base must be a diffusers FluxPipeline directory")
    return source


def load_pipeline(base_dir: Path, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, **components) -> FluxPipeline:
    """The base FluxPipeline recorded in `base_dir`, on `device` in `dtype`.
    `components` go to from_pretrained, e.g. transformer=None to skip loading it."""
    from diffusers import FluxPipeline

    source = model_source(base_dir, device)
    return FluxPipeline.from_pretrained(source, dtype=dtype, **components).to(device)
