"""The checks before the first step that a model can learn (wakesleep.models.probes): each mistake
that used to pass the contract's checks and then train without learning is refused by
``wakesleep.train`` before any step, naming the member (or the user's own from_distributions
function) and the fix; legitimate models and seeded runs are untouched."""

from __future__ import annotations

import math
import time
import warnings

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Independent, Normal

import wakesleep as ws
from wakesleep.estimators.base import Estimator, EstimatorOutput
from wakesleep.models import from_distributions
from wakesleep.models.contract import TRAINING_WITH_PROPOSAL
from wakesleep.models.probes import ModelCheckError
from wakesleep.training.step import TrainingError

X = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))


class Gauss(nn.Module):
    """z ~ N(μ, I), x | z ~ N(W z, I), q(z | x) = N(A x + b, σ² I), all in 2 dimensions; variants
    break one member each."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.mu = nn.Parameter(torch.zeros(2))
        self.dec = nn.Linear(2, 2)
        self.enc = nn.Linear(2, 2)
        self.log_s = nn.Parameter(torch.zeros(2))

    def p_parameters(self):
        return [self.mu, *self.dec.parameters()]

    def q_parameters(self):
        return [*self.enc.parameters(), self.log_s]

    def sample(self, n):
        with torch.no_grad():
            z = self.mu + torch.randn(n, 2)
            return z, self.dec(z) + torch.randn(n, 2)

    def log_joint(self, x, z):
        return Normal(self.mu, 1.0).log_prob(z).sum(-1) + Normal(self.dec(z), 1.0).log_prob(x).sum(-1)

    def q(self, x):
        return Independent(Normal(self.enc(x), self.log_s.exp()), 1)

    def propose(self, x, k):
        q = self.q(x)
        z = q.sample((k,))
        return z, q.log_prob(z)

    def log_proposal(self, x, z):
        return self.q(x).log_prob(z)


def broken(**members):
    return type("Broken", (Gauss,), members)()


def refuse(model, *match, estimator=None, data=X):
    """Train, expecting a ModelCheckError before any step whose message has every ``match``."""
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ModelCheckError) as err:
        ws.train(model, estimator or ws.RWS(k=3), data, epochs=1, batch_size=10, progress=False)
    for text in match:
        assert text in str(err.value), str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "a step was taken"
    return str(err.value)


def dist_model(prior=None, likelihood=None, proposal=None):
    torch.manual_seed(2)
    dec, enc = nn.Linear(2, 2), nn.Linear(2, 2)
    return (
        from_distributions(
            prior=prior or (lambda: Independent(Normal(torch.zeros(2), 1.0), 1)),
            likelihood=likelihood or (lambda z: Normal(dec(z), 1.0)),
            proposal=proposal or (lambda x: Normal(enc(x), 1.0)),
            generative=dec,
            recognition=enc,
        ),
        dec,
        enc,
    )


def test_a_correct_model_of_either_kind_trains():
    for model in (Gauss(), dist_model()[0]):
        fit = ws.train(model, ws.RWS(k=3), X, epochs=1, batch_size=10, progress=False)
        assert len(fit.history) == 1 and fit.skipped_steps == 0 and math.isfinite(fit.history[0]["train_objective"])


# ------------------------------------------------------------------ gradient flow


def test_a_detached_log_q_is_named():
    def propose(self, x, k):
        z, log_q = Gauss.propose(self, x, k)
        return z, log_q.detach()

    refuse(broken(propose=propose), "Broken.propose returned log_q that does not depend on the proposal's parameters φ", "detached")
    model, dec, enc = dist_model(proposal=None)
    model.proposal_fn = lambda x: Normal(enc(x).detach(), 1.0)
    refuse(model, "DistributionsModel.propose", "does not depend on the proposal's parameters", "your proposal= function", "detached")


def test_a_log_joint_under_no_grad_is_named():
    def log_joint(self, x, z):
        with torch.no_grad():
            return Gauss.log_joint(self, x, z)

    refuse(broken(log_joint=log_joint), "Broken.log_joint returned a tensor that does not depend on the generative parameters θ", "no_grad")
    model, dec, _ = dist_model()

    def likelihood(z):
        with torch.no_grad():
            return Normal(dec(z), 1.0)

    model.likelihood_fn = likelihood
    refuse(model, "log_joint", "does not depend on the generative parameters θ", "likelihood= function", "no_grad")


def test_a_parameter_that_one_part_leaves_out_is_named():
    model, dec, _ = dist_model()
    prior_mu = nn.Parameter(torch.zeros(2))
    model.prior_fn = lambda: Independent(Normal(prior_mu, 1.0), 1)
    model.p_modules.append(nn.ParameterList([prior_mu]))

    def likelihood(z):
        with torch.no_grad():
            return Normal(dec(z), 1.0)

    model.likelihood_fn = likelihood
    refuse(model, "depends on some of the generative parameters θ (p_parameters()) but not on", "weight [2, 2]", "likelihood= function", "no_grad")


def test_an_estimator_loss_that_reaches_no_group_is_named():
    class WakeThetaOnly(Estimator):
        def requires(self, model):
            return TRAINING_WITH_PROPOSAL

        def forward(self, model, x):
            z, _ = model.propose(x, 2)
            return EstimatorOutput(-model.log_joint(x, z).mean())

    refuse(Gauss(), "the proposal's parameters φ (q_parameters()) receives no gradient from its loss", "WakeThetaOnly", estimator=WakeThetaOnly())


def test_a_non_differentiable_exact_marginal_is_named():
    def exact_log_marginal(self, x):
        with torch.no_grad():
            cov = self.dec.weight @ self.dec.weight.T + 2 * torch.eye(2)
            return torch.distributions.MultivariateNormal(self.dec(self.mu), cov).log_prob(x)

    refuse(broken(exact_log_marginal=exact_log_marginal), "Broken.exact_log_marginal", "does not depend on the generative parameters θ")


# ------------------------------------------------------------------ batch order


def test_a_proposal_reading_the_batch_reversed_is_named():
    refuse(broken(q=lambda self, x: Gauss.q(self, x.flip(0))), "Broken.log_proposal mixes datapoints", "datapoint", "flipped")
    model, _, enc = dist_model()
    model.proposal_fn = lambda x: Normal(enc(x.flip(0)), 1.0)
    msg = refuse(model, "log_proposal mixes datapoints", "your proposal= function")
    assert "computed from datapoint" in msg


def test_a_proposal_whose_particles_belong_to_another_datapoint_is_named():
    def propose(self, x, k):
        q = self.q(x.flip(0))
        z = q.sample((k,))
        return z, q.log_prob(z)

    refuse(broken(propose=propose), "Broken.propose returned log_q", "log_proposal(x, z) at the same particle", "conditioned on datapoint")


def test_a_log_joint_reading_the_batch_reversed_is_named():
    def log_joint(self, x, z):
        return Gauss.log_joint(self, x.flip(0), z)

    msg = refuse(broken(log_joint=log_joint), "Broken.log_joint mixes datapoints", "flipped")
    assert "computed from datapoint" in msg
    model, dec, _ = dist_model()
    model.likelihood_fn = lambda z: Normal(dec(z.flip(-2)), 1.0)
    refuse(model, "log_joint mixes datapoints", "your likelihood= function")


# ------------------------------------------------------------------ values, dtypes, shapes


def test_nan_from_a_member_is_named_before_any_step():
    def log_joint(self, x, z):
        return Gauss.log_joint(self, x, z) + torch.log(-self.mu.sum() - 1)  # log of a negative number

    refuse(broken(log_joint=log_joint), "Broken.log_joint returned NaN", "before any training step", "log of 0 or of a negative number")
    model, dec, _ = dist_model()
    model.likelihood_fn = lambda z: Normal(dec(z) + torch.tensor(-1.0).log(), 1.0)  # a log of a negative number
    refuse(model, "log_joint returned NaN", "your likelihood= function")


def test_minus_inf_at_every_particle_warns_what_to_do():
    def log_joint(self, x, z):
        return Gauss.log_joint(self, x, z) + torch.where(z[..., 0] > 1e6, 0.0, -float("inf"))

    with pytest.warns(UserWarning, match="−inf at every particle.*sleep-phase updates.*ABC"):
        with pytest.raises(Exception):  # the step itself is then non-finite; the warning came first
            ws.train(broken(log_joint=log_joint), ws.RWS(k=3), X, epochs=1, batch_size=10, progress=False)


def test_a_float64_member_is_named():
    def log_joint(self, x, z):
        return Gauss.log_joint(self, x, z).double()

    refuse(broken(log_joint=log_joint), "Broken.log_joint returned log p(x, z) as torch.float64 but the data are torch.float32", "dtype=x.dtype")
    w = nn.Parameter(torch.ones(2))
    model, _, _ = dist_model(prior=lambda: Independent(Normal(torch.zeros(2, dtype=torch.float64), 1.0), 1), likelihood=lambda z: Normal(w * z, 1.0))
    model.p_modules.append(nn.ParameterList([w]))
    with pytest.raises(
        ModelCheckError,
        match="your prior= function returned a distribution whose draws are torch.float64, but the model's parameters are torch.float32",
    ):
        ws.train(model, ws.RWS(k=3), X, epochs=1, batch_size=10, progress=False)


def test_integer_latents_in_a_network_name_the_likelihood_and_the_fix():
    net = nn.Linear(3, 2)
    model = from_distributions(
        prior=lambda: Categorical(logits=torch.zeros(3)),
        likelihood=lambda z: Normal(net(z), 1.0),  # z is an integer category
        proposal=lambda x: Categorical(logits=torch.zeros(x.shape[0], 3)),
        generative=net,
    )
    with pytest.raises(ModelCheckError, match=r"your likelihood= function raised .*z holds integers.*one_hot"):
        ws.train(model, ws.RWS(k=3), X, epochs=1, batch_size=10, progress=False)


def test_a_prior_without_independent_names_the_prior_and_the_fix():
    model, _, _ = dist_model(prior=lambda: Normal(torch.zeros(2), 1.0))
    with pytest.raises(ModelCheckError, match=r"your prior= function returned Normal with batch_shape \[2\].*Independent\(Normal\(\.\.\.\), 1\)"):
        ws.train(model, ws.RWS(k=3), X, epochs=1, batch_size=10, progress=False)


def test_a_likelihood_or_proposal_of_the_wrong_width_names_its_shapes():
    model, _, enc = dist_model(likelihood=lambda z: Normal(torch.zeros(*z.shape[:-1], 3), 1.0))
    with pytest.raises(ValueError, match=r"train_data has width 2 but the model expects 3 \(the width of x drawn from your likelihood= function\)"):
        ws.train(model, ws.RWS(k=3), X, epochs=1, batch_size=10, progress=False)
    model, _, _ = dist_model(proposal=lambda x: Normal(torch.zeros(x.shape[0], 5), 1.0))
    with pytest.raises(ModelCheckError, match=r"your proposal= function returned Normal with batch_shape \[\d+, 5\].*event_shape \[2\]"):
        ws.train(model, ws.RWS(k=3), X, epochs=1, batch_size=10, progress=False)


# ------------------------------------------------------------------ during training, and the cost


def test_a_nonfinite_step_later_names_the_member():
    def log_joint(self, x, z):  # finite on the checks' three datapoints, NaN on a training batch
        out = Gauss.log_joint(self, x, z)
        return out + (torch.nan if x.shape[0] > 3 else 0.0)

    with pytest.raises(TrainingError, match=r"step 1 .*Re-run member by member.*Broken.log_joint returned non-finite"):
        ws.train(broken(log_joint=log_joint), ws.RWS(k=3), X, epochs=1, batch_size=10, progress=False)


def test_the_checks_leave_a_seeded_run_bit_identical(monkeypatch):
    from wakesleep.models import probes
    from wakesleep.training import loop

    def run():
        torch.manual_seed(0)
        model = ws.models.HelmholtzMachine.sbn([8, 4])
        data = (torch.rand(30, 8, generator=torch.Generator().manual_seed(3)) > 0.5).float()
        ws.train(model, ws.RWS(k=3, q_update="both"), data, epochs=2, batch_size=10, progress=False, valid=data[:10], valid_k=5)
        return [p.detach().clone() for p in model.parameters()]

    checked = run()
    monkeypatch.setattr(probes, "check_learning", lambda *a, **k: None)
    monkeypatch.setattr(loop, "check_gradient_flow", lambda *a, **k: None)
    unchecked = run()
    assert all(torch.equal(a, b) for a, b in zip(checked, unchecked))


def test_the_checks_cost_little_on_the_built_in_models():
    from wakesleep.training.checks import check_gradient_flow, check_model_for_training

    model = ws.models.HelmholtzMachine.sbn([784, 200, 200])
    data = (torch.rand(100, 784) > 0.5).float()
    est = ws.RWS(k=5, q_update="both")
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_model_for_training(model, est, data, data)
        check_gradient_flow(model, est, data)
    assert time.perf_counter() - t < 2.0  # about 0.05 s here; generous for a shared machine


def test_diagnose_refuses_an_exact_marginal_without_gradient():
    from wakesleep.lab.diagnostics import exact_targets

    class NoGradMarginal(Gauss):
        def exact_log_marginal(self, x):
            with torch.no_grad():
                return torch.distributions.MultivariateNormal(self.dec(self.mu), self.dec.weight @ self.dec.weight.T + 2 * torch.eye(2)).log_prob(x)

    with pytest.raises(
        ModelCheckError, match="NoGradMarginal.exact_log_marginal returned a tensor that does not depend on the generative parameters"
    ):
        exact_targets(NoGradMarginal(), X[:5])


def test_the_checks_skip_an_exact_marginal_over_too_many_states(monkeypatch):
    """A model with more latent states than PROBE_STATES is checked without its exact marginal (over
    2^20 states of a NADE that took minutes and 12 GB before the first step); below it, the marginal is checked."""
    from wakesleep.models import probes
    from wakesleep.training.checks import check_model_for_training

    calls = []
    model = ws.HelmholtzMachine.sbn([6, 4])
    real = model.exact_log_marginal
    monkeypatch.setattr(model, "exact_log_marginal", lambda x: calls.append(x.shape) or real(x))
    x = (torch.rand(5, 6) < 0.5).float()
    assert model.latent_states == 16
    check_model_for_training(model, ws.RWS(k=2), x, None)
    assert calls, "the exact marginal of 16 states should be checked"
    calls.clear()
    monkeypatch.setattr(probes, "PROBE_STATES", 8)
    check_model_for_training(model, ws.RWS(k=2), x, None)
    assert not calls
