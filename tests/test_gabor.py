"""examples/gabor.py: a latent on the circle generating Gabor patches (ALWS §7.2; ALGORITHMS.md §7.2).

- the orientation measure returns the true angle of clean Gabors to within half a bank step, and
  tells a from a + π (the odd phase makes orientation defined modulo 2π);
- the rotation+reflection alignment recovers a known sign and offset exactly;
- log_joint against torch.distributions, the exponential-family view against the likelihood it
  stands for, sample shapes and dtypes;
- a tiny run of the command writes the figure and its numbers.
"""

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import gabor  # noqa: E402


def test_orientation_measure_recovers_known_angles_on_clean_gabors():
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(200, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    bank = 3600
    phi = gabor.measure_orientation(gabor.gabor_patches(a), bank=bank)
    # the nearest bank angle is at most half a step away (plus float rounding)
    assert gabor.wrap(phi - a).abs().max().item() <= math.pi / bank + 1e-9
    # odd phase: G_{a+π} = −G_a, and the measure tells them apart (π apart, not equal)
    torch.testing.assert_close(gabor.gabor_patches(a + math.pi), -gabor.gabor_patches(a))
    phi_pi = gabor.measure_orientation(gabor.gabor_patches(a + math.pi), bank=bank)
    assert (gabor.wrap(phi_pi - phi).abs() - math.pi).abs().max().item() <= 2 * math.pi / bank + 1e-9
    with pytest.raises(ValueError, match="patches"):
        gabor.measure_orientation(torch.zeros(3, 10))


def test_align_angles_recovers_reflection_and_offset():
    a = torch.linspace(-math.pi, math.pi, 181, dtype=torch.float64)[:-1]
    for sign, offset in ((1.0, 0.3), (-1.0, -2.5)):
        fit = gabor.align_angles(a, gabor.wrap(sign * a + offset))
        assert fit["sign"] == sign
        assert fit["offset"] == pytest.approx(offset, abs=1e-9)
        assert fit["rms_deg"] == pytest.approx(0.0, abs=1e-7)
    # a known residual survives the fit: φ = a + 5° on half the angles, a − 5° on the other half
    d = torch.where(torch.arange(180) % 2 == 0, 1.0, -1.0).double() * math.radians(5)
    fit = gabor.align_angles(a, gabor.wrap(a + d))
    assert fit["rms_deg"] == pytest.approx(5.0, abs=1e-6)


def test_log_joint_and_exponential_family_match_torch_distributions():
    torch.manual_seed(0)
    model = gabor.GaborModel(noise=0.4).double()
    a, x = model.sample(5)
    assert a.shape == (5,) and x.shape == (5, 256) and a.dtype == x.dtype == torch.float64
    assert ((a >= -math.pi) & (a < math.pi)).all()
    a3 = (torch.rand(3, 5, dtype=torch.float64) * 2 - 1) * math.pi  # [S, B] particles
    with torch.no_grad():
        mean = model.generator(torch.stack([torch.sin(a3), torch.cos(a3)], -1))
        want = Normal(mean, 0.4).log_prob(x).sum(-1) - math.log(2 * math.pi)
        torch.testing.assert_close(model.log_joint(x, a3), want)
        eta, psi = model.exponential_family(a)
        log_lik = (eta * model.sufficient_statistics(x)).sum(-1) - psi  # h(x) = 1
        torch.testing.assert_close(log_lik, model.log_joint(x, a) - model.log_prior(a))


def test_tiny_run_writes_figure_and_numbers(tmp_path):
    out = gabor.main(
        ["--n", "100", "--steps", "3", "--batch-size", "50", "--sleep-samples", "200", "--features", "50", "--out", str(tmp_path), "--no-progress"]
    )
    assert (tmp_path / "gabor.png").stat().st_size > 1000
    assert 0 <= out["orientation_rms_deg"] <= 180 and out["sleep_samples"] == 200
    # the data floor: noise 0.1 on patches of peak ≈ 0.8 moves the measured orientation by about a degree, not tens
    assert out["data_orientation_rms_deg"] < 3
