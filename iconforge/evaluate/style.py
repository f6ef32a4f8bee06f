"""Weight-free style metrics: does a generated image look like a flat vector icon?

Every image is first put on white and resized to one analysis size, so icons
rendered at different resolutions (real 1024 px rasters, 64 px tiny-preset
samples) are measured on equal terms.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from iconforge.evaluate.trace import count_paths, trace_svg

ANALYSIS_SIZE = 256
PALETTE_BITS = 4  # 16 levels per channel: merges anti-aliasing and noise into their flat colour
PALETTE_COVERAGE = 0.95
WHITE_MIN = 240  # every channel >= this counts as white background
NOISE_MAX, SHARP_MIN = 0.02, 0.1  # luminance step between neighbours: below = flat / above = crisp

METRICS = ("palette_size", "sharp_edge_fraction", "white_background_ratio", "path_count")


def normalize(img: Image.Image) -> Image.Image:
    """RGB on a white background at ANALYSIS_SIZE x ANALYSIS_SIZE."""
    img = img.convert("RGBA")
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, img).convert("RGB")
    if rgb.size != (ANALYSIS_SIZE, ANALYSIS_SIZE):
        # BOX: area averaging, no ringing that would read as soft edges; upscaling stays blocky
        rgb = rgb.resize((ANALYSIS_SIZE, ANALYSIS_SIZE), Image.Resampling.BOX)
    return rgb


def palette_size(rgb: np.ndarray) -> int:
    """How many quantized colours it takes to cover PALETTE_COVERAGE of the pixels."""
    q = (rgb >> (8 - PALETTE_BITS)).astype(np.int64)
    codes = (q[..., 0] << (2 * PALETTE_BITS)) | (q[..., 1] << PALETTE_BITS) | q[..., 2]
    counts = np.sort(np.bincount(codes.ravel()))[::-1]
    return int(np.searchsorted(np.cumsum(counts), PALETTE_COVERAGE * codes.size) + 1)


def sharp_edge_fraction(rgb: np.ndarray) -> float:
    """Share of the image's luminance change that happens in crisp one-pixel steps.
    Vector art changes colour at once; soft shading spreads change over many small steps."""
    lum = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    steps = np.concatenate([np.abs(np.diff(lum, axis=0)).ravel(), np.abs(np.diff(lum, axis=1)).ravel()])
    change = steps[steps > NOISE_MAX].sum()
    return float(steps[steps > SHARP_MIN].sum() / change) if change > 0 else 0.0


def white_background_ratio(rgb: np.ndarray) -> float:
    return float((rgb.min(axis=-1) >= WHITE_MIN).mean())


def style_metrics(img: Image.Image) -> dict[str, float]:
    norm = normalize(img)
    rgb = np.asarray(norm)
    return {
        "palette_size": palette_size(rgb),
        "sharp_edge_fraction": sharp_edge_fraction(rgb),
        "white_background_ratio": white_background_ratio(rgb),
        "path_count": count_paths(trace_svg(norm)),
    }
