"""The exact references are exact: closed forms agree with quadrature, quadrature converges and
agrees with importance sampling, and the φ-targets are what the sleep phase estimates.

Monte Carlo comparisons use per-coordinate z-scores with the bound 4.5 of
``test_exact_estimators.py`` (Bonferroni over ≤ 200 coordinates: false alarms below 0.2%) and
3 standard errors for scalars.
"""

from __future__ import annotations

import math

import pytest
import torch
from exactness import z_scores

from wakesleep.estimators import sleep_phase_loss
from wakesleep.evaluate import importance_log_marginal
from wakesleep.models import HelmholtzMachine
from wakesleep.models.exact import (
    NoExactReference,
    build_reference,
    exact_sleep_phi_target,
    exact_theta_grad,
    exact_wake_phi_target,
    fa_posterior,
    flat_grad,
    latent_grid,
    quadrature_rule,
)
from wakesleep.models.exact import reference_log_marginal as exact_log_marginal

Z_MAX = 4.5


def fa_by_quadrature(model, x, order):
    """Factor analysis integrated by Gauss–Hermite quadrature: an independent route to its closed forms."""
    nodes, log_w = quadrature_rule(model.latent_sizes[0], order)
    z = nodes[:, None, :]
    log_joint = log_w[:, None] + model.generative[0].log_prob(x, z)
    return z, log_joint


def test_factor_analysis_closed_forms_match_quadrature():
    model, x = build_reference("factor-analysis", batch=5)
    z, log_joint = fa_by_quadrature(model, x, 160)
    assert torch.allclose(torch.logsumexp(log_joint, 0), exact_log_marginal(model, x), atol=1e-6)
    post = torch.softmax(log_joint, 0).detach()[..., None]  # [S, B, 1]
    mean, cov = fa_posterior(model, x)
    q_mean = (post * z).sum(0)
    centred = z - q_mean
    q_cov = (post[..., None] * centred[..., :, None] * centred[..., None, :]).sum(0)  # [B, d, d]
    assert torch.allclose(q_mean, mean, atol=1e-6)
    assert torch.allclose(q_cov, cov.expand_as(q_cov), atol=1e-6)
    # θ-gradient (autograd through the closed form) = gradient of the quadrature log p(x).
    by_quad = flat_grad(model.p_parameters(), torch.logsumexp(log_joint, 0).mean())
    assert torch.allclose(exact_theta_grad(model, x), by_quad, rtol=1e-5, atol=1e-6)
    # Wake φ-target: E_{p(z|x)} ∇φ log q(z | x) in closed form = the quadrature expectation.
    wake = flat_grad(model.q_parameters(), (post[..., 0] * model.log_proposal(x, [z])).sum(0).mean())
    assert torch.allclose(exact_wake_phi_target(model, x), wake, rtol=1e-5, atol=1e-6)


def test_quadrature_converges_and_agrees_with_importance_sampling():
    for latent_dim, orders in ((1, (100, 200)), (2, (80, 160))):
        model, x = build_reference("gaussian-quadrature", latent_dim=latent_dim, batch=6)
        lo, hi = (exact_log_marginal(model, x, order=o) for o in orders)
        assert (lo - hi).abs().max().item() < 1e-4, (latent_dim, lo - hi)
        g_lo, g_hi = (exact_theta_grad(model, x, order=o) for o in orders)
        assert (g_lo - g_hi).norm().item() < 1e-4 * g_hi.norm().item()
        # Large-K importance sampling: unbiased for p(x), so its log is within 3 s.e. (plus its
        # Jensen bias, tiny at K = 20000) of the quadrature value.
        torch.manual_seed(latent_dim)
        reps = torch.stack([importance_log_marginal(model, x, 20000).mean() for _ in range(8)])
        se = reps.std().item() / math.sqrt(len(reps))
        assert abs(reps.mean().item() - hi.mean().item()) < 3 * se + 1e-3, (reps.mean().item(), hi.mean().item(), se)


def test_enumeration_theta_grad_is_fishers_identity():
    """∇θ log p(x) = E_{p(z|x)}[∇θ log p(x, z)] with the enumerated posterior."""
    model, x = build_reference("sbn", data_dim=10, latents=6, batch=4)
    zs, log_joint = latent_grid(model, x)
    post = torch.softmax(log_joint, 0).detach()
    fisher = flat_grad(model.p_parameters(), (post * model.log_joint(x, zs)).sum(0).mean())
    assert torch.allclose(exact_theta_grad(model, x), fisher, atol=1e-10)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("factor-analysis", {}),
        ("sbn", {"data_dim": 10, "latents": 5}),
        ("gaussian-quadrature", {"data_dim": 8, "latent_dim": 1}),
    ],
)
def test_sleep_phi_target_is_what_the_sleep_phase_estimates(name, kwargs):
    model, _ = build_reference(name, **kwargs)
    target = exact_sleep_phi_target(model)
    torch.manual_seed(4)
    samples = torch.stack([flat_grad(model.q_parameters(), -sleep_phase_loss(model, 50)) for _ in range(1000)])
    z = z_scores(samples, target)
    assert z.abs().max() < Z_MAX, (name, z.abs().max())


def test_models_without_an_exact_form_are_refused():
    with pytest.raises(NoExactReference, match="no exact reference"):
        exact_log_marginal(HelmholtzMachine.sbn([10, 30]).double(), torch.zeros(2, 10, dtype=torch.float64))
    with pytest.raises(NoExactReference):
        exact_theta_grad(HelmholtzMachine.gaussian([10, 5], hidden=()).double(), torch.zeros(2, 10, dtype=torch.float64))
    with pytest.raises(NoExactReference, match="binary data"):
        exact_sleep_phi_target(HelmholtzMachine.gaussian([20, 1], hidden=(), likelihood="bernoulli").double())
    with pytest.raises(ValueError, match="order"):
        quadrature_rule(2, 1000)
    with pytest.raises(ValueError, match="unknown reference"):
        build_reference("nope")


def test_factor_analysis_with_a_learned_prior_has_no_closed_form_posterior():
    """The posterior, φ-targets and χ² assume the fixed prior N(0, I); log p(x) does not."""
    from wakesleep.models.exact import chi_square

    torch.manual_seed(0)
    model = HelmholtzMachine.factor_analysis(4, 2, learn_prior=True).double()
    x = model.sample(3)[1]
    assert torch.isfinite(exact_theta_grad(model, x)).all()
    for quantity in (
        lambda: fa_posterior(model, x),
        lambda: exact_wake_phi_target(model, x),
        lambda: exact_sleep_phi_target(model),
        lambda: chi_square(model, x),
    ):
        with pytest.raises(NoExactReference, match=r"learns its prior.*learn_prior=True"):
            quantity()


@pytest.mark.parametrize("name", ["factor-analysis", "sbn", "gaussian-quadrature"])
def test_chi_square_is_the_second_moment_of_the_weights(name):
    """1 + χ²(p(z|x) ‖ q) = E_q[(w / p(x))²], estimated with 50000 proposal draws per datapoint and the exact p(x)."""
    from wakesleep.models.exact import chi_square

    model, x = build_reference(name, batch=4)
    torch.manual_seed(5)
    ratio2 = torch.exp(2 * (model.log_weights(x, 50_000) - exact_log_marginal(model, x).detach()))  # [K, B]
    z = z_scores(ratio2, 1 + chi_square(model, x))
    assert z.abs().max() < Z_MAX, z
