"""The log-weights statistics of ``wakesleep.importance`` (defined once, used by every estimator and
by evaluation), the sleep-phase estimator and the layers' affine accessors used by exact references."""

from __future__ import annotations

import math

import torch

from wakesleep.estimators import IWAE, VAE, SleepPhase
from wakesleep.importance import (
    effective_sample_size,
    live_normalised_weights,
    log_mean_exp,
    log_mean_exp_chunks,
    mean_live_effective_sample_size,
    normalised_weights,
)
from wakesleep.models import HelmholtzMachine


def test_log_mean_exp_is_logsumexp_minus_log_k_and_chunks_agree():
    log_w = torch.randn(7, 4, dtype=torch.float64) * 30
    out = log_mean_exp(log_w)
    assert torch.equal(out, torch.logsumexp(log_w, 0) - math.log(7))
    torch.testing.assert_close(out, torch.log(torch.exp(log_w - 50).mean(0)) + 50)
    torch.testing.assert_close(log_mean_exp_chunks(log_w.split(3), 7), out)


def test_weights_and_ess():
    log_w = torch.randn(5, 3)
    w = normalised_weights(log_w)
    torch.testing.assert_close(w.sum(0), torch.ones(3))
    ess = effective_sample_size(log_w)
    assert ((ess >= 1 - 1e-6) & (ess <= 5 + 1e-6)).all()
    torch.testing.assert_close(effective_sample_size(torch.zeros(5, 3)), torch.full((3,), 5.0))


def test_dead_datapoints_get_zero_weight_and_leave_the_mean_ess():
    log_w = torch.randn(4, 3)
    log_w[:, 1] = -math.inf
    w, dead = live_normalised_weights(log_w)
    assert dead.tolist() == [False, True, False]
    assert torch.equal(w[:, 1], torch.zeros(4)) and not w.isnan().any()
    ess, n_dead = mean_live_effective_sample_size(w, dead)
    assert n_dead.item() == 1
    torch.testing.assert_close(ess, effective_sample_size(log_w[:, [0, 2]]).mean())


def test_sleep_phase_estimator_is_the_sleep_phase_loss():
    model = HelmholtzMachine.sbn([6, 3])
    x = torch.zeros(5, 6)
    torch.manual_seed(0)
    out = SleepPhase()(model, x)
    torch.manual_seed(0)  # the same sleep samples, scored directly: −mean log q(z̃ | x̃), one per datapoint of x
    with torch.no_grad():
        z_sleep, x_sleep = model.sample(5)
    torch.testing.assert_close(out.loss, -model.log_proposal(x_sleep, z_sleep).mean())
    torch.testing.assert_close(out.metrics["sleep_log_q"], -out.loss.detach())
    grads = torch.autograd.grad(out.loss, model.q_parameters() + model.p_parameters(), allow_unused=True)
    assert all(g is None or not g.any() for g in grads[len(model.q_parameters()) :])  # θ gets no gradient


def test_vae_is_not_an_iwae():
    assert not isinstance(VAE(), IWAE) and VAE().settings() == {"k": 1} and IWAE().settings() == {"k": 5}


def test_output_affine_is_the_layer_parameters():
    model = HelmholtzMachine.factor_analysis(4, 2)
    layer = model.generative[0]
    assert layer.affine
    w, b = layer.output_affine()
    assert w.shape == (4, 2) and b.shape == (4,)
    with torch.no_grad():
        w.zero_()
        b.fill_(1.0)
    torch.testing.assert_close(layer.params(torch.randn(3, 2))[0], torch.ones(3, 4))
    deep = HelmholtzMachine.gaussian([5, 2], hidden=(3,)).recognition[0]
    assert not deep.affine and deep.output_affine()[0].shape == (4, 3)
