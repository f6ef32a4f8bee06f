"""A distribution distance that needs no downloaded weights: MMD in the base model's own latent space.

Every image becomes the latent FLUX's transformer sees for it (the base VAE's
posterior mean, shifted and scaled, flattened). The distance between two sets
of latents is the unbiased estimate of the squared maximum mean discrepancy
(Gretton et al. 2012, the U-statistic), with a Gaussian kernel
k(a, b) = exp(-|a - b|^2 / (2 sigma^2)). Its expectation is 0 when both sets
come from one distribution (single estimates can then be slightly negative).

sigma is set once, by the median heuristic: the median pairwise distance over
the base's samples and the held-out icons together; every comparison (LoRA and
base, to the icons and to the control set) uses that one value, so a change of
ratio is a change of distributions, not of the ruler.

The control set is generic flat shapes on coloured backgrounds, drawn with
Pillow from a fixed seed. A LoRA that learned the icons' look moves towards the
held-out icons and not towards the control; one that only shrank the variance
of its samples moves towards both.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image, ImageDraw

from iconforge.flux.models import model_source
from iconforge.flux.vae import scaled_latents, vae_input

ESTIMATOR = ("unbiased MMD^2 (U-statistic) between VAE latents, Gaussian kernel, sigma = median pairwise "
             "distance over base samples + held-out icons (fixed for every comparison)")
CONTROL_SEED = 0


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, sigma: float) -> float:
    """Unbiased MMD^2 between row sets x (m, d) and y (n, d), m, n >= 2."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 items per set, got {len(x)} and {len(y)}")
    x, y = x.double().flatten(1), y.double().flatten(1)

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * sigma ** 2))

    def within(a: torch.Tensor) -> torch.Tensor:  # mean over i != j: the diagonal k(a_i, a_i) = 1 is left out
        m = len(a)
        return (k(a, a).sum() - m) / (m * (m - 1))

    return float(within(x) + within(y) - 2 * k(x, y).mean())


def median_bandwidth(*sets: torch.Tensor) -> float:
    """The median heuristic: median distance over all distinct pairs of the pooled rows."""
    pooled = torch.cat([s.double().flatten(1) for s in sets])
    d = torch.cdist(pooled, pooled)
    i, j = torch.triu_indices(len(pooled), len(pooled), offset=1)
    return float(d[i, j].median())


def control_shapes(n: int, size: int, seed: int = CONTROL_SEED) -> list[Image.Image]:
    """n generic pictures: 1-4 flat ellipses, rectangles or triangles on a coloured background."""
    rng = np.random.default_rng(seed)

    def colour() -> tuple[int, int, int]:
        return tuple(int(c) for c in rng.integers(0, 256, 3))

    images = []
    for _ in range(n):
        im = Image.new("RGB", (size, size), colour())
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 5))):
            x0, y0 = (int(v) for v in rng.integers(0, size * 3 // 4, 2))
            x1, y1 = (int(v) for v in rng.integers(size // 4, size + 1, 2))
            box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            shape = int(rng.integers(0, 3))
            if shape == 0:
                draw.ellipse(box, fill=colour())
            elif shape == 1:
                draw.rectangle(box, fill=colour())
            else:
                draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour())
        images.append(im)
    return images


def load_vae(base_dir: Path, device: str = "cpu") -> AutoencoderKL:
    """The VAE of the base the base stage resolved, in fp32."""
    return AutoencoderKL.from_pretrained(model_source(base_dir, device), subfolder="vae",
                                         dtype=torch.float32).to(device).eval()


def latents(vae: AutoencoderKL, images: list[Image.Image], size: int) -> torch.Tensor:
    return scaled_latents(vae, torch.stack([vae_input(im, size) for im in images])).flatten(1)


def latent_distances(vae: AutoencoderKL, lora: list[Image.Image], base: list[Image.Image],
                     real: list[Image.Image], size: int) -> dict:
    """MMD^2 of the LoRA's and the base's samples to the held-out icons and to as many control shapes,
    all at the samples' `size`, with their LoRA / base ratios."""
    z = {name: latents(vae, images, size) for name, images in
         (("lora", lora), ("base", base), ("icons", real), ("control", control_shapes(len(real), size)))}
    sigma = median_bandwidth(z["base"], z["icons"])
    out: dict = {"estimator": ESTIMATOR, "sigma": round(sigma, 6), "size": size,
                 "count": {name: len(v) for name, v in z.items()}}
    for ref in ("icons", "control"):
        d = {kind: mmd2_unbiased(z[kind], z[ref], sigma) for kind in ("lora", "base")}
        ratio = d["lora"] / d["base"] if d["base"] > 0 else None  # None: the base is already indistinguishable
        out[ref] = {**{k: round(v, 6) for k, v in d.items()}, "ratio": None if ratio is None else round(ratio, 6)}
    return out


def ratio_text(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"
