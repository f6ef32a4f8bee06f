"""Pre-binned histograms and summaries: DVC has no histogram template, so eda writes one row per
bin (label, bounds, count) and .dvc/plots/histogram.json draws the rows as bars, in order."""
from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Iterable, Sequence

_MANTISSAS = (1.0, 2.0, 2.5, 5.0)


def nice_step(raw: float, integer: bool = False) -> float:
    """The smallest round width (1, 2, 2.5 or 5 x 10^k; a whole number for integer data) >= raw."""
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    k = math.floor(math.log10(raw))
    for exp in (k, k + 1):
        for m in _MANTISSAS:
            step = m * 10.0 ** exp
            if step >= raw * (1 - 1e-12) and (not integer or step >= 1 and step == int(step)):
                return step
    return max(10.0 ** (k + 2), 1.0) if integer else 10.0 ** (k + 2)


def _fmt(x: float, step: float) -> str:
    """x to the precision its bin width needs (no float noise: 0.30000000000000004 -> 0.3; no 1e+08)."""
    decimals = max(0, 2 - math.floor(math.log10(step)))
    return f"{round(x, decimals):.15g}"


def histogram(values: Sequence[float], max_bins: int, integer: bool = False,
              span: tuple[float, float] | None = None) -> list[dict]:
    """Bins of one round width covering min..max (or `span`, when the values' range is known, such
    as 0..1 for a share), empty ones included: at most max_bins + 1, since the first bin starts at a
    multiple of the width. Rows: bin (label), lo, hi (lo <= v < hi; the last float bin holds its hi
    too), images. Integer bins are labelled by the whole numbers they hold: 10-19."""
    if not values:
        return []
    lo, hi = span or (min(values), max(values))
    step = nice_step((hi - lo) / max_bins, integer)
    start = math.floor(lo / step + 1e-9) * step  # 1e-9: 0.3 / 0.1 is 2.9999999999999996
    if integer:
        n = int(math.floor((hi - start) / step + 1e-9)) + 1
    else:
        n = max(1, int(math.ceil((hi - start) / step - 1e-9)))
    counts = [0] * n
    for v in values:
        counts[min(n - 1, max(0, int(math.floor((v - start) / step + 1e-9))))] += 1
    rows = []
    for i, c in enumerate(counts):
        a, b = start + i * step, start + (i + 1) * step
        if integer:
            label = _fmt(a, step) if step == 1 else f"{_fmt(a, step)}-{_fmt(b - 1, step)}"
        else:
            label = f"{_fmt(a, step)}-{_fmt(b, step)}"
        rows.append({"bin": label, "lo": _fmt(a, step), "hi": _fmt(b, step), "images": c})
    return rows


def counts(values: Iterable[str], column: str) -> list[dict]:
    """Rows {column: value, images: n}, most frequent first, ties alphabetical."""
    return [{column: k, "images": n} for k, n in sorted(Counter(values).items(), key=lambda kv: (-kv[1], kv[0]))]


def summary(values: Sequence[float]) -> dict:
    """min, median, mean, max (rounded to 4 decimals); {} for no values."""
    if not values:
        return {}
    return {"min": round(float(min(values)), 4), "median": round(float(statistics.median(values)), 4),
            "mean": round(float(statistics.fmean(values)), 4), "max": round(float(max(values)), 4)}

HISTOGRAM_COLUMNS = ["bin", "lo", "hi", "images"]
