"""examples/blowfly.py: the blowfly model with a discrete delay τ (ALWS §7.3(b); ALGORITHMS.md §7.3).

- the recursion and the delay on a hand-computed case;
- log_joint against an independent loop with torch.distributions (Categorical, Gamma, LogNormal);
- the delay's log-probability is the log-softmax of the learned logits, with its exact gradient;
- sample shapes and dtypes, the data loader, the ABC posterior is a distribution.
"""

import math
import os
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import Categorical, Gamma, LogNormal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import blowfly  # noqa: E402


def model(steps=8):
    return blowfly.BlowflyModel(steps=steps, init=0.2, max_delay=5, P=3.0, N0=0.4, delta=0.5, sigma_p=0.3, sigma_d=0.6, sigma_o=0.2).double()


def test_trajectory_by_hand():
    m = model(4)
    e = torch.tensor([[1.0, 2.0, 0.5, 1.5]], dtype=torch.float64)
    eps = torch.tensor([[1.0, 0.5, 2.0, 1.0]], dtype=torch.float64)
    for tau in (1, 2):
        n, hist = [], {t: 0.2 for t in range(-5, 1)}
        for t in range(1, 5):
            lag = hist[t - tau]
            hist[t] = 3.0 * lag * math.exp(-lag / 0.4) * e[0, t - 1].item() + hist[t - 1] * math.exp(-0.5 * eps[0, t - 1].item())
            n.append(hist[t])
        got = m.trajectory(torch.tensor([tau]), e, eps)
        torch.testing.assert_close(got, torch.tensor([n], dtype=torch.float64))


def test_log_joint_against_independent_loop():
    torch.manual_seed(0)
    m = model()
    (tau, e, eps), x = m.sample(6)
    assert tau.dtype == torch.long and tau.shape == (6,) and ((tau >= 1) & (tau <= 5)).all()
    assert e.shape == eps.shape == x.shape == (6, 8) and x.dtype == torch.float64
    xb = x[:2]  # data [B = 2, T]; particles z [S = 3, B = 2, …]
    z = (tau.reshape(3, 2), e.reshape(3, 2, 8), eps.reshape(3, 2, 8))
    got = m.log_joint(xb, z)
    want = torch.empty(3, 2, dtype=torch.float64)
    with torch.no_grad():
        logits = m.logits
        # the model's parameters, stored as float32 logs before .double(): their own values, not the literals
        pp, n0, dl, sp, sd, so = (getattr(m, f"log_{k}").exp().item() for k in ("P", "N0", "delta", "sigma_p", "sigma_d", "sigma_o"))
        f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731  (torch.distributions makes Python floats float32)
        for s in range(3):
            for b in range(2):
                k = int(z[0][s, b])
                hist = [0.2] * 5
                lp = Categorical(logits=logits).log_prob(torch.tensor(k - 1))
                lp = (
                    lp
                    + Gamma(f64(1 / sp**2), f64(1 / sp**2)).log_prob(z[1][s, b]).sum()
                    + Gamma(f64(1 / sd**2), f64(1 / sd**2)).log_prob(z[2][s, b]).sum()
                )
                for t in range(8):
                    lag = hist[-k]
                    n = pp * lag * math.exp(-lag / n0) * z[1][s, b, t].item() + hist[-1] * math.exp(-dl * z[2][s, b, t].item())
                    hist.append(n)
                    c = xb[b, t].exp()
                    # data are x = log c: the LogNormal density of c times the Jacobian dc/dx = c
                    lp = lp + LogNormal(f64(math.log(n)), f64(so)).log_prob(c) + xb[b, t]
                want[s, b] = lp
    torch.testing.assert_close(got, want)


def test_delay_log_probability_and_its_gradient():
    m = model()
    with torch.no_grad():
        m.logits.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, 0.3]))
    (_, e, eps), _ = m.sample(1)
    lp = [m.log_prior((torch.tensor([k]), e, eps)).item() for k in range(1, 6)]
    log_softmax = torch.log_softmax(m.logits.detach(), 0)
    # only the categorical term changes with τ: differences are differences of the log-softmax
    for k in range(5):
        assert lp[k] - lp[0] == pytest.approx((log_softmax[k] - log_softmax[0]).item(), abs=1e-12)
    m.zero_grad()
    m.log_prior((torch.tensor([3]), e, eps)).sum().backward()
    torch.testing.assert_close(m.logits.grad, torch.nn.functional.one_hot(torch.tensor(2), 5).double() - log_softmax.exp())


def test_loader_and_abc_posterior(tmp_path, monkeypatch):
    f = tmp_path / "b.txt"
    f.write_text("# comment\n# comment\n" + "\n".join(str(v) for v in range(1, 31)))
    counts = blowfly.load_blowfly(f)
    assert counts.shape == (30,) and counts[0] == 1
    monkeypatch.delenv("WAKESLEEP_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="WAKESLEEP_DATA_DIR"):
        blowfly.load_blowfly()
    data_dir = os.environ.get("WAKESLEEP_DATA_DIR_FOR_TESTS", "/work/shared/data")
    if (Path(data_dir) / "blowfly.txt").exists():
        assert blowfly.load_blowfly(Path(data_dir) / "blowfly.txt").shape == (180,)
    torch.manual_seed(1)
    m = blowfly.BlowflyModel(steps=30, init=0.05)
    x = torch.log(torch.tensor(counts / counts.max(), dtype=torch.float32))[None]
    probs, kept = blowfly.abc_tau_posterior(m, x, sims=400, keep=0.05)
    assert kept == 20 and probs.shape == (20,) and probs.sum().item() == pytest.approx(1.0)
