"""The score-function and multi-sample estimators of ALGORITHMS.md §8 against exact gradients of
their own objectives, by enumeration, on a small SBN (:func:`wakesleep.models.exact.sbn_reference`)
and the Gaussian mixture of ``examples/gmm.py``:

- VIMCO (Mnih & Rezende 2016): unbiased for ∇ L_K, L_K = E[log (1/K) Σ_k w_k], whose exact value is
  a sum over all K-tuples of states; its θ-update (RWS's) consistent for ∇θ log p(x);
- REINFORCE and NVIL: unbiased for ∇ ELBO (NVIL's φ-update for ∇φ ELBO / max(1, σ̂));
- TVO (Masrani et al. 2019): the SNIS covariance estimator is consistent for the gradient of the
  exact left Riemann sum over π_β (enumerated); its bias shrinks with K by more than its noise;
- defensive RWS (Le et al. 2019): θ- and wake-φ updates converge to the exact targets as K grows.

Tolerances come from standard errors of repeated estimates: per-coordinate z-scores bounded by a
Bonferroni t-quantile (family-wise false alarm 0.1%), bias norms compared with 3 noise floors.
Everything in float64.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from exactness import assert_unbiased, bias_norm_band, estimates, exact_elbo, exact_grads, exact_k_bound, exact_states, exact_tvo, grads

import wakesleep as ws
from wakesleep.estimators import ESTIMATORS, NVIL, RWS, TVO, VIMCO, Reinforce
from wakesleep.evaluate import exact_log_marginal
from wakesleep.models.exact import exact_theta_grad, exact_wake_phi_target, sbn_reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import gmm  # noqa: E402

# ------------------------------------------------------------------ cases


def case(name):
    if name == "sbn":
        return sbn_reference(data_dim=8, latents=3, batch=4)
    torch.manual_seed(6)
    return gmm.HandWrittenMixture().double(), gmm.make_data(4, seed=6).double()


CASES = ["sbn", "mixture"]


# ------------------------------------------------------------------ VIMCO


@pytest.mark.parametrize("name", CASES)
def test_vimco_is_unbiased_for_the_k_sample_bound(name):
    model, x = case(name)
    k = 3 if name == "sbn" else 2
    g_t, g_p = exact_grads(model, x, exact_k_bound(model, x, k))
    torch.manual_seed(11)
    t, p = estimates(model, x, VIMCO(k=k), 60, 100)
    assert_unbiased(t, g_t, "theta")
    assert_unbiased(p, g_p, "phi")


def test_vimco_theta_update_is_consistent_for_the_likelihood_gradient():
    model, x = case("sbn")
    target = exact_theta_grad(model, x)
    torch.manual_seed(12)
    t, _ = estimates(model, x, VIMCO(k=5000), 40)
    assert_unbiased(t, target, "theta at K=5000")


def test_vimco_needs_two_particles():
    with pytest.raises(ValueError, match="k >= 2"):
        VIMCO(k=1)


# ------------------------------------------------------------------ REINFORCE, NVIL


@pytest.mark.parametrize("name", CASES)
def test_reinforce_is_unbiased_for_the_elbo_gradient(name):
    model, x = case(name)
    g_t, g_p = exact_grads(model, x, exact_elbo(model, x))
    torch.manual_seed(13)
    t, p = estimates(model, x, Reinforce(k=2), 60, 100)
    assert_unbiased(t, g_t, "theta")
    assert_unbiased(p, g_p, "phi")


@pytest.mark.parametrize("name", CASES)
def test_nvil_is_unbiased_for_the_scaled_elbo_gradient(name):
    """With c, b_ψ(x) and σ̂ fixed given the past, NVIL's φ-update times max(1, σ̂) is unbiased for ∇φ ELBO."""
    model, x = case(name)
    g_t, g_p = exact_grads(model, x, exact_elbo(model, x))
    torch.manual_seed(14)
    est = NVIL(k=2, data_dim=x.shape[1], baseline_hidden=8).double()
    for _ in range(20):  # running statistics away from their initial values
        est(model, x.repeat(100, 1)).loss.backward()
    model.zero_grad()
    assert est.centre.abs().item() > 0 and est.variance.sqrt().item() > 1  # the test exercises centring and scaling
    t, p = estimates(model, x, est, 60, 100, scale_metric="signal_scale")
    assert_unbiased(t, g_t, "theta")
    assert_unbiased(p, g_p, "phi")


def test_nvil_baseline_learns_and_statistics_are_buffers():
    """Trained by its own loss, c + b_ψ(x) approaches E_q[l | x], the ELBO of each datapoint (exact)."""
    model, x = case("sbn")
    torch.manual_seed(15)
    est = NVIL(k=10, data_dim=x.shape[1], baseline_hidden=16).double()
    assert {"centre", "variance"} <= set(est.state_dict())
    log_p, log_q = exact_states(model, x)
    with torch.no_grad():
        l = log_p - log_q
        elbo = (log_q.exp() * l).sum(0)
        sd = (log_q.exp() * (l - elbo) ** 2).sum(0).sqrt()
    error = lambda: (est.centre + est.baseline(x)[:, 0] - elbo).abs()  # noqa: E731
    with torch.no_grad():
        start = error()
    opt = torch.optim.Adam(est.parameters(), lr=3e-2)
    for _ in range(300):
        opt.zero_grad()
        est(model, x).loss.backward()
        opt.step()
    with torch.no_grad():
        end = error()
    assert (start > sd).any() and (end < 0.5 * sd).all(), (start, end, sd)


# ------------------------------------------------------------------ TVO


@pytest.mark.parametrize("name", CASES)
def test_tvo_gradient_converges_to_the_exact_bound_gradient(name):
    model, x = case(name)
    betas = [0.0, 0.1, 0.4, 1.0]
    g_t, g_p = exact_grads(model, x, exact_tvo(model, x, betas))
    torch.manual_seed(16)
    small, medium = (estimates(model, x, TVO(k=k, betas=betas), 30, r) for k, r in ((2, 100), (30, 30)))
    for part, target in enumerate((g_t, g_p)):
        (b2, n2), (b30, n30) = bias_norm_band(small[part], target), bias_norm_band(medium[part], target)
        assert b2 - 3 * n2 > b30 + 3 * n30, (part, b2, n2, b30, n30)
    t, p = estimates(model, x, TVO(k=2000, betas=betas), 30, 2)
    assert_unbiased(t, g_t, "theta at K=2000")
    assert_unbiased(p, g_p, "phi at K=2000")


def test_tvo_objective_estimates_the_exact_bound_and_beta_zero_is_the_elbo():
    model, x = case("sbn")
    betas = TVO().betas
    assert betas[0] == 0.0 and betas[-1] == 1.0
    exact = exact_tvo(model, x, betas).item()
    assert exact_elbo(model, x).item() < exact < exact_log_marginal(model, x).mean().item()
    torch.manual_seed(17)
    vals = torch.tensor([TVO(k=20000, betas=betas)(model, x).metrics["objective"].item() for _ in range(20)])
    assert abs(vals.mean().item() - exact) < 3 * vals.std().item() / math.sqrt(len(vals)) + 1e-3, (vals.mean(), exact)
    # β = [0, 1] is the ELBO: TVO's gradient is then REINFORCE with the sample mean as baseline.
    assert exact_tvo(model, x, [0.0, 1.0]).item() == pytest.approx(exact_elbo(model, x).item(), rel=1e-12)
    with pytest.raises(ValueError):
        TVO(betas=[0.1, 1.0])


# ------------------------------------------------------------------ defensive RWS


class NoUniform(torch.nn.Module):
    """The SBN without ``sample_uniform``: RWS must draw u from ``enumerate_latents``."""

    def __init__(self, model):
        super().__init__()
        self.m = model
        for name in ("sample", "log_joint", "p_parameters", "propose", "log_proposal", "q_parameters", "enumerate_latents"):
            setattr(self, name, getattr(model, name))


@pytest.mark.parametrize("name", ["sbn", "sbn_enumerated", "mixture"])
def test_defensive_rws_converges_to_the_exact_targets(name):
    model, x = case("mixture" if name == "mixture" else "sbn")
    targets = exact_theta_grad(model, x), exact_wake_phi_target(model, x)
    if name == "sbn_enumerated":
        model = NoUniform(model)
    est = lambda k: RWS(k=k, q_update="wake", defensive=0.3)  # noqa: E731
    assert ("sample_uniform" in est(2).requires(model)) == (name == "sbn")
    torch.manual_seed(18)
    small, medium = (estimates(model, x, est(k), 30, r) for k, r in ((2, 50), (30, 20)))
    for part, target in enumerate(targets):
        (b2, n2), (b30, n30) = bias_norm_band(small[part], target), bias_norm_band(medium[part], target)
        assert b2 - 3 * n2 > b30 + 3 * n30, (part, b2, n2, b30, n30)
    large = estimates(model, x, est(2000), 30, 2)
    for part, target in enumerate(targets):
        assert_unbiased(large[part], target, f"part {part} at K=2000")


def test_sample_uniform_is_uniform_over_binary_and_categorical_latents():
    from wakesleep.layers import BernoulliLayer, CategoricalLayer, CategoricalPrior

    torch.manual_seed(19)
    model = ws.models.HelmholtzMachine(
        CategoricalPrior(3), [BernoulliLayer(2, 5), BernoulliLayer(3, 2)], [BernoulliLayer(5, 2), CategoricalLayer(2, 3)]
    )
    x = torch.zeros(7, 5)
    zs, log_u = model.sample_uniform(x, 60000)
    assert [tuple(z.shape) for z in zs] == [(60000, 7, 2), (60000, 7, 3)]
    s = len(model.enumerate_latents()[0])
    assert s == 12 and torch.allclose(log_u, torch.full_like(log_u, -math.log(s)))
    codes = (zs[0][..., 0] + 2 * zs[0][..., 1] + 4 * zs[1].argmax(-1)).reshape(-1).long()
    counts = torch.bincount(codes, minlength=s).double()
    n = codes.numel()
    chi2 = ((counts - n / s) ** 2 / (n / s)).sum().item()
    assert chi2 < 40.0, chi2  # χ²(11): P(> 40) ≈ 3e-5
    assert torch.allclose(zs[1].sum(-1), torch.ones(()))


def test_defensive_setting_is_checked():
    for bad in (-0.1, 1.0, True):
        with pytest.raises(ValueError, match="defensive"):
            RWS(defensive=bad)
    assert RWS(defensive=0.2).settings()["defensive"] == 0.2


# ------------------------------------------------------------------ registry and training


def test_registry_names_and_defaults_run():
    """Each new name is registered and its defaults (what compare and diagnose build) run on the SBN;
    NVIL without ``data_dim`` has no input-dependent baseline and no parameters of its own."""
    assert {"vimco": VIMCO, "reinforce": Reinforce, "nvil": NVIL, "tvo": TVO}.items() <= ESTIMATORS.items()
    model, x = case("sbn")
    for name in ("vimco", "reinforce", "nvil", "tvo"):
        est = ESTIMATORS[name]()
        out = est(model, x)
        assert out.loss.dim() == 0 and torch.isfinite(out.loss) and "objective" in out.metrics, name
        assert set(est.requires(model)) <= set(ws.models.contract.MEMBERS), name
    assert list(NVIL().parameters()) == [] and len(list(NVIL(data_dim=8).parameters())) == 4


@pytest.mark.parametrize("name", ["vimco", "reinforce", "nvil", "tvo", "rws_defensive"])
def test_training_on_the_mixture_improves_it(name):
    torch.manual_seed(20)
    model = gmm.HandWrittenMixture()
    data, test = gmm.make_data(1000, seed=1), gmm.make_data(500, seed=2)
    est = {
        "vimco": lambda: VIMCO(k=5),
        "reinforce": lambda: Reinforce(k=1),
        "nvil": lambda: NVIL(k=1, data_dim=1),
        "tvo": lambda: TVO(k=5),
        "rws_defensive": lambda: RWS(k=5, defensive=0.2),
    }[name]()
    with torch.no_grad():
        before = exact_log_marginal(model, test).mean().item()
    # q learns faster than θ, so that θ's updates (through q's particles) point the right way from the start.
    ws.train(model, est, data, None, epochs=2, batch_size=50, lr_p=1e-2, lr_q=3e-2, lr_estimator=1e-2, progress=False)
    with torch.no_grad():
        after = exact_log_marginal(model, test).mean().item()
    assert after > before, (before, after)  # exact held-out log-likelihoods: no evaluation noise


def test_the_library_exact_elbo_is_the_enumerated_elbo():
    """The library's ELBO against the one-sample bound L_1 summed over every state (another route:
    the K-tuple enumeration at K = 1), value and φ-gradient."""
    from wakesleep.models import exact as library

    model, x = case("sbn")
    assert library.exact_elbo(model, x).item() == pytest.approx(exact_k_bound(model, x, 1).item(), rel=1e-12)
    want = grads(list(model.q_parameters()), exact_k_bound(model, x, 1))
    assert torch.allclose(library.exact_elbo_phi_target(model, x), want, rtol=1e-10, atol=1e-12)
