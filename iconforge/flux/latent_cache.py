"""The encoding cache: VAE latents and text embeddings, keyed by content, shared by every experiment.

It lives outside DVC's outputs (train.cache_dir, relative to the repository root:
DVC_ROOT for queued runs, so every experiment shares one), so changing
train.rank or train.lr encodes nothing, while another base model, resolution,
image or caption gets entries of its own:

    image key = sha256(base encoders' fingerprint, dtype, resolution, image bytes)
    text key  = sha256(base encoders' fingerprint, dtype, T5 sequence length, caption)

An entry is one safetensors file named by its key; its metadata holds the
sha256 of its tensor data, checked on every read, so a corrupt or truncated
entry is re-encoded (and counted), never trained on. Entries are written
atomically. Reading an entry marks it used (its mtime): past train.cache_max_gb
the least recently used entries are deleted, never one the current run needs.

Disk cost per entry (bf16, FLUX.1-dev): a 1024 px latent's mean and std are
2 x 16 x 128 x 128 x 2 bytes = 1 MiB; a caption's T5 embeddings 512 tokens x
4096 x 2 bytes = 4 MiB, plus its 768-wide pooled CLIP vector. The padding
tokens are stored too: FLUX's T5 attends to them without a mask, so their
embeddings depend on the caption and dropping them would change the results.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load, save

from iconforge.atomic import sweep_dead_temporaries, write_bytes
from iconforge.errors import StageError
from iconforge.flux.models import model_source, read_base
from iconforge.flux.vae import vae_input

MAX_SEQUENCE_LENGTH = 512  # T5 tokens, FluxPipeline's default at inference
EMPTY_CAPTION = ""
ENCODER_PARTS = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
HASHED_FILE_LIMIT = 256 * 2**20  # bigger weight files are fingerprinted by size and mtime, not read
CHECKSUM = "iconforge.sha256"


@dataclass
class CacheStats:
    """What one run did with the cache (printed and in metrics/train.json)."""
    encoded_images: int = 0
    encoded_captions: int = 0
    reused_images: int = 0
    reused_captions: int = 0
    corrupt_entries: int = 0  # found on read, deleted and re-encoded
    evicted_entries: int = 0


def _key(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p if isinstance(p, bytes) else p.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def encoder_fingerprint(base_dir: Path) -> str:
    """What the encodings depend on: a hub base by id and revision, the tiny one by the digest the base
    stage recorded of its saved pipeline, a local one by the content of its VAE, text encoders and
    tokenizers (huge weight files by size and mtime)."""
    info = read_base(base_dir)
    if info["kind"] == "hub":
        return f"hub:{info['base']}@{info['revision']}"
    if "sha256" in info:  # resolve_base hashed what it saved (tiny): no need to read it again
        return f"{info['kind']}:{info['sha256']}"
    source = model_source(base_dir)
    h = hashlib.sha256()
    for f in sorted(p for part in ENCODER_PARTS for p in (source / part).rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(source)}\0{st.st_size}\0".encode())
        h.update(f.read_bytes() if st.st_size <= HASHED_FILE_LIMIT else str(st.st_mtime_ns).encode())
    return f"{info['kind']}:{h.hexdigest()}"


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """The image file as VAE pixels (iconforge.flux.vae.vae_input: transparency over white, padded square)."""
    with Image.open(path) as im:
        im.load()
        return vae_input(im, resolution)


@dataclass
class EncodingCache:
    root: Path
    scope: str  # encoder fingerprint and storage dtype
    resolution: int
    max_bytes: int
    stats: CacheStats = field(default_factory=CacheStats)

    def image_key(self, data: bytes) -> str:
        return _key("image", self.scope, str(self.resolution), data)

    def text_key(self, caption: str) -> str:
        return _key("text", self.scope, str(MAX_SEQUENCE_LENGTH), caption)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def read(self, key: str) -> dict[str, torch.Tensor] | None:
        """The entry's tensors if present and intact (marking it used); a corrupt one is deleted."""
        path = self.path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            (n,) = struct.unpack("<Q", raw[:8])
            header = json.loads(raw[8:8 + n])
            if header.get("__metadata__", {}).get(CHECKSUM) != hashlib.sha256(raw[8 + n:]).hexdigest():
                raise ValueError("checksum mismatch")
            tensors = load(raw)
        except (struct.error, ValueError, UnicodeDecodeError, RuntimeError):  # truncated, garbled, bit rot
            self.stats.corrupt_entries += 1
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # least recently used = oldest mtime
        return tensors

    def load(self, key: str) -> dict[str, torch.Tensor]:
        """An entry the run has checked before training (read() at setup)."""
        tensors = self.read(key)
        if tensors is None:
            raise StageError(f"{self.path(key)}: encoding cache entry vanished or was corrupted during training; "
                             f"rerun to re-encode it")
        return tensors

    def write(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        blob = save(tensors)
        (n,) = struct.unpack("<Q", blob[:8])
        blob = save(tensors, metadata={CHECKSUM: hashlib.sha256(blob[8 + n:]).hexdigest()})
        write_bytes(self.path(key), blob)  # a full disk: DiskFull, one line naming the entry and the space needed

    def evict(self, keep: set[str]) -> None:
        """Delete least recently used entries until the cache fits max_bytes; `keep` is never deleted.
        First, what killed writers left (a half-written entry under a temporary name)."""
        for folder in (d for d in self.root.iterdir() if d.is_dir()):
            sweep_dead_temporaries(folder)
        files = [(p.stat(), p) for p in self.root.glob("*/*.safetensors")]
        total = sum(st.st_size for st, _ in files)
        for st, p in sorted(files, key=lambda f: (f[0].st_mtime_ns, f[1].name)):
            if total <= self.max_bytes:
                break
            if p.stem not in keep:
                p.unlink(missing_ok=True)
                total -= st.st_size
                self.stats.evicted_entries += 1


class Encoders:
    """The base's VAE and text encoders, loaded on first use and freed by close()."""

    def __init__(self, base_dir: Path, resolution: int, device: torch.device, dtype: torch.dtype):
        self.base_dir, self.resolution, self.device, self.dtype = base_dir, resolution, device, dtype
        self.vae = self.pipe = None

    def _load(self) -> None:
        from diffusers import AutoencoderKL, FluxPipeline

        source = model_source(self.base_dir, self.device)
        # The VAE encodes in full precision (cheap next to the transformer, which is not loaded here).
        self.vae = AutoencoderKL.from_pretrained(source, subfolder="vae", dtype=torch.float32).to(self.device)
        self.pipe = FluxPipeline.from_pretrained(source, transformer=None, vae=self.vae, dtype=self.dtype).to(self.device)

    @torch.no_grad()
    def image(self, path: Path) -> dict[str, torch.Tensor]:
        """The scaled latent distribution FLUX trains on: mean = (mean - shift) * scale, std = std * scale,
        so a latent sample is mean + std * noise. Raises OSError/ValueError for an unreadable image."""
        pixels = load_image(path, self.resolution)
        if self.vae is None:
            self._load()
        cfg = self.vae.config
        dist = self.vae.encode(pixels[None].to(self.device)).latent_dist
        mean = (dist.mean[0] - cfg.shift_factor) * cfg.scaling_factor
        return {"mean": mean.to(self.dtype).cpu().contiguous(),
                "std": (dist.std[0] * cfg.scaling_factor).to(self.dtype).cpu().contiguous()}

    @torch.no_grad()
    def caption(self, text: str) -> dict[str, torch.Tensor]:
        if self.pipe is None:
            self._load()
        embeds, pooled, _ = self.pipe.encode_prompt(prompt=[text], prompt_2=None, device=self.device,
                                                    max_sequence_length=MAX_SEQUENCE_LENGTH)
        return {"prompt_embeds": embeds[0].to(self.dtype).cpu().contiguous(),
                "pooled": pooled[0].to(self.dtype).cpu().contiguous()}

    def close(self) -> None:
        if self.vae is not None:
            from diffusers.training_utils import free_memory

            self.vae = self.pipe = None
            free_memory()
