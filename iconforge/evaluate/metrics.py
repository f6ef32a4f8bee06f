"""Score LoRA and base samples: CLIP score, CMMD against held-out real icons, style gaps.

CLIP score = 100 * max(cos(image, prompt), 0), the usual text-alignment score.
CMMD (Jayasumana et al. 2024, "Rethinking FID") = MMD with a Gaussian RBF
kernel (sigma 10) between unit CLIP image embeddings of generated and real
images, times 1000; unlike FID it assumes no normal distribution and is usable
with a handful of samples.
FID, KID and Inception Score: iconforge/evaluate/inception.py.
"""
from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from urllib.parse import urlparse

import open_clip
import torch
from huggingface_hub import constants as hf_constants
from PIL import Image
from tqdm import tqdm

from iconforge.errors import InputError, StageError
from iconforge.dataset.imagefolder import read_metadata
from iconforge.evaluate.sampling import evenly_spaced
from iconforge.evaluate.style import METRICS, style_metrics
from iconforge.paths import METADATA

CMMD_SIGMA, CMMD_SCALE = 10.0, 1000.0
RANDOM_CLIP_SEED = 0
BATCH = 32
KINDS = ("base", "lora")
SMOKE_NOTE = ("tiny preset: random-weight CLIP and Inception-v3, so CLIP score, CMMD, FID, KID and Inception "
              "Score only show that evaluation runs end to end; they say nothing about image quality. "
              "latent_mmd is measured in the tiny model's own latent space and needs no pretrained weights.")


class ClipWeightsError(StageError, RuntimeError):
    """The configured CLIP weights cannot be loaded; the message says what to do."""


@dataclass(frozen=True)
class Clip:
    model: torch.nn.Module
    preprocess: object  # PIL image -> normalized tensor
    tokenizer: object  # list[str] -> token ids
    device: str


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick TCP probe: huggingface_hub's own retries take ~45 s to give up without network."""
    if hf_constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(hf_constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Cache-only hub lookups while `offline` (cached weights still load, missing ones fail at once)."""
    old = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = old or offline
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = old


def load_clip(model_name: str, pretrained: str | None, device: str = "cpu") -> Clip:
    """open_clip `model_name` with `pretrained` weights: an open_clip tag or a local checkpoint
    file. None = random weights from a fixed seed (the tiny preset's smoke run)."""
    if model_name not in open_clip.list_models():
        raise ClipWeightsError(f"evaluate.clip_model={model_name!r}: not an open_clip architecture "
                               f"(e.g. ViT-B-32, ViT-L-14; see open_clip.list_models())")
    if pretrained is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_CLIP_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    else:
        model, preprocess = _load_pretrained(model_name, pretrained)
    return Clip(model.to(device).eval(), preprocess, open_clip.get_tokenizer(model_name), device)


def _load_pretrained(model_name: str, pretrained: str):
    key = "evaluate.clip_pretrained"
    if Path(pretrained).is_file():
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        except (RuntimeError, KeyError, ValueError, OSError) as e:
            raise ClipWeightsError(f"{key}={pretrained!r}: cannot load this file into open_clip "
                                   f"{model_name!r} (evaluate.clip_model): {e}") from e
        return model, preprocess
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if not open_clip.is_pretrained_cfg(model_name, pretrained):
        raise ClipWeightsError(f"{key}={pretrained!r}: neither an existing file nor an open_clip tag for "
                               f"{model_name!r} (tags: {', '.join(tags) or 'none'})")
    offline = not _hub_reachable()
    try:
        with _hub_offline(offline):
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    except (RuntimeError, OSError) as e:
        cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        where = f"https://huggingface.co/{cfg['hf_hub'].rstrip('/')}" if cfg.get("hf_hub") else cfg.get("url", "")
        why = ("Hugging Face hub is unreachable or HF_HUB_OFFLINE is set, and they are not in the local cache "
               f"({hf_constants.HF_HUB_CACHE})") if offline else f"download failed: {e}"
        raise ClipWeightsError(
            f"{key}={pretrained!r}: CLIP weights for {model_name!r} are not available: {why}. Download the "
            f"checkpoint on a machine with network ({where}), copy it here and set {key} to its path, "
            f"e.g. dvc exp run -S {key}=/path/to/open_clip_model.safetensors") from e
    return model, preprocess


@torch.inference_mode()
def embed_images(clip: Clip, images: list[Image.Image], desc: str = "clip images") -> torch.Tensor:
    """Unit-norm CLIP image embeddings, float64, one row per image."""
    out = []
    for i in tqdm(range(0, len(images), BATCH), desc=desc, unit="batch"):
        batch = torch.stack([clip.preprocess(im.convert("RGB")) for im in images[i:i + BATCH]]).to(clip.device)
        out.append(clip.model.encode_image(batch).double().cpu())
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


@torch.inference_mode()
def embed_texts(clip: Clip, texts: list[str]) -> torch.Tensor:
    emb = clip.model.encode_text(clip.tokenizer(texts).to(clip.device)).double().cpu()
    return torch.nn.functional.normalize(emb, dim=-1)


def clip_scores(image_emb: torch.Tensor, text_emb: torch.Tensor) -> list[float]:
    """100 * max(cos, 0) for each (image, text) row pair."""
    return (100 * (image_emb * text_emb).sum(-1).clamp(min=0)).tolist()


def cmmd(x: torch.Tensor, y: torch.Tensor, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """Squared MMD between two embedding sets with k(a, b) = exp(-|a - b|^2 / (2 sigma^2)), times `scale`."""
    gamma = 1.0 / (2 * sigma ** 2)

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-gamma * torch.cdist(a.double(), b.double()).pow(2)).mean()

    return float(scale * (k(x, x) + k(y, y) - 2 * k(x, y)))


def load_real_images(validation_dir: Path, max_images: int) -> list[Image.Image]:
    """At most `max_images` held-out icons, spread evenly over the file-name order."""
    rows = read_metadata(validation_dir)
    if not rows:
        raise InputError(f"{Path(validation_dir) / METADATA}: no held-out images; evaluate compares against them "
                         f"(is filter.val_fraction 0?)")
    images = []
    for row in evenly_spaced(rows, max_images):
        path = validation_dir / row["file_name"]
        try:
            with Image.open(path) as im:
                images.append(im.copy())
        except OSError as e:
            raise InputError(f"{path}: cannot read held-out image ({e})") from e
    return images


def sample_images(samples_dir: Path, index: dict, kind: str) -> list[Image.Image]:
    """The `kind` ("base" or "lora") image of every sample in samples/index.json, as RGB."""
    images = []
    for s in index["samples"]:
        with Image.open(Path(samples_dir) / s["files"][kind]) as im:
            images.append(im.convert("RGB"))
    return images


def _mean_style(rows: list[dict]) -> dict[str, float]:
    return {m: fmean(r[m] for r in rows) for m in METRICS}


def evaluate(samples_dir: Path, index: dict, real: list[Image.Image], clip: Clip) -> tuple[dict, list[dict]]:
    """Summary metrics (per kind, real, and |gen - real| gaps) and one row per (prompt, kind)."""
    samples = index["samples"]
    text_emb = embed_texts(clip, [s["prompt"] for s in samples])
    real_emb = embed_images(clip, real, "clip real")
    real_style = [style_metrics(im) for im in tqdm(real, desc="style real", unit="img")]
    summary: dict = {"real": {**_mean_style(real_style), "count": len(real)}, "gap": {}}
    per_kind: dict[str, list[dict]] = {}
    for kind in KINDS:
        images = sample_images(samples_dir, index, kind)
        emb = embed_images(clip, images, f"clip {kind}")
        styles = [style_metrics(im) for im in tqdm(images, desc=f"style {kind}", unit="img")]
        per_kind[kind] = [{"clip_score": c, **st} for c, st in zip(clip_scores(emb, text_emb), styles)]
        summary[kind] = {"clip_score": fmean(r["clip_score"] for r in per_kind[kind]), "cmmd": cmmd(emb, real_emb),
                         **_mean_style(styles), "count": len(images)}
        summary["gap"][kind] = {m: abs(summary[kind][m] - summary["real"][m]) for m in METRICS}
    rows = [{"prompt": s["prompt"], "kind": kind, "seed": s["seed"], **per_kind[kind][i]}
            for i, s in enumerate(samples) for kind in KINDS]
    return rounded(summary), [rounded(r) for r in rows]


def rounded(obj):
    """6 significant decimals: stable bytes across runs, no float noise in diffs."""
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    return round(obj, 6) if isinstance(obj, float) else obj
