"""FID, KID and Inception Score: the formulas against closed forms and direct computations, the refusals
below the documented minimums, the Inception weights' clear errors, and the smoke path on tiny images."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image, ImageDraw
from torch_fidelity.metric_fid import fid_statistics_to_metric
from torch_fidelity.metric_kid import kernel_mmd

from iconforge.evaluate.inception import (RECOMMENDED_FID_MIN_SAMPLES, RECOMMENDED_IS_MIN_PER_SPLIT, WEIGHTS_FILE,
                                          Inception, InceptionWeightsError, Limits, features, fid, fid_refusal,
                                          frechet_distance, inception_metrics, inception_score, is_refusal, kid,
                                          load_inception, polynomial_mmd2)


def icon(i: int, size: int = 32) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(im).ellipse((2 + i, 4, size - 3, size - 2 - i), fill=[(200, 30, 30), (30, 120, 200)][i % 2])
    return im


def noise(i: int, size: int = 32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def random_inception():
    return load_inception(None)


# ---- Inception Score ----

def test_inception_score_matches_a_hand_computed_distribution():
    # two images, p(y|x) = (3/4, 1/4) and (1/4, 3/4): p(y) = (1/2, 1/2), and both KLs are equal
    p = torch.tensor([[0.75, 0.25], [0.25, 0.75]], dtype=torch.float64)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert inception_score(p.log(), 1, seed=None) == pytest.approx((math.exp(kl), 0.0), abs=1e-12)
    # confident, distinct labels: IS = the number of images per split, its upper bound
    onehot = torch.eye(8, dtype=torch.float64) * 60
    assert inception_score(onehot, 1, seed=None)[0] == pytest.approx(8, rel=1e-12)
    # splits in order: [A, A] scores 1 (no diversity), [A, B] scores 2 -> mean 1.5, std 0.5
    a, b = [60.0, 0.0], [0.0, 60.0]
    logits = torch.tensor([a, a, a, b], dtype=torch.float64)
    assert inception_score(logits, 2, seed=None) == pytest.approx((1.5, 0.5), abs=1e-12)
    # the shuffle is a fixed permutation: same result every time, and a shuffle of rows within one split is moot
    assert inception_score(logits, 2) == inception_score(logits, 2)
    assert inception_score(logits, 1)[0] == pytest.approx(inception_score(logits, 1, seed=None)[0], abs=1e-12)


def test_one_image_per_split_scores_exactly_one_so_it_is_refused():
    """The logo users' bug: 12 images in 10 splits. With one image per split the split's marginal p(y) is
    that image's p(y|x), the KL is 0 and IS = exp(0) = 1.0, whatever the images."""
    logits = torch.randn(10, 1008, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 5
    assert inception_score(logits, 10) == (1.0, 0.0)
    why = is_refusal(12, 10, RECOMMENDED_IS_MIN_PER_SPLIT)
    assert why.startswith("Inception Score needs >= 50 images per split x 10 splits = 500")
    assert "got 12, 1 per split" in why and "exactly 1.0" in why
    assert is_refusal(500, 10, 50) is None and is_refusal(499, 10, 50) is not None


# ---- FID ----

def test_frechet_distance_closed_forms():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 = 5 + 1 + 1
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(7.0, abs=1e-10)
    # non-commuting covariances: against scipy's matrix square root
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = m1 @ m1.T, m2 @ m2.T + np.eye(5)
    ref = np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert frechet_distance(np.zeros(5), s1, np.zeros(5), s2) == pytest.approx(ref, rel=1e-9)
    assert frechet_distance(mu1, s1[:3, :3], mu1, s1[:3, :3]) == pytest.approx(0.0, abs=1e-9)


def test_fid_of_feature_sets_matches_a_direct_computation():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(50, 6, generator=gen, dtype=torch.float64) * 2 + 0.5
    xn, yn = x.numpy(), y.numpy()
    s1, s2 = np.cov(xn, rowvar=False), np.cov(yn, rowvar=False)
    diff = xn.mean(0) - yn.mean(0)
    ref = diff @ diff + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert fid(x, y) == pytest.approx(ref, rel=1e-9)
    stats = [{"mu": v.mean(0), "sigma": np.cov(v, rowvar=False)} for v in (xn, yn)]
    assert fid(x, y) == pytest.approx(fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"],
                                      rel=1e-9)  # torch-fidelity's own formula


def test_fid_is_refused_below_the_minimum_with_the_reason():
    why = fid_refusal({"lora": 12, "base": 12, "real": 32}, RECOMMENDED_FID_MIN_SAMPLES)
    assert why.startswith("FID needs >= 2048 images per set (evaluate.fid_min_samples); "
                          "got 12 lora samples, 12 base samples, 32 held-out images.")
    assert "singular" in why and "KID" in why
    assert fid_refusal({"lora": 2048, "real": 2048}, 2048) is None


# ---- KID ----

def test_kid_is_the_unbiased_polynomial_mmd_over_subsets():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(9, 4, generator=gen, dtype=torch.float64) + 0.3

    def k(a, b):
        return (float(a @ b) / 4 + 1) ** 3

    def direct(a, b):  # the U-statistic written out pair by pair
        m, n = len(a), len(b)
        xx = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        yy = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return xx + yy - 2 * sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)

    assert polynomial_mmd2(x, y) == pytest.approx(direct(x, y), rel=1e-12)
    assert polynomial_mmd2(x, y[:7]) == pytest.approx(kernel_mmd(x.numpy(), y[:7].numpy(), kid_kernel="poly"),
                                                      rel=1e-12)  # torch-fidelity's kernel and estimator
    # subsets: the smaller set's size caps the subset size; a fixed seed draws the same subsets
    mean, std, size, subsets = kid(x, y, subset_size=1000, subsets=20)
    assert (size, subsets) == (7, 20) and std > 0
    rng = np.random.default_rng(0)
    values = [direct(x[rng.choice(7, 7, replace=False)], y[rng.choice(9, 7, replace=False)]) for _ in range(20)]
    assert (mean, std) == pytest.approx((np.mean(values), np.std(values)), rel=1e-9)
    assert kid(x, y, 1000, 20) == (mean, std, size, subsets)
    # both sets whole: one distinct pair, computed once
    assert kid(x, y[:7], 1000, 20) == (polynomial_mmd2(x, y[:7]), 0.0, 7, 1)
    with pytest.raises(ValueError, match="at least 2"):
        kid(x[:1], y, 1000, 20)


# ---- the network and its weights ----

def test_missing_or_unloadable_inception_weights_say_what_to_do(tmp_path):
    for value, why in (("", "is empty"), (str(tmp_path / "nope.pth"), "no such file")):
        with pytest.raises(InceptionWeightsError, match=why) as e:
            load_inception(value)
        msg = str(e.value)
        assert msg.startswith("evaluate.inception_weights")
        assert WEIGHTS_FILE == "weights-inception-2015-12-05-6726825d.pth" and WEIGHTS_FILE in msg
        assert "https://github.com/toshas/torch-fidelity/releases/download/" in msg
        assert "dvc exp run -S evaluate.inception_weights=/path/to/" in msg
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(InceptionWeightsError, match="not a state dict of the FID Inception-v3"):
        load_inception(str(garbage))
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(2), tensor)
    with pytest.raises(InceptionWeightsError, match="holds a Tensor, not a dict of tensors"):
        load_inception(str(tensor))
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3)}, wrong)
    with pytest.raises(InceptionWeightsError, match=r"not a state dict of the FID Inception-v3 \(ValueError: 565 of "
                                                    r"the network's tensors are not in it \(e.g. Conv2d_1a_3x3.bn.bias\), "
                                                    r"0 of its tensors"):
        load_inception(str(wrong))


def test_weights_load_from_a_local_file_and_random_init_is_fixed(tmp_path, random_inception):
    images = [icon(0), noise(1)]
    pool, logits = features(random_inception, images, 32)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    assert pool.std() > 1e-3 and logits.std() > 1e-3  # not collapsed to ~0 as with PyTorch's default init
    torch.manual_seed(123)  # the global RNG plays no part
    again = load_inception(None)
    assert torch.equal(features(again, images, 32)[0], pool)
    ckpt = tmp_path / "inception.pth"
    torch.save(random_inception.model.state_dict(), ckpt)
    local = load_inception(str(ckpt))
    assert torch.equal(features(local, images, 32)[1], logits)
    assert local.weights == str(ckpt) and len(local.sha256) == 64 and not local.standard
    assert random_inception.weights == "random-init" and random_inception.sha256 is None


class LegacyDict(dict):
    """A type weights_only unpickling refuses, standing in for a pickle that would run code."""


def test_no_weights_file_is_fully_unpickled_whatever_its_hash(tmp_path, random_inception, monkeypatch):
    import hashlib

    from iconforge.evaluate import inception

    ckpt = tmp_path / "legacy.pth"
    torch.save(LegacyDict(random_inception.model.state_dict()), ckpt)
    monkeypatch.setattr(inception, "STANDARD_SHA256_PREFIX", hashlib.sha256(ckpt.read_bytes()).hexdigest()[:8])
    with pytest.raises(InceptionWeightsError, match="UnpicklingError"):
        load_inception(str(ckpt))  # even with the published file's hash prefix: no code of it runs


def test_inception_metrics_report_numbers_or_refusals(random_inception):
    generated = {"lora": [icon(i) for i in range(3)], "base": [noise(i) for i in range(3)]}
    real = [icon(i + 1, size=48) for i in range(4)]  # another size: brought to the samples' 32 first
    scores, info = inception_metrics(random_inception, generated, real, 32, Limits(3, 1, 3, 1000, 10))
    for kind in ("lora", "base"):
        assert scores[kind]["fid"] > 0 and scores[kind]["kid_std"] >= 0 and scores[kind]["inception_score"] >= 1
    assert scores["lora"]["fid"] < scores["base"]["fid"]  # icons are nearer the icons than noise is
    assert info["refused"] == {"fid": None, "kid": None, "inception_score": None}
    assert info["count"] == {"lora": 3, "base": 3, "real": 4}
    assert (info["kid_subset_size"], info["kid_subsets"]) == (3, 10)
    assert info["below_documented_minimums"] == ["evaluate.fid_min_samples=3 (documented minimum 2048)",
                                                 "evaluate.is_min_per_split=3 (documented minimum 50)"]

    def fake(batch):  # the refusals do not depend on the network: random features, no Inception pass
        gen = torch.Generator().manual_seed(len(batch))
        return torch.randn(len(batch), 2048, generator=gen), torch.randn(len(batch), 1008, generator=gen)

    scores, info = inception_metrics(Inception(fake, "cpu", "random-init", None), generated, real, 32,
                                     Limits(2048, 10, 50, 1000, 10))
    for kind in ("lora", "base"):
        assert scores[kind]["fid"] is None and scores[kind]["inception_score"] is None
        assert scores[kind]["inception_score_std"] is None and scores[kind]["kid"] is not None
    assert info["refused"]["fid"].startswith("FID needs >= 2048 images per set")
    assert info["refused"]["inception_score"].startswith("Inception Score needs >= 50 images per split x 10")
    assert info["refused"]["kid"] is None and info["below_documented_minimums"] == []


def test_inception_score_stays_finite_when_probabilities_underflow():
    # one-hot logits far apart: p(y|x) underflows to exactly 0 for the other classes (0 log 0 = 0)
    logits = torch.tensor([[2000.0, 0.0, 0.0], [0.0, 2000.0, 0.0], [0.0, 0.0, 2000.0]])
    mean, std = inception_score(logits, 1, seed=None)
    assert mean == pytest.approx(3.0) and std == 0.0  # three sure, distinct labels: the most 3 images can score
