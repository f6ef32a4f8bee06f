"""The latent-space distance of evaluate: unbiased MMD^2, one median-heuristic bandwidth, control shapes."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from iconforge.evaluate.latent_mmd import (control_shapes, latent_distances, latents, median_bandwidth,
                                           mmd2_unbiased)
from iconforge.flux.tiny import build_tiny_pipeline


def draws(seed: int, n: int = 12, d: int = 8, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def on_white(n: int, offset: int) -> list[Image.Image]:
    images = []
    for i in range(offset, offset + n):
        im = Image.new("RGB", (32, 32), "white")
        ImageDraw.Draw(im).ellipse((4 + i % 5, 6, 26, 28 - i % 4), fill=(40 * (i % 6), 120, 200))
        images.append(im)
    return images


def noise(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def test_unbiased_mmd_is_zero_in_expectation_for_one_distribution_and_positive_for_two():
    same = [mmd2_unbiased(draws(2 * i), draws(2 * i + 1), sigma=4.0) for i in range(200)]
    apart = [mmd2_unbiased(draws(2 * i), draws(2 * i + 1, shift=1.0), sigma=4.0) for i in range(200)]
    assert min(same) < 0 < max(same)  # single estimates straddle 0: no positive bias as in the V-statistic
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))
    assert min(apart) > 0 and np.mean(apart) > 20 * abs(np.mean(same))
    x, y = draws(0), draws(1, shift=1.0)
    assert mmd2_unbiased(x, y, 4.0) == pytest.approx(mmd2_unbiased(y, x, 4.0))
    assert mmd2_unbiased(x, y, 4.0) > mmd2_unbiased(x, draws(1, shift=0.5), 4.0)  # closer set, smaller
    with pytest.raises(ValueError, match="at least 2"):
        mmd2_unbiased(x[:1], y, 4.0)


def test_median_bandwidth_is_the_median_pairwise_distance():
    points = torch.tensor([[0.0], [1.0], [3.0]])  # distances 1, 2, 3
    assert median_bandwidth(points[:2], points[2:]) == 2.0


def test_control_shapes_are_deterministic_and_not_on_white():
    a, b = control_shapes(6, 32), control_shapes(6, 32)
    assert [im.tobytes() for im in a] == [im.tobytes() for im in b]
    assert len({im.getpixel((0, 0)) for im in a}) > 1 and all(im.size == (32, 32) for im in a)


def test_latent_distances_use_one_bandwidth_from_base_and_icons():
    vae = build_tiny_pipeline().vae
    icons, lora, base = on_white(4, 0), on_white(3, 10), [noise(i) for i in range(3)]
    out = latent_distances(vae, lora, base, icons, 32)
    z = {k: latents(vae, v, 32) for k, v in (("lora", lora), ("base", base), ("icons", icons))}
    sigma = median_bandwidth(z["base"], z["icons"])
    assert out["sigma"] == round(sigma, 6) and out["size"] == 32 and "unbiased" in out["estimator"]
    assert out["icons"]["lora"] == round(mmd2_unbiased(z["lora"], z["icons"], sigma), 6)
    assert out["count"] == {"lora": 3, "base": 3, "icons": 4, "control": 4}
    assert out["icons"]["base"] > 0 and out["icons"]["ratio"] == pytest.approx(
        out["icons"]["lora"] / out["icons"]["base"], rel=1e-4)
    for ref in ("icons", "control"):  # no ratio to a base already indistinguishable from the reference
        assert (out[ref]["ratio"] is None) == (out[ref]["base"] <= 0)
