"""examples/limit_cycle.py: a noisy limit cycle seen through a 20-pixel bump (ALWS §7.3(a); ALGORITHMS.md §7.3).

- the period measure recovers the period of known sines (to a small fraction of a step) and finds
  no oscillation in white noise;
- the truth's observations are the bump of the state's angle (exact), and the simulated truth
  oscillates with its period;
- log_joint against torch.distributions written independently, the exponential-family view against
  the likelihood, sample shapes and dtypes.
"""

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import limit_cycle as lc  # noqa: E402


@pytest.mark.parametrize("period", [7.0, 10.3, 12.6])
def test_acf_period_of_known_sines(period):
    g = torch.Generator().manual_seed(1)
    t = torch.arange(150, dtype=torch.float64)
    phase = torch.rand(4, 1, 20, generator=g, dtype=torch.float64) * 2 * math.pi  # 4 series × 20 channels
    y = torch.sin(2 * math.pi * t[:, None] / period + phase)
    est, peak = lc.acf_period(y)
    # a finite window's autocorrelation of a sine peaks within a few hundredths of a step of the period
    assert est == pytest.approx(period, abs=0.1)
    assert peak > 0.8


def test_acf_period_finds_no_oscillation_in_white_noise():
    g = torch.Generator().manual_seed(2)
    est, peak = lc.acf_period(torch.randn(50, 30, 20, generator=g))
    # pooled over 1000 series of 30 steps the autocorrelation's s.e. is about 0.006: far below the 0.1 floor
    assert math.isnan(est) and peak < 0.1
    with pytest.raises(ValueError, match="T >= 4"):
        lc.acf_period(torch.zeros(3, 20))


def test_truth_observes_the_bump_of_the_angle_and_oscillates():
    theta = torch.tensor([0.0, math.pi / 2, -3.0])
    b = lc.bump(theta)
    c = torch.arange(20) * (2 * math.pi / 20)
    want = torch.exp(-(((theta[:, None] - c + math.pi) % (2 * math.pi) - math.pi) ** 2) / (2 * lc.WIDTH**2))
    torch.testing.assert_close(b, want)
    assert b[0].argmax() == 0 and b[1].argmax() == 5
    s, y = lc.simulate_truth(40, 60, seed=3)
    assert s.shape == (40, 60, 2) and y.shape == (40, 60, 20)
    assert s.norm(dim=-1).mean().item() == pytest.approx(1.0, abs=0.1)  # on the limit cycle r = 1
    per, peak = lc.acf_period(y)
    assert per == pytest.approx(lc.PERIOD, abs=0.3) and peak > 0.3


def test_log_joint_matches_torch_distributions_and_shapes():
    torch.manual_seed(0)
    model = lc.LimitCycleModel(steps=6).double()
    z, x = model.sample(4)
    assert z.shape == (4, 6, 2) and x.shape == (4, 120) and z.dtype == x.dtype == torch.float64
    z3 = torch.randn(3, 4, 6, 2, dtype=torch.float64)
    with torch.no_grad():
        sz, sy = model.log_sz.exp(), model.log_sy.exp()
        want = MultivariateNormal(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)).log_prob(z3[..., 0, :])
        for t in range(5):
            mean = z3[..., t, :] + model.transition(z3[..., t, :])
            want = want + MultivariateNormal(mean, torch.diag(sz**2)).log_prob(z3[..., t + 1, :])
        for t in range(6):
            want = want + Normal(model.emission(z3[..., t, :]), sy).log_prob(x.reshape(4, 6, 20)[:, t]).sum(-1)
        torch.testing.assert_close(model.log_joint(x, z3), want)
        eta, psi = model.exponential_family(z)
        torch.testing.assert_close((eta * model.sufficient_statistics(x)).sum(-1) - psi, model.log_joint(x, z) - model.log_prior(z))
    long_z, long_x = model.sample(2, steps=15)
    assert long_z.shape == (2, 15, 2) and long_x.shape == (2, 300)
