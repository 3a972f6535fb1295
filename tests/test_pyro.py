"""The Pyro front end against its hand-written twin, per-datapoint weights, the sleep phase, and its refusals."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pyro = pytest.importorskip("pyro")
import pyro.distributions as dist  # noqa: E402

import wakesleep as ws  # noqa: E402
from wakesleep.estimators import sleep_phase_loss  # noqa: E402
from wakesleep.models import check_model, check_shapes  # noqa: E402
from wakesleep.models.contract import log_weights  # noqa: E402
from wakesleep.pyro import from_pyro  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import gmm  # noqa: E402
import gmm_pyro  # noqa: E402


def twins(seed: int = 0):
    """The Pyro mixture and the hand-written one with the same (random) parameters, float64."""
    torch.manual_seed(seed)
    hand, prog = gmm.HandWrittenMixture().double(), gmm_pyro.mixture_pyro().double()
    with torch.no_grad():
        hand.prior.logits.normal_()
        for dst, src in zip(prog.p_parameters() + prog.q_parameters(), hand.p_parameters() + hand.q_parameters()):
            dst.copy_(src)
    return hand, prog


def fixed(model, z, as_latent):
    """``model`` proposing the given particles (so both twins see the same ones)."""
    model.propose = lambda x, k: (as_latent(z), model.log_proposal(x, as_latent(z)))
    return model


def test_the_pyro_program_equals_its_hand_written_twin():
    hand, prog = twins()
    x = gmm.make_data(6, seed=3).double()
    c, _ = hand.propose(x, 50)  # [K, B]
    z = {"c": c}
    torch.testing.assert_close(prog.log_joint(x, z), hand.log_joint(x, c), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(prog.log_proposal(x, z), hand.log_proposal(x, c), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(prog.log_prior(z), hand.log_prior(c), rtol=1e-12, atol=1e-12)
    # its own proposal: the right shapes, detached z, log q with gradient to φ only
    zp, log_q = prog.propose(x, 7)
    assert zp["c"].shape == (7, 6) and log_q.shape == (7, 6) and not zp["c"].requires_grad
    torch.testing.assert_close(log_q, hand.log_proposal(x, zp["c"]), rtol=1e-12, atol=1e-12)
    # identical RWS gradients (θ and wake-φ) for the same particles
    grads = []
    for model, as_latent in ((hand, lambda c: c), (prog, gmm_pyro.as_latent)):
        loss = ws.RWS(k=50, q_update="wake")(fixed(model, c, as_latent), x).loss
        grads.append(torch.autograd.grad(loss, model.p_parameters() + model.q_parameters()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_weights_are_normalised_per_datapoint_not_per_batch():
    """Two datapoints whose likelihoods differ by hundreds of nats: normalised over the whole batch
    (Pyro's ReweightedWakeSleep) one datapoint gets almost no weight; per datapoint each gets 1, and
    RWS's θ-gradient is the per-datapoint one."""
    hand, prog = twins(1)
    x = torch.tensor([[0.0], [400.0]], dtype=torch.float64)  # the second far from every component
    torch.manual_seed(0)
    log_w = log_weights(prog, x, 30)
    assert log_w.shape == (30, 2)
    per_datapoint = torch.softmax(log_w, 0)
    per_batch = torch.softmax(log_w.reshape(-1), 0).reshape(30, 2)
    torch.testing.assert_close(per_datapoint.sum(0), torch.ones(2, dtype=torch.float64))
    assert per_batch.sum(0)[1] < 1e-6  # the far datapoint vanishes from a per-batch estimator
    # RWS's wake-θ update, on fixed particles, is Σ_k w̃_kb ∇θ log p(x_b, z_kb) averaged over b
    torch.manual_seed(1)
    c, _ = hand.propose(x, 30)
    z = {"c": c}
    prog = fixed(prog, c, gmm_pyro.as_latent)
    loss = ws.RWS(k=30, q_update="wake")(prog, x).loss
    (g,) = torch.autograd.grad(loss, prog.p_parameters()[:1])
    lp = prog.log_joint(x, z)
    w = torch.softmax((lp - prog.log_proposal(x, z)).detach(), 0)
    (want,) = torch.autograd.grad(-(w * lp).sum(0).mean(), prog.p_parameters()[:1], retain_graph=True)
    wb = torch.softmax((lp - prog.log_proposal(x, z)).detach().reshape(-1), 0).reshape(30, 2)
    (batch,) = torch.autograd.grad(-(wb * lp).sum() / 2, prog.p_parameters()[:1])
    torch.testing.assert_close(g, want)
    assert (g - batch).norm() > 0.1 * g.norm()


def test_sleep_samples_and_the_sleep_phase():
    _, prog = twins()
    z, x = prog.sample(40)
    assert z["c"].shape == (40,) and x.shape == (40, 1) and z["c"].dtype == torch.long
    assert prog.log_joint(x, z).shape == (40,) and prog.log_proposal(x, z).shape == (40,)
    loss = sleep_phase_loss(prog, 40)
    gp = torch.autograd.grad(loss, prog.p_parameters(), allow_unused=True)
    gq = torch.autograd.grad(loss, prog.q_parameters())
    assert all(g is None or not g.any() for g in gp) and any(g.abs().sum() > 0 for g in gq)


def test_it_meets_the_contract_and_trains():
    torch.manual_seed(0)
    prog = gmm_pyro.mixture_pyro()
    x = gmm.make_data(2000)
    members = ["propose", "log_joint", "log_proposal", "sample", "log_prior", "p_parameters", "q_parameters"]
    check_model(prog, members, "test")
    check_shapes(prog, x, members)
    before = (gmm.learned_probs(prog) - gmm.true_probs()).abs().sum()
    ws.train(prog, ws.RWS(k=10), x, x[:200], epochs=2, lr_p=1e-2, lr_q=1e-2, progress=False)
    after = (gmm.learned_probs(prog) - gmm.true_probs()).abs().sum()
    assert after < 0.6 * before, (before, after)


class GlobalLatent(nn.Module):
    def forward(self, x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x[..., 0])


class GlobalGuide(nn.Module):
    def forward(self, x):
        pyro.sample("mu", dist.Normal(0.0, 1.0))


class StoreParam(nn.Module):
    def forward(self, x):
        loc = pyro.param("loc_in_the_global_store", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Normal(loc, 1.0))
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x[..., 0])


class LocalGuide(nn.Module):
    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Normal(0.0, 1.0))


class OtherGuide(nn.Module):
    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("d", dist.Categorical(logits=torch.zeros(20)))


def test_refusals_name_the_fix():
    x = torch.randn(4, 1)
    with pytest.raises(ValueError, match="'mu' is outside the data plate"):
        from_pyro(GlobalLatent(), GlobalGuide()).propose(x, 2)
    with pytest.raises(TypeError, match="pyro.param\\('loc_in_the_global_store'\\).*hold the parameter in the module"):
        from_pyro(StoreParam(), LocalGuide()).propose(x, 2)
    with pytest.raises(ValueError, match="pass data_dim="):
        from_pyro(gmm_pyro.MixtureModel(), gmm_pyro.MixtureGuide()).sample(3)
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        from_pyro(lambda x: None, gmm_pyro.MixtureGuide())
    with pytest.raises(ValueError, match="does not sample the model's latent site\\(s\\) \\['c'\\]"):
        from_pyro(gmm_pyro.MixtureModel(), OtherGuide()).propose(x, 2)


def test_importance_sampled_log_likelihood_matches_the_exact_one():
    """Per datapoint, log (1/K) Σ w − log p(x) has mean ≈ −χ²/(2K) (Jensen): with a fitted proposal
    and K = 2000 that bias is far below the noise, so the paired differences' mean lies within 3
    standard errors of 0."""
    torch.manual_seed(0)
    prog = gmm_pyro.mixture_pyro()
    x = gmm.make_data(2000)
    ws.train(prog, ws.RWS(k=10, q_update="wake"), x, None, epochs=3, lr_p=1e-2, lr_q=1e-2, progress=False)
    xt = gmm.make_data(200, seed=5)
    with torch.no_grad():
        exact = torch.logsumexp(prog.log_joint(xt, {"c": gmm._states(xt)}), 0)
        est = ws.evaluate.importance_log_marginal(prog, xt, 2000)
    d = est - exact
    se = d.std() / len(d) ** 0.5
    assert abs(d.mean()) < 3 * se + 1e-6, (d.mean(), se)
    assert abs(ws.log_likelihood(prog, xt, k=2000, seed=1).mean - exact.mean().item()) < 0.05
