"""The base's VAE: how images go in, and training the tiny preset's VAE on icons.

`vae_input` is the one conversion of an image to VAE pixels (transparency over
white, padded square) outside training's latent cache; `scaled_latents` maps
pixels to the latents the transformer sees, (mean - shift) * scale.

The random-weight VAE of `tiny` turns every icon into the same coloured noise,
so a LoRA trained on its latents has nothing visible to learn. `train_vae` fits
it to the training split (reconstruction MSE plus a small KL term, Adam, random
minibatches), then sets the VAE's shift and scale to the mean and standard
deviation of the training latents, as FLUX.1-dev's VAE config does for its own
data, so the transformer sees centred, unit-scale latents. Deterministic: one
torch thread and every draw from a generator seeded by `SEED`, so the same
images and steps give the same weights, byte for byte.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image, ImageOps
from tqdm import tqdm

from iconforge.dataset.imagefolder import read_metadata
from iconforge.errors import InputError

SEED = 0
RESOLUTION = 64  # px the tiny VAE trains at; it is convolutional, so what it learns carries to other sizes
BATCH = 8
LR = 2e-3
KL_WEIGHT = 1e-4  # keeps the posterior near N(0, 1) without blurring reconstructions


def vae_input(img: Image.Image, size: int) -> torch.Tensor:
    """RGB in [-1, 1], CHW, size x size: transparency over white, padded square with white."""
    rgba = img.convert("RGBA")
    rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    rgb = ImageOps.pad(rgb, (size, size), method=Image.Resampling.LANCZOS, color=(255, 255, 255))
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()


@torch.no_grad()
def scaled_latents(vae: AutoencoderKL, pixels: torch.Tensor, batch: int = BATCH) -> torch.Tensor:
    """The latents FLUX's transformer sees for `pixels` (N, 3, H, W): (posterior mean - shift) * scale."""
    device = next(vae.parameters()).device
    means = torch.cat([vae.encode(pixels[i:i + batch].to(device)).latent_dist.mean.float().cpu()
                       for i in range(0, len(pixels), batch)])
    return (means - vae.config.shift_factor) * vae.config.scaling_factor


def load_split(split_dir: Path, size: int = RESOLUTION) -> torch.Tensor:
    """Every image of an imagefolder split as VAE pixels: (N, 3, size, size)."""
    rows = read_metadata(split_dir)
    if not rows:
        raise InputError(f"{split_dir}: no images to train the tiny VAE on")
    pixels = []
    for r in tqdm(rows, desc="vae images", unit="img"):
        with Image.open(Path(split_dir) / r["file_name"]) as im:
            pixels.append(vae_input(im, size))
    return torch.stack(pixels)


def train_vae(vae: AutoencoderKL, pixels: torch.Tensor, steps: int) -> list[float]:
    """Fit `vae` in place to `pixels` for `steps` Adam steps, then centre and scale its latents;
    returns the loss of every step."""
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # another thread count may sum in another order: other bytes
    try:
        g = torch.Generator().manual_seed(SEED)
        opt = torch.optim.Adam(vae.parameters(), lr=LR)
        vae.train()
        for _ in tqdm(range(steps), desc="train tiny vae", unit="step"):
            x = pixels[torch.randint(len(pixels), (BATCH,), generator=g)]
            dist = vae.encode(x).latent_dist
            z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
            loss = F.mse_loss(vae.decode(z).sample, x) + KL_WEIGHT * dist.kl().mean() / z[0].numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        vae.eval()
        vae.register_to_config(shift_factor=0.0, scaling_factor=1.0)
        raw = scaled_latents(vae, pixels)
        vae.register_to_config(shift_factor=round(raw.mean().item(), 4), scaling_factor=round(1 / raw.std().item(), 4))
    finally:
        torch.set_num_threads(threads)
    return losses

