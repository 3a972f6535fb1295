"""Concrete (Maddison et al. 2017; Jang et al. 2017) and RELAX (Grathwohl et al. 2018) against exact
answers by enumeration, on the small SBN and the Gaussian mixture of tests/test_discrete_estimators.py:

- RELAX is unbiased for ∇θ ELBO and ∇φ ELBO, with or without its network, before and after ψ is
  trained; training ψ by its own loss lowers the φ-gradient's variance;
- the relaxation's pieces: the conditional noise s̃ | b has H(s̃) = b and, b drawn from q, the law of s;
  the Concrete densities are torch.distributions' LogitRelaxedBernoulli / ExpRelaxedCategorical;
- Concrete's bias for ∇ ELBO, measured: with the discrete mass functions at the relaxed point it
  shrinks as τ → 0; with the Concrete densities (Maddison et al.) it does not (the relaxed KL does
  not depend on τ); its variance is finite and grows as τ falls.

Measured with this file's SBN (8 units, 3 latents, B = 4; seed 0, 30 × 100 estimates; ‖·‖ relative to the exact gradient's norm),
bias of the φ-update for ∇φ ELBO:  τ = 1, 0.5, 0.2, 0.1, 0.05 → density "discrete" 0.32, 0.15, 0.06, 0.03,
0.03 (the last within noise); density "concrete" 0.29, 0.30, 0.30, 0.30, 0.29.
Tolerances come from standard errors (Bonferroni z-bounds, 3 noise floors), as in tests/exactness.py.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import TINY, run
from exactness import assert_unbiased, bias_norm_band, estimates, exact_elbo, exact_grads
from scipy.stats import ks_2samp

import wakesleep as ws
from wakesleep.estimators import ESTIMATORS, RELAX, Concrete, Reinforce
from wakesleep.estimators.concrete import concrete_log_density, conditional_noise, hard, relax, sample_noise
from wakesleep.lab import diagnostics as D
from wakesleep.layers import BernoulliLayer, CategoricalLayer, CategoricalPrior
from wakesleep.models.contract import MEMBERS, ModelContractError, check_model
from wakesleep.models.exact import sbn_reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import gmm  # noqa: E402


def case(name):
    if name == "sbn":
        return sbn_reference(data_dim=8, latents=3, batch=4)
    if name == "categorical":  # a Helmholtz machine with one categorical latent
        torch.manual_seed(5)
        model = ws.models.HelmholtzMachine(CategoricalPrior(4), [BernoulliLayer(4, 6)], [CategoricalLayer(6, 4)]).double()
        with torch.no_grad():
            for p in model.p_parameters():
                p.mul_(3.0)
        return model, model.sample(4)[1]
    torch.manual_seed(6)
    return gmm.HandWrittenMixture().double(), gmm.make_data(4, seed=6).double()


CASES = ["sbn", "categorical", "mixture"]


# ------------------------------------------------------------------ RELAX


@pytest.mark.parametrize("name", CASES)
def test_relax_is_unbiased_for_the_elbo_gradient(name):
    model, x = case(name)
    g_t, g_p = exact_grads(model, x, exact_elbo(model, x))
    torch.manual_seed(21)
    t, p = estimates(model, x, RELAX(k=2, control_hidden=8).double(), 60, 100)
    assert_unbiased(t, g_t, "theta")
    assert_unbiased(p, g_p, "phi")


def test_training_the_control_variate_lowers_the_variance_and_keeps_relax_unbiased():
    model, x = case("sbn")
    _, g_p = exact_grads(model, x, exact_elbo(model, x))
    torch.manual_seed(22)
    est = RELAX(k=1, control_hidden=16).double()
    est.prepare(model, x)
    variance = lambda e: estimates(model, x, e, 200, 20)[1].var(0).sum().item() * 20  # noqa: E731 - tr Cov of one estimate
    reinforce, before = variance(Reinforce(k=1)), variance(est)
    opt = torch.optim.Adam(est.parameters(), lr=1e-2)
    for _ in range(300):  # ψ alone, by the estimator's own loss
        opt.zero_grad()
        est(model, x.repeat(25, 1)).loss.backward()
        opt.step()
    model.zero_grad()
    after = variance(est)  # seeds 1, 2, 3, 22: after / before 0.66, 0.61, 0.75, 0.74; before / reinforce 0.08-0.09
    assert after < 0.85 * before < 0.2 * reinforce, (reinforce, before, after)
    assert_unbiased(estimates(model, x, est, 60, 100)[1], g_p, "phi after training psi")


def test_relax_loss_gives_each_group_its_gradient_only():
    """θ gets ∇θ log p(x, b) alone (nothing from the control variate), ψ gets ∇ψ of the variance."""
    model, x = case("sbn")
    torch.manual_seed(23)
    est = RELAX(k=1, control_hidden=4).double()
    est.prepare(model, x)
    out = est(model, x)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in est.parameters())
    assert {"objective", "gradient_variance", "temperature", "eta"} <= set(out.metrics)
    with torch.no_grad():  # no graph: the θ-surrogate alone, no error
        assert torch.isfinite(est(model, x).loss)


# ------------------------------------------------------------------ the relaxation's pieces


@pytest.mark.parametrize("kind", ["binary", "categorical"])
def test_conditional_noise_is_the_law_of_s_given_its_hard_state(kind):
    torch.manual_seed(24)
    logits = torch.tensor([[-2.0, 0.3, 1.5]], dtype=torch.float64)  # 3 units, or one variable of 3 categories
    s = sample_noise(kind, logits, 40000)
    b = hard(kind, s)
    s_cond = conditional_noise(kind, logits, b)
    assert torch.equal(hard(kind, s_cond), b)
    fresh = sample_noise(kind, logits, 40000)
    for i in range(3):
        assert ks_2samp(s_cond[:, 0, i].numpy(), fresh[:, 0, i].numpy()).pvalue > 1e-4, i


def test_concrete_densities_are_torch_distributions():
    from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli
    from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

    torch.manual_seed(25)
    logits, tau = torch.randn(5, 3, dtype=torch.float64), 0.4
    y, _ = relax("binary", sample_noise("binary", logits, 2), tau)
    want = LogitRelaxedBernoulli(torch.tensor(tau, dtype=torch.float64), logits=logits).log_prob(y).sum(-1)
    assert torch.allclose(concrete_log_density("binary", logits, y, tau), want)
    y, _ = relax("categorical", sample_noise("categorical", logits, 2), tau)
    want = ExpRelaxedCategorical(torch.tensor(tau, dtype=torch.float64), logits=logits).log_prob(y)
    assert torch.allclose(concrete_log_density("categorical", logits, y, tau), want)


# ------------------------------------------------------------------ Concrete


def test_concrete_bias_shrinks_with_the_temperature_for_the_discrete_density_only():
    model, x = case("sbn")
    g_t, g_p = exact_grads(model, x, exact_elbo(model, x))
    torch.manual_seed(21)
    bands = {}
    for density in ("discrete", "concrete"):
        for tau in (1.0, 0.05):
            t, p = estimates(model, x, Concrete(temperature=tau, density=density), 30, 100)
            assert torch.isfinite(t).all() and torch.isfinite(p).all()
            bands[density, tau] = bias_norm_band(t, g_t), bias_norm_band(p, g_p), p.var(0).sum().item()
    for part in (0, 1):
        (hot, n_hot), (cold, n_cold) = bands["discrete", 1.0][part], bands["discrete", 0.05][part]
        assert hot - 3 * n_hot > cold + 3 * n_cold, (part, bands)
        assert cold < 0.05 * (g_t, g_p)[part].norm().item() + 3 * n_cold, (part, bands)
        # Maddison et al.'s Concrete densities: the relaxed KL does not depend on τ, and the bias stays.
        c_hot, (c_cold, n_c_cold) = bands["concrete", 1.0][part][0], bands["concrete", 0.05][part]
        assert c_cold - 3 * n_c_cold > max(0.1 * (g_t, g_p)[part].norm().item(), 0.5 * c_hot), (part, bands)
    assert bands["discrete", 0.05][2] > bands["discrete", 1.0][2]  # the variance grows as τ falls, finite


@pytest.mark.parametrize("name", ["categorical", "mixture"])
def test_concrete_on_categorical_latents_converges_with_the_discrete_density(name):
    model, x = case(name)
    g_t, g_p = exact_grads(model, x, exact_elbo(model, x))
    torch.manual_seed(26)
    hot, cold = (estimates(model, x, Concrete(temperature=tau, density="discrete"), 30, 100) for tau in (1.0, 0.1))
    for part, target in enumerate((g_t, g_p)):
        (b1, n1), (b2, n2) = bias_norm_band(hot[part], target), bias_norm_band(cold[part], target)
        assert b2 - 3 * n2 < b1 + 3 * n1 and b2 < 0.2 * target.norm().item() + 3 * n2, (part, b1, n1, b2, n2)


def test_concrete_settings_and_multi_sample_bound():
    for bad in (0.0, -1.0, True):
        with pytest.raises(ValueError, match="temperature"):
            Concrete(temperature=bad)
    with pytest.raises(ValueError, match="density"):
        Concrete(density="gumbel")
    with pytest.raises(ValueError, match="control_hidden"):
        RELAX(control_hidden=-1)
    model, x = case("sbn")
    est = Concrete(k=5)
    assert est.q_update is None and Concrete().q_update == "elbo"
    out = est(model, x)
    assert torch.isfinite(out.loss) and out.metrics["objective"] <= ws.evaluate.exact_log_marginal(model, x).mean() + 1.0


# ------------------------------------------------------------------ the contract, diagnose, training, command line


def test_registry_requires_and_a_model_that_cannot_be_relaxed():
    assert ESTIMATORS["concrete"] is Concrete and ESTIMATORS["relax"] is RELAX
    model, _ = case("sbn")
    for est in (Concrete(), RELAX()):
        assert set(est.requires(model)) <= set(MEMBERS)
        check_model(model, est.requires(model), est.name)
    deep = ws.models.HelmholtzMachine.sbn([6, 3, 2])
    assert not deep.has_relaxation
    with pytest.raises(ModelContractError, match="proposal_distribution, prior_distribution, log_likelihood.*one latent layer"):
        check_model(deep, RELAX().requires(deep), "RELAX", RELAX().member_hints())
    with pytest.raises(ValueError, match="one layer"):
        deep.proposal_distribution(torch.zeros(2, 6))


def test_diagnose_measures_both_against_the_elbo_gradient():
    model, x = case("sbn")
    settings = [s for s in D.default_settings(model) if s.algorithm in ("concrete", "relax")]
    assert len(settings) == 11
    rows = D.diagnose(model, x, ["relax:k=1,control_hidden=4", "concrete:temperature=0.5,density=discrete"], repeats=20, progress=False)
    targets = {(r["algorithm"], r["target"]) for r in rows}
    assert {("relax", "phi-elbo"), ("concrete", "phi-elbo"), ("relax", "theta")} <= targets
    assert not any(s.algorithm in ("concrete", "relax") for s in D.default_settings(ws.models.HelmholtzMachine.sbn([6, 3, 2])))


@pytest.mark.parametrize("name", ["concrete", "relax"])
def test_training_on_the_mixture_improves_it(name):
    torch.manual_seed(20)
    model = gmm.HandWrittenMixture()
    data, test = gmm.make_data(1000, seed=1), gmm.make_data(500, seed=2)
    est = Concrete(k=1, temperature=0.5, density="discrete") if name == "concrete" else RELAX(k=1, control_hidden=8)
    with torch.no_grad():
        before = ws.evaluate.exact_log_marginal(model, test).mean().item()
    ws.train(model, est, data, None, epochs=2, batch_size=50, lr_p=1e-2, lr_q=3e-2, lr_estimator=1e-2, progress=False)
    with torch.no_grad():
        after = ws.evaluate.exact_log_marginal(model, test).mean().item()
    assert after > before, (before, after)


@pytest.mark.parametrize("argv", [["--algorithm", "concrete", "--temperature", "0.5"], ["--algorithm", "relax", "--control-hidden", "8", "--k", "1"]])
def test_a_tiny_command_line_run_trains(tmp_path, argv):
    code, out, err = run(["train", *argv, *TINY, "--run-dir", str(tmp_path / "run")])
    assert code == 0, err
    assert "test log-likelihood" in out and math.isfinite(float(out.split("test log-likelihood: ")[1].split()[0]))


def test_a_wrong_log_likelihood_shape_is_named_before_the_first_step():
    model, x = case("mixture")
    good = model.log_likelihood
    model.log_likelihood = lambda x, z: good(x, z).sum(0)  # [B], not [K, B]
    with pytest.raises(ws.models.ModelShapeError, match="log_likelihood"):
        ws.train(model, RELAX(k=1), x.float().repeat(5, 1), None, epochs=1, progress=False)


def test_an_infinite_temperature_is_refused():
    """τ = inf would make the Concrete density's log τ infinite and the loss NaN at the first step."""
    for est in (ws.Concrete, ws.RELAX):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            est(temperature=float("inf"))


def test_a_log_likelihood_that_rounds_z_is_refused_before_the_first_step():
    """Concrete and RELAX differentiate log p(x | z) at a relaxed z; one that rounds z would leave
    their pathwise gradients silently zero."""

    class Rounded(ws.models.HelmholtzMachine):
        def log_likelihood(self, x, z):
            return super().log_likelihood(x, (z > 0.5).to(z.dtype))

    torch.manual_seed(0)
    model = ws.models.HelmholtzMachine.sbn([12, 4])
    model.__class__ = Rounded
    x = (torch.rand(40, 12) < 0.4).float()
    for est in (ws.Concrete(k=2), ws.RELAX(k=2)):
        with pytest.raises(ValueError, match="log_likelihood.*does not depend on z at a relaxed z"):
            ws.train(model, est, x, epochs=1, batch_size=20, progress=False)
