"""Encode the training set once, before the training loop.

Every image's VAE latent distribution and every caption's CLIP pooled + T5
embeddings (and the empty caption's, for caption dropout) are computed one at
a time and cached on disk under a key of their content, then the VAE and the
text encoders are freed, so only the transformer stays resident while training.
Entries are reused across runs (a resumed or re-run stage encodes nothing) and
entries no longer needed are pruned.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from diffusers import AutoencoderKL, FluxPipeline
from diffusers.training_utils import free_memory
from safetensors.torch import load_file, save
from tqdm import tqdm

from iconforge.atomic import write_bytes
from iconforge.flux.models import model_source

MAX_SEQUENCE_LENGTH = 512  # T5 tokens, FluxPipeline's default at inference
EMPTY_CAPTION = ""


@dataclass(frozen=True)
class Example:
    file: str  # image path relative to the dataset split folder
    caption: str
    image_key: str
    text_key: str


def _key(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p if isinstance(p, bytes) else p.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def text_key(scope: str, caption: str) -> str:
    return _key("text", scope, str(MAX_SEQUENCE_LENGTH), caption)


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """RGB in [-1, 1], CHW, at `resolution` square: transparency over white, as icons are shown."""
    with Image.open(path) as im:
        im.load()
        rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    rgb = ImageOps.pad(rgb, (resolution, resolution), method=Image.Resampling.LANCZOS, color=(255, 255, 255))
    arr = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _entry(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / key[:2] / f"{key}.safetensors"


def load_entry(cache_dir: Path, key: str) -> dict[str, torch.Tensor]:
    return load_file(_entry(cache_dir, key))


def build_cache(rows: list[dict], split_dir: Path, base_dir: Path, base_id: str, resolution: int,
                cache_dir: Path, device: torch.device, dtype: torch.dtype) -> tuple[list[Example], str, list[dict]]:
    """Cache latents and embeddings for `rows`; returns (examples, empty-caption key, skipped images).

    A latent entry holds the scaled distribution FLUX trains on: mean = (mean - shift) * scale,
    std = std * scale, so a latent sample is mean + std * noise.
    """
    scope = f"{base_id}|{dtype}"  # entries are stored in `dtype`: a bf16 entry must not feed an fp32 run
    examples, skipped, images = [], [], {}
    for row in rows:
        path = Path(split_dir) / row["file_name"]
        try:
            data = path.read_bytes()
        except OSError as e:
            skipped.append({"file": str(path), "reason": f"unreadable: {e.strerror or e}"})
            continue
        ikey = _key("image", scope, str(resolution), data)
        images[ikey] = path
        examples.append(Example(row["file_name"], row["text"], ikey, text_key(scope, row["text"])))
    empty = text_key(scope, EMPTY_CAPTION)
    captions = {e.text_key: e.caption for e in examples} | {empty: EMPTY_CAPTION}
    todo_img = sorted(k for k in images if not _entry(cache_dir, k).is_file())
    todo_txt = sorted(k for k in captions if not _entry(cache_dir, k).is_file())
    if todo_img or todo_txt:
        source = model_source(base_dir, device)
        # The VAE encodes in full precision (cheap next to the transformer, which is not loaded here).
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", dtype=torch.float32).to(device)
        pipe = FluxPipeline.from_pretrained(source, transformer=None, vae=vae, dtype=dtype).to(device)
        cfg = vae.config
        with torch.no_grad():
            for k in tqdm(todo_img, desc="cache latents", unit="img"):
                try:
                    pixels = load_image(images[k], resolution)
                except (OSError, ValueError, Image.DecompressionBombError) as e:
                    skipped.append({"file": str(images[k]), "reason": f"not a readable image: {e}"})
                    continue
                dist = vae.encode(pixels[None].to(device)).latent_dist
                mean = (dist.mean[0] - cfg.shift_factor) * cfg.scaling_factor
                write_bytes(_entry(cache_dir, k), save({"mean": mean.to(dtype).cpu().contiguous(),
                                                        "std": (dist.std[0] * cfg.scaling_factor).to(dtype).cpu().contiguous()}))
            for k in tqdm(todo_txt, desc="cache captions", unit="caption"):
                embeds, pooled, _ = pipe.encode_prompt(prompt=[captions[k]], prompt_2=None, device=device,
                                                       max_sequence_length=MAX_SEQUENCE_LENGTH)
                write_bytes(_entry(cache_dir, k), save({"prompt_embeds": embeds[0].to(dtype).cpu().contiguous(),
                                                        "pooled": pooled[0].to(dtype).cpu().contiguous()}))
        del pipe, vae
        free_memory()
    bad = {s["file"] for s in skipped}
    examples = [e for e in examples if str(Path(split_dir) / e.file) not in bad]
    _prune(cache_dir, {e.image_key for e in examples} | set(captions))
    return examples, empty, skipped


def _prune(cache_dir: Path, keep: set[str]) -> None:
    for f in sorted(Path(cache_dir).glob("*/*.safetensors")):
        if f.stem not in keep:
            f.unlink()

