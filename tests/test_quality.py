"""FID and KID (wakesleep.lab.quality) against exact answers, the cached classifier, and
``wakesleep fid``.

- FID's matrix formula against closed forms (commuting covariances: Σ(√a − √b)²; 1-D:
  (μ₁ − μ₂)² + (σ₁ − σ₂)²) and against scipy.linalg.sqrtm on non-commuting ones; a set against
  itself gives 0; on large samples from two known Gaussians the estimate meets the exact value
  within 4 bootstrap standard errors;
- KID's unbiasedness: over R independent pairs of samples, the mean estimate meets the exact
  population MMD² (0 for one distribution; by enumeration for two discrete ones) within 4
  standard errors of the mean, and the reported block standard error matches the spread of the
  estimates (ratio within ±25%: 5 s.e. of a standard deviation from R = 300);
- bad input raises, naming the fix;
- the classifier trains, caches and reloads; the command prints the real-against-real floor.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from wakesleep.cli import main
from wakesleep.lab import quality
from wakesleep.lab.quality import QualityError, fid, fid_from_moments, kid, mmd2_unbiased, polynomial_kernel


def random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_fid_formula_against_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid_from_moments(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(exact, rel=1e-10)
    # rotating both covariances by one orthogonal matrix keeps them commuting and the distance equal
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    assert fid_from_moments(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T) == pytest.approx(exact, rel=1e-9)
    assert fid_from_moments([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0, rel=1e-12)
    # non-commuting covariances: the eigen route against scipy's sqrtm of Σ₁Σ₂
    s1, s2 = random_spd(rng, 6), random_spd(rng, 6)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    ref = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert fid_from_moments(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-8)


def test_fid_of_a_set_against_itself_is_zero():
    f = np.random.default_rng(1).normal(size=(300, 20)) * 5
    s = fid(f, f, bootstrap=0)
    assert abs(s.value) < 1e-8 * np.trace(np.cov(f, rowvar=False))


def test_fid_on_samples_meets_the_exact_value_within_its_bootstrap_error():
    rng = np.random.default_rng(2)
    d, n = 4, 20000
    s1, s2 = random_spd(rng, d), 2 * random_spd(rng, d)
    m1, m2 = np.zeros(d), 0.5 * np.ones(d)
    exact = fid_from_moments(m1, s1, m2, s2)
    f1 = rng.multivariate_normal(m1, s1, size=n)
    f2 = rng.multivariate_normal(m2, s2, size=n)
    est = fid(f1, f2, bootstrap=50)
    assert est.stderr > 0
    assert abs(est.value - exact) < 4 * est.stderr, (est, exact)


def test_kid_is_unbiased_for_one_distribution_and_its_stderr_is_honest():
    rng = np.random.default_rng(3)
    repeats = 300
    est = [kid(rng.exponential(size=(200, 5)), rng.exponential(size=(200, 5)), blocks=10, seed=r) for r in range(repeats)]
    values = np.array([e.value for e in est])
    se_mean = values.std(ddof=1) / math.sqrt(repeats)
    assert abs(values.mean()) < 4 * se_mean, (values.mean(), se_mean)
    ratio = np.mean([e.stderr for e in est]) / values.std(ddof=1)
    assert 0.75 < ratio < 1.25, ratio


def test_kid_is_unbiased_against_the_population_mmd_by_enumeration():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)) + 0.7  # P uniform on a's rows, Q on b's
    exact = polynomial_kernel(a, a).mean() + polynomial_kernel(b, b).mean() - 2 * polynomial_kernel(a, b).mean()
    repeats = 300
    values = np.array([kid(a[rng.integers(0, 5, 100)], b[rng.integers(0, 4, 100)], blocks=5, seed=r).value for r in range(repeats)])
    se_mean = values.std(ddof=1) / math.sqrt(repeats)
    assert exact > 10 * se_mean  # the comparison can tell a biased estimator from an unbiased one
    assert abs(values.mean() - exact) < 4 * se_mean, (values.mean(), exact, se_mean)
    # the U-statistic by its definition, term by term, on one small sample
    x, y = a[[0, 1, 1, 3]], b[[0, 2, 3]]
    kxx = np.mean([polynomial_kernel(x[i : i + 1], x[j : j + 1])[0, 0] for i in range(4) for j in range(4) if i != j])
    kyy = np.mean([polynomial_kernel(y[i : i + 1], y[j : j + 1])[0, 0] for i in range(3) for j in range(3) if i != j])
    assert mmd2_unbiased(x, y) == pytest.approx(kxx + kyy - 2 * polynomial_kernel(x, y).mean(), rel=1e-12)


def test_bad_input_raises_naming_the_fix():
    with pytest.raises(QualityError, match="28×28"):
        quality.as_images(np.zeros((5, 27, 27)))
    with pytest.raises(QualityError, match=r"outside \[0, 1\]"):
        quality.as_images(np.full((5, 784), 1.5))
    with pytest.raises(QualityError, match=r"outside \[0, 1\]"):
        quality.as_images(-np.ones((5, 28, 28)))
    with pytest.raises(QualityError, match="NaN"):
        quality.as_images(np.full((5, 784), np.nan))
    assert quality.as_images(np.full((3, 28, 28), 255, dtype=np.uint8)).max().item() == 1.0  # 0..255 is scaled
    binary = np.zeros((3, 784), dtype=np.uint8)
    binary[:, :10] = 1
    assert quality.as_images(binary).max().item() == 1.0  # uint8 {0, 1} is binary, not 1/255
    with pytest.raises(QualityError, match="width"):
        fid(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(QualityError, match="blocks >= 2"):
        kid(np.zeros((10, 3)), np.zeros((10, 3)), blocks=1)
    with pytest.raises(QualityError, match="fewer blocks"):
        kid(np.zeros((10, 3)), np.zeros((10, 3)), blocks=10)


@pytest.fixture(scope="module")
def data_dir():
    from wakesleep.data import resolve_data_dir

    root = resolve_data_dir()
    if not (root / "mnist_test_labels.npz").is_file() or not (root / "mnist_test_gray.npz").is_file():
        pytest.skip("labelled MNIST not at hand (WAKESLEEP_DATA_DIR)")
    return root


def test_classifier_trains_caches_and_reloads(data_dir, tmp_path):
    clf = quality.classifier("grey", data_dir, tmp_path, progress=False, epochs=1)
    assert clf.accuracy > 0.85  # one epoch on 8000 images; LeNet reaches about 0.98 in 8
    assert clf.path.is_file() and clf.path.parent == tmp_path
    again = quality.classifier("grey", data_dir, tmp_path, progress=False, epochs=1)
    assert again.accuracy == clf.accuracy and again.path == clf.path
    x = quality.reference_images("grey", data_dir)[:50]
    np.testing.assert_array_equal(again.features(x), clf.features(x))
    assert clf.features(x).shape == (50, quality.FEATURE_DIM)
    with pytest.raises(ValueError, match="kind"):
        quality.classifier("colour", data_dir, tmp_path)
    clf.path.write_bytes(clf.path.read_bytes()[:1000])  # a damaged cache: trained again, with a warning naming it
    with pytest.warns(quality.QualityWarning, match=rf"{clf.path.name} is damaged.*training it again"):
        fresh = quality.classifier("grey", data_dir, tmp_path, progress=False, epochs=1)
    assert fresh.accuracy > 0.85 and quality.classifier("grey", data_dir, tmp_path, progress=False, epochs=1).accuracy == fresh.accuracy


def test_fid_command_scores_an_npz_and_reports_the_floor(data_dir, tmp_path, capsys):
    ref = quality.reference_images("grey", data_dir)
    noise = torch.rand(500, 784, generator=torch.Generator().manual_seed(0))
    np.savez(tmp_path / "noise.npz", images=noise.numpy())
    args = ["fid", str(tmp_path / "noise.npz"), "--epochs", "1", "--cache-dir", str(tmp_path), "--bootstrap", "20", "--no-progress"]
    assert main([*args, "--data-dir", str(data_dir), "--out", str(tmp_path / "s.json")]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if ": " in line)
    assert lines["kind"] == "grey" and int(lines["n_samples"]) == 500 and int(lines["n_reference"]) == len(ref) // 2
    floor, floor_se, noise_fid = float(lines["fid_floor"]), float(lines["fid_floor_stderr"]), float(lines["fid"])
    assert 0 < floor and floor_se > 0
    assert noise_fid > floor + 10 * (float(lines["fid_stderr"]) + floor_se)  # uniform noise is far from digits
    # values outside [0, 1]: exit status 2 and the fix named
    np.savez(tmp_path / "bad.npz", images=2 * noise.numpy())
    assert main(["fid", str(tmp_path / "bad.npz"), "--data-dir", str(data_dir), "--cache-dir", str(tmp_path), "--epochs", "1"]) == 2
    assert "outside [0, 1]" in capsys.readouterr().err
    np.savez(tmp_path / "two.npz", a=noise.numpy(), b=noise.numpy())
    assert main(["fid", str(tmp_path / "two.npz"), "--data-dir", str(data_dir), "--cache-dir", str(tmp_path), "--epochs", "1"]) == 2
    assert "--key" in capsys.readouterr().err
