"""FID, KID and Inception Score of the samples, on the standard FID Inception-v3.

Features come from torch-fidelity's `FeatureExtractorInceptionV3`, the
TensorFlow-compatible port of the 2015-12-05 Inception graph that FID, KID and
IS were defined on (the pt_inception-2015-12-05 weights; torchmetrics uses the
same extractor). With those weights the numbers are comparable with published
ones, sample counts permitting. Weights are only ever read from the local file
`evaluate.inception_weights`; nothing is downloaded at run time. On the tiny
preset (smoke run) the network is randomly initialised from a fixed seed.

- FID (Heusel et al. 2017): |mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2)) of
  the 2048-d pool features' means and covariances. Its estimate from n samples
  is biased upwards roughly like 1/n, and with n below the feature dimension
  (2048) the covariance is singular; so it is refused below
  `evaluate.fid_min_samples` images per set.
- KID (Binkowski et al. 2018): unbiased MMD^2 with the polynomial kernel
  k(a, b) = (a.b / d + 1)^3 on the same features, averaged over random subsets
  of equal size (mean and std over subsets). Unbiased at any size >= 2, so it is
  the FID-like number to read for small sample sets.
- IS (Salimans et al. 2016): images shuffled (fixed seed) and cut into
  `evaluate.is_splits` splits; per split exp(mean_x KL(p(y|x) || p(y))) with p(y)
  the split's mean of p(y|x); mean and std over splits. p(y|x) is the softmax of
  the 1008 logits without the final bias, as in the reference implementation.
  Within a split of n images IS <= n (it is the exponential of a mutual
  information between the image index and the label), and one image per split
  gives exactly 1.0; so it is refused below `evaluate.is_min_per_split` images
  per split.
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from tqdm import tqdm

from iconforge.errors import StageError
from iconforge.evaluate.metrics import rounded
from iconforge.flux.vae import vae_input

WEIGHTS_KEY = "evaluate.inception_weights"
WEIGHTS_FILE = URL_INCEPTION_V3.rsplit("/", 1)[-1]  # weights-inception-2015-12-05-6726825d.pth
STANDARD_SHA256_PREFIX = "6726825d"  # the hash prefix in that file name (torch.hub's convention)
RANDOM_INCEPTION_SEED = 0
KID_SEED = 0
IS_SHUFFLE_SEED = 0
KID_MIN_SAMPLES = 2  # the unbiased estimator leaves out self-pairs: fewer than 2 leaves nothing
# The documented minimums (params.yaml defaults); eval.json says when a run set lower ones.
RECOMMENDED_FID_MIN_SAMPLES = 2048  # = the feature dimension: below it the covariance estimate is singular
RECOMMENDED_IS_MIN_PER_SPLIT = 50  # a split of n images scores at most n: 50 keeps that cap well above one style's IS
POOL, LOGITS = "2048", "logits_unbiased"
BATCH = 16


class InceptionWeightsError(StageError, RuntimeError):
    """The configured Inception weights cannot be loaded; the message says what to do."""


class _Extractor(FeatureExtractorInceptionV3):
    """torch-fidelity's extractor, built without its weight loading (which downloads when given no path):
    the constructor's own load is handed None and skipped; real weights are loaded afterwards."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        if state_dict is None:
            return None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _no_weights() -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(None, buf)
    buf.seek(0)
    return buf


@dataclass(frozen=True)
class Inception:
    model: torch.nn.Module
    device: str
    weights: str  # the file, or "random-init"
    sha256: str | None  # of the weights file

    @property
    def standard(self) -> bool:
        """The published FID weights: numbers comparable with papers (given enough samples)."""
        return self.sha256 is not None and self.sha256.startswith(STANDARD_SHA256_PREFIX)


def _random_init(model: torch.nn.Module, seed: int = RANDOM_INCEPTION_SEED) -> None:
    """He-normal weights from `seed` (batch norms stay identity in eval mode). PyTorch's default init
    shrinks activations through Inception's depth to ~1e-8, which would round every number to 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()


def _how_to() -> str:
    return (f"Download {WEIGHTS_FILE} on a machine with network ({URL_INCEPTION_V3}), copy it here and set "
            f"{WEIGHTS_KEY} to its path, e.g. dvc exp run -S {WEIGHTS_KEY}=/path/to/{WEIGHTS_FILE}")


def load_inception(weights: str | None, device: str = "cpu") -> Inception:
    """The FID Inception-v3 with the weights in the local file `weights`;
    None = random weights from a fixed seed (the tiny preset's smoke run)."""
    if weights is None:
        model = _Extractor("inception-v3-compat", [POOL, LOGITS], feature_extractor_weights_path=_no_weights())
        _random_init(model)
        return Inception(model.to(device), device, "random-init", None)
    if not weights.strip():
        raise InceptionWeightsError(f"{WEIGHTS_KEY} is empty: FID, KID and Inception Score need the FID "
                                    f"Inception-v3 weights as a local file (never downloaded at run time). "
                                    f"{_how_to()}")
    path = Path(weights)
    if not path.is_file():
        raise InceptionWeightsError(f"{WEIGHTS_KEY}={weights!r}: no such file. {_how_to()}")
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    model = _Extractor("inception-v3-compat", [POOL, LOGITS], feature_extractor_weights_path=_no_weights())
    try:
        model.load_state_dict(_state_dict(data, model))
    except Exception as e:  # unpickling and state-dict errors come in many types; all mean "not this file"
        why = " ".join(str(e).split())[:300]
        raise InceptionWeightsError(f"{WEIGHTS_KEY}={weights!r}: not a state dict of the FID Inception-v3 "
                                    f"({type(e).__name__}: {why}). {_how_to()}") from e
    return Inception(model.to(device), device, str(path), sha256)


def _state_dict(data: bytes, model: torch.nn.Module) -> dict:
    """The file's tensors, checked against the network's names. Loaded with weights_only: no code in the
    file runs, whatever its name or hash (a hash prefix is 32 bits: no proof of where a file came from)."""
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"the file holds a {type(state).__name__}, not a dict of tensors")
    expected = model.state_dict().keys()
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        raise ValueError(f"{len(missing)} of the network's tensors are not in it (e.g. {min(missing, default='-')}), "
                         f"{len(unexpected)} of its tensors are not the network's "
                         f"(e.g. {min(unexpected, default='-')})")
    return state


def _uint8(images: list[Image.Image], size: int) -> torch.Tensor:
    """RGB uint8, N x 3 x size x size: transparency over white, padded square, as the VAE sees them."""
    return torch.stack([((vae_input(im, size) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
                        for im in images])


@torch.inference_mode()
def features(inception: Inception, images: list[Image.Image], size: int,
             desc: str = "inception") -> tuple[torch.Tensor, torch.Tensor]:
    """(pool features N x 2048, logits N x 1008), float64. Images are first brought to `size` (the samples'),
    so generated and real sets differ in content, not resolution; the extractor then resizes to 299."""
    pools, logits = [], []
    for i in tqdm(range(0, len(images), BATCH), desc=desc, unit="batch"):
        pool, logit = inception.model(_uint8(images[i:i + BATCH], size).to(inception.device))
        pools.append(pool.double().cpu())
        logits.append(logit.double().cpu())
    return torch.cat(pools), torch.cat(logits)


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr((s1 s2)^(1/2)), with tr((s1 s2)^(1/2)) = sum of the square roots
    of the eigenvalues of the symmetric PSD s1^(1/2) s2 s1^(1/2) (same spectrum as s1 s2)."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def fid(x: torch.Tensor, y: torch.Tensor) -> float:
    """FID between feature sets x (m, d) and y (n, d): sample means and unbiased (n - 1) covariances."""
    x, y = x.double().numpy(), y.double().numpy()
    return frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


def polynomial_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3: within-set means over i != j, cross mean over all pairs."""
    x, y = x.double(), y.double()
    d = x.shape[1]

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.T / d + 1) ** 3

    def within(a: torch.Tensor) -> torch.Tensor:
        m = len(a)
        kk = k(a, a)
        return (kk.sum() - kk.diagonal().sum()) / (m * (m - 1))

    return float(within(x) + within(y) - 2 * k(x, y).mean())


def kid(x: torch.Tensor, y: torch.Tensor, subset_size: int, subsets: int,
        seed: int = KID_SEED) -> tuple[float, float, int, int]:
    """(mean, std, subset size, subsets): polynomial MMD^2 over `subsets` pairs of random subsets of
    min(subset_size, len(x), len(y)) rows each, drawn without replacement from a fixed seed. When that
    size is both whole sets there is one distinct pair, so it is computed once (std 0)."""
    size = min(subset_size, len(x), len(y))
    if size < KID_MIN_SAMPLES:
        raise ValueError(f"KID needs at least {KID_MIN_SAMPLES} features per set, got {len(x)} and {len(y)}")
    if size == len(x) == len(y):
        return polynomial_mmd2(x, y), 0.0, size, 1
    rng = np.random.default_rng(seed)
    values = [polynomial_mmd2(x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values)), size, subsets


def inception_score(logits: torch.Tensor, splits: int, seed: int | None = IS_SHUFFLE_SEED) -> tuple[float, float]:
    """(mean, std) over `splits` splits of exp(mean_x KL(p(y|x) || p(y))), p(y) = the split's mean p(y|x).
    Rows are shuffled with `seed` first (None: kept in order); split i holds rows [i N / s, (i + 1) N / s)."""
    logits = logits.double()
    n = len(logits)
    if seed is not None:
        logits = logits[torch.from_numpy(np.random.default_rng(seed).permutation(n))]
    log_p = logits.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits:(i + 1) * n // splits]
        log_marginal = part.logsumexp(0) - math.log(len(part))  # log of the mean p(y|x), no underflow
        p = part.exp()
        kl = torch.where(p > 0, p * (part - log_marginal), 0.0).sum(1)  # 0 log 0 = 0
        scores.append(float(kl.mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


@dataclass(frozen=True)
class Limits:
    """The evaluate.* params the scores depend on."""
    fid_min_samples: int
    is_splits: int
    is_min_per_split: int
    kid_subset_size: int
    kid_subsets: int


def _counted(counts: dict[str, int]) -> str:
    """`12 lora samples, 12 base samples, 32 held-out images`"""
    return ", ".join(f"{n} {'held-out images' if k == 'real' else f'{k} samples'}" for k, n in counts.items())


def fid_refusal(counts: dict[str, int], minimum: int) -> str | None:
    """Why FID is not reported for sets of these sizes, or None."""
    if min(counts.values()) >= minimum:
        return None
    got = _counted(counts)
    return (f"FID needs >= {minimum} images per set (evaluate.fid_min_samples); got {got}. FID from few images is "
            f"biased upwards (roughly like 1/n), and below {RECOMMENDED_FID_MIN_SAMPLES} images, the feature "
            f"dimension, the covariance estimate is singular. KID is unbiased at any size: read it instead")


def is_refusal(count: int, splits: int, min_per_split: int) -> str | None:
    """Why the Inception Score is not reported for `count` images, or None."""
    if count // splits >= min_per_split:
        return None
    return (f"Inception Score needs >= {min_per_split} images per split x {splits} splits = "
            f"{min_per_split * splits} (evaluate.is_min_per_split x evaluate.is_splits); got {count}, "
            f"{count // splits} per split. A split of n images scores at most n, and one image per split "
            f"scores exactly 1.0 whatever the images")


def kid_refusal(counts: dict[str, int]) -> str | None:
    if min(counts.values()) >= KID_MIN_SAMPLES:
        return None
    got = _counted(counts)
    return f"KID needs >= {KID_MIN_SAMPLES} images per set (the unbiased estimator leaves out self-pairs); got {got}"


NOT_CONFIGURED = (f"{WEIGHTS_KEY} is empty, so FID, KID and Inception Score were not computed (the other "
                  f"metrics were). {_how_to()}")


def _non_finite(what: str) -> str:
    return (f"the Inception features of the {what} are not finite (NaN or inf): broken images or weights; "
            f"not reported rather than written as NaN")


def inception_metrics(inception: Inception | None, generated: dict[str, list[Image.Image]], real: list[Image.Image],
                      size: int, limits: Limits) -> tuple[dict[str, dict], dict]:
    """Per generated kind {fid, kid, kid_std, inception_score, inception_score_std} against `real`, None where
    refused, and a summary of the settings, counts and refusal reasons. All images are brought to `size`.
    inception None (no weights configured): all three refused, saying how to configure them."""
    counts = {**{kind: len(images) for kind, images in generated.items()}, "real": len(real)}
    scores: dict[str, dict] = {kind: dict.fromkeys(("fid", "kid", "kid_std", "inception_score", "inception_score_std"))
                               for kind in generated}
    kid_used = [None, None]  # subset size and count actually used
    if inception is None:
        refused = dict.fromkeys(("fid", "kid", "inception_score"), NOT_CONFIGURED)
        generated = {}  # nothing to compute
    else:
        real_pool, _ = features(inception, real, size, "inception real")
        refused = {"fid": fid_refusal(counts, limits.fid_min_samples), "kid": kid_refusal(counts),
                   "inception_score": None}
        if not torch.isfinite(real_pool).all():
            refused = dict.fromkeys(refused, _non_finite("held-out images"))
            generated = {}
    for kind, images in generated.items():
        pool, logits = features(inception, images, size, f"inception {kind}")
        s = scores[kind]
        if not (torch.isfinite(pool).all() and torch.isfinite(logits).all()):
            for key, why in refused.items():
                refused[key] = why or _non_finite(f"{kind} samples")
            continue
        if refused["fid"] is None:
            s["fid"] = fid(pool, real_pool)
        if refused["kid"] is None:
            s["kid"], s["kid_std"], *kid_used = kid(pool, real_pool, limits.kid_subset_size, limits.kid_subsets)
        why = is_refusal(len(images), limits.is_splits, limits.is_min_per_split)
        if why is None:
            s["inception_score"], s["inception_score_std"] = inception_score(logits, limits.is_splits)
        else:
            refused["inception_score"] = why
    lowered = [f"evaluate.{k}={v} (documented minimum {rec})" for k, v, rec in (
        ("fid_min_samples", limits.fid_min_samples, RECOMMENDED_FID_MIN_SAMPLES),
        ("is_min_per_split", limits.is_min_per_split, RECOMMENDED_IS_MIN_PER_SPLIT)) if v < rec]
    info = {"weights": inception and inception.weights, "weights_sha256": inception and inception.sha256,
            "standard_weights": bool(inception and inception.standard),
            "size": size, "count": counts, "fid_min_samples": limits.fid_min_samples,
            "is_splits": limits.is_splits, "is_min_per_split": limits.is_min_per_split,
            "kid_subset_size": kid_used[0], "kid_subsets": kid_used[1], "refused": refused,
            "below_documented_minimums": lowered}
    return rounded(scores), rounded(info)
