"""The model contract: every missing member and every wrong shape is named before the first step;
from_distributions' members and exponential-family view against closed forms; exact evaluation
of categorical latents; the command line on a user's model file."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent, Normal, OneHotCategorical, Poisson

import wakesleep as ws
from wakesleep.layers import BernoulliLayer, CategoricalLayer, CategoricalPrior, CirclePrior, GaussianLayer
from wakesleep.models import ModelContractError, ModelShapeError, check_model, check_shapes, from_distributions
from wakesleep.models.contract import EVALUATION, MEMBERS, missing_members

ROOT = Path(__file__).resolve().parents[1]


class Toy(nn.Module):
    """A complete two-state model written against the contract: c ∈ {0, 1}, x | c ~ N(2c − 1, 1) in
    2 dimensions, q(c | x) logistic.  Test variants break one member each."""

    def __init__(self):
        super().__init__()
        self.logit = nn.Parameter(torch.zeros(()))
        self.q = nn.Linear(2, 1)

    def p_parameters(self):
        return [self.logit]

    def q_parameters(self):
        return list(self.q.parameters())

    def _prior(self):
        return Bernoulli(logits=self.logit)

    def sample(self, n):
        with torch.no_grad():
            c = self._prior().sample((n,))
            return c, (2 * c - 1)[:, None] + torch.randn(n, 2)

    def log_prior(self, c):
        return self._prior().log_prob(c)

    def log_joint(self, x, c):
        return self.log_prior(c) + Normal((2 * c - 1)[..., None], 1.0).log_prob(x).sum(-1)

    def _q(self, x):
        return Bernoulli(logits=self.q(x)[..., 0])

    def propose(self, x, k):
        q = self._q(x)
        c = q.sample((k,))
        return c, q.log_prob(c)

    def log_proposal(self, x, c):
        return self._q(x).log_prob(c)

    def exponential_family(self, c):
        return (2 * c - 1)[:, None].expand(-1, 2), torch.full(c.shape, 1.0)  # η = μ, Ψ = ½ Σ μ² = 1

    def sufficient_statistics(self, x):
        return x


def variant(**members):
    return type("Broken", (Toy,), members)()


X = torch.randn(6, 2)


# ------------------------------------------------------------------ missing members


@pytest.mark.parametrize(
    "estimator, needs",
    [
        (ws.RWS(k=3, q_update="wake"), {"propose", "log_joint", "p_parameters", "q_parameters"}),
        (ws.RWS(k=3), {"propose", "log_joint", "p_parameters", "q_parameters", "sample", "log_proposal"}),
        (ws.WakeSleep(), {"propose", "log_joint", "p_parameters", "q_parameters", "sample", "log_proposal"}),
        (ws.IWAE(k=3), {"propose", "log_joint", "p_parameters", "q_parameters"}),
        (ws.ALWS(target="generic"), {"sample", "log_joint", "p_parameters"}),
        (
            ws.ALWS(target="exp_family", q_update="sleep"),
            {"sample", "log_joint", "p_parameters", "log_prior", "exponential_family", "sufficient_statistics", "log_proposal", "q_parameters"},
        ),
    ],
)
def test_each_estimator_names_exactly_the_members_it_calls(estimator, needs):
    assert set(estimator.requires(Toy())) == needs
    for member in needs:  # without any one of them, training stops before a step, naming it
        model = variant(**{member: None})
        before = [p.detach().clone() for p in Toy.parameters(model)]
        with pytest.raises(ModelContractError, match=f"lacks {member} "):
            ws.train(model, estimator, X, None, epochs=1, progress=False)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_every_missing_member_is_listed_at_once():
    model = variant(sample=None, log_proposal=None, q_parameters=None)
    with pytest.raises(TypeError) as err:
        ws.train(model, ws.RWS(k=2), X, X, epochs=1, progress=False)
    msg = str(err.value)
    assert "lacks q_parameters, sample, log_proposal (" in msg and "validation" in msg
    for m in ("q_parameters", "sample", "log_proposal"):
        assert MEMBERS[m] in msg


def test_a_model_that_is_not_a_module_is_told_so():
    class Plain:
        def sample(self, n): ...

    assert missing_members(Plain(), ["sample", "log_joint"]) == ["torch.nn.Module", "log_joint"]
    with pytest.raises(ModelContractError, match="torch.nn.Module"):
        check_model(Plain(), ["sample"], "test")


def test_validation_and_evaluation_need_a_proposal():
    model = HelmholtzNoProposal()
    with pytest.raises(ModelContractError, match="no proposal"):
        ws.log_likelihood(model, model.sample(4)[1], k=3)
    with pytest.raises(ModelContractError, match="lacks propose"):
        check_model(model, EVALUATION, "evaluation")


def HelmholtzNoProposal():
    torch.manual_seed(0)
    return ws.HelmholtzMachine(CirclePrior(learn=True), [GaussianLayer(2, 3, (8,), scale="learned")], None)


def test_validating_a_model_without_proposal_says_so_before_training():
    model = HelmholtzNoProposal()
    x = model.sample(200)[1]
    with pytest.warns(UserWarning, match="no proposal.*validation and early stopping are off"):
        fit = ws.train(model, ws.ALWS(sleep_samples=50, valid_samples=20), x, x[:50], epochs=2, progress=False)
    assert len(fit.history) == 2 and all("valid_log_likelihood" not in r for r in fit.history)


# ------------------------------------------------------------------ wrong shapes


def _flat(self, x, c):
    return Toy.log_joint(self, x, c).reshape(-1)


def _propose_batch_first(self, x, k):
    c, lq = Toy.propose(self, x, k)
    return c.T, lq


def _propose_summed(self, x, k):
    c, lq = Toy.propose(self, x, k)
    return c, lq.sum(0)


def _sample_flat_x(self, n):
    c, x = Toy.sample(self, n)
    return c, x.reshape(-1)


def _sample_short_z(self, n):
    c, x = Toy.sample(self, n)
    return c[:1], x


@pytest.mark.parametrize(
    "member, broken, name",
    [
        ("propose", _propose_batch_first, "Broken.propose returned a latent of shape [2, 3]"),
        ("propose", _propose_summed, "Broken.propose (its log_q) returned a tensor of shape [2]"),
        ("propose", lambda self, x, k: Toy.propose(self, x, k)[0], "Broken.propose(x, k) returned a tensor"),
        ("log_joint", _flat, "Broken.log_joint returned a tensor of shape [6]"),
        ("log_proposal", lambda self, x, c: Toy.log_proposal(self, x, c)[..., None], "Broken.log_proposal returned"),
        ("sample", _sample_flat_x, "Broken.sample(2) returned x as a tensor of shape [4]"),
        ("sample", _sample_short_z, "Broken.sample returned a latent of shape [1]"),
        ("log_prior", lambda self, c: Toy.log_prior(self, c)[:1], "Broken.log_prior returned"),
        ("exponential_family", lambda self, c: (Toy.exponential_family(self, c)[0], torch.zeros(2, 1)), "Broken.exponential_family (its Ψ)"),
        ("sufficient_statistics", lambda self, x: x[:, :1], "Broken.sufficient_statistics returned"),
        ("log_joint", lambda self, x, c: 1 / 0, "raised ZeroDivisionError"),
        ("p_parameters", lambda self: 3, "p_parameters() returned a int"),
    ],
)
def test_a_wrong_shape_is_named_before_the_first_step(member, broken, name):
    model = variant(**{member: broken})
    est = (
        ws.ALWS(target="exp_family", q_update="sleep", sleep_samples=10, valid_samples=5)
        if member in ("log_prior", "exponential_family", "sufficient_statistics")
        else ws.RWS(k=3)
    )
    before = [p.detach().clone() for p in Toy.parameters(model)]
    with pytest.raises(ModelShapeError, match=re.escape(name)):
        ws.train(model, est, X, X, epochs=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_the_shape_check_leaves_the_random_stream_alone():
    model = Toy()
    torch.manual_seed(5)
    a = torch.rand(3)
    torch.manual_seed(5)
    check_shapes(model, X, ["propose", "log_joint", "sample", "log_proposal"])
    assert torch.equal(torch.rand(3), a)


def test_the_complete_model_trains_with_every_estimator_that_applies():
    x = Toy().sample(200)[1]
    for est in (ws.RWS(k=4), ws.WakeSleep(), ws.ALWS(target="exp_family", sleep_samples=50, valid_samples=20, q_update="sleep")):
        torch.manual_seed(0)
        fit = ws.train(Toy(), est, x, x[:50], epochs=2, progress=False)
        assert math.isfinite(fit.best_valid)


# ------------------------------------------------------------------ from_distributions


def test_from_distributions_members_match_the_distributions():
    torch.manual_seed(0)
    logits = nn.Parameter(torch.randn(4))
    means = nn.Parameter(torch.randn(4, 3))
    net = nn.Linear(3, 4)
    model = from_distributions(
        prior=lambda: Categorical(logits=logits),
        likelihood=lambda c: Normal(means[c], 0.7),
        proposal=lambda x: Categorical(logits=net(x)),
        generative=[logits, means],
        recognition=net,
    )
    assert model.p_parameters() == [logits, means] and model.q_parameters() == list(net.parameters())
    assert model.data_dim == 3 and not model.binary_data and not model.reparameterizable
    x = torch.randn(5, 3)
    c, log_q = model.propose(x, 7)
    assert c.shape == (7, 5) and log_q.shape == (7, 5) and not c.requires_grad
    want = torch.log_softmax(logits, 0)[c] + Normal(means[c], 0.7).log_prob(x).sum(-1)
    torch.testing.assert_close(model.log_joint(x, c), want)
    torch.testing.assert_close(model.log_proposal(x, c), log_q)
    exact = torch.logsumexp(torch.log_softmax(logits, 0)[:, None] + Normal(means[:, None], 0.7).log_prob(x).sum(-1), 0)
    torch.testing.assert_close(ws.evaluate.exact_log_marginal(model, x), exact)
    check_shapes(model, x, ["propose", "log_joint", "log_proposal", "sample", "log_prior", "exponential_family", "sufficient_statistics"])


@pytest.mark.parametrize("family", ["bernoulli", "poisson", "normal", "categorical", "onehot"])
def test_from_distributions_exponential_family_view_reproduces_the_likelihood(family):
    """η(z)·S(x) − Ψ(z) + log h(x) = log p(x | z), with log h the family's base measure."""
    torch.manual_seed(1)
    w = nn.Parameter(torch.randn(2, 3))
    lik = {
        "bernoulli": lambda z: Bernoulli(logits=z @ w),
        "poisson": lambda z: Poisson((z @ w).exp()),
        "normal": lambda z: Normal(z @ w, torch.tensor([0.5, 1.0, 2.0])),
        "categorical": lambda z: Categorical(logits=z @ w),
        "onehot": lambda z: OneHotCategorical(logits=z @ w),
    }[family]
    model = from_distributions(prior=lambda: Independent(Normal(torch.zeros(2), 1.0), 1), likelihood=lik, generative=[w])
    z, x = model.sample(6)
    eta, psi = model.exponential_family(z)
    stats = model.sufficient_statistics(x)
    log_h = {
        "bernoulli": torch.zeros(6),
        "categorical": torch.zeros(6),
        "onehot": torch.zeros(6),
        "poisson": -torch.lgamma(x + 1).sum(-1),
        "normal": Normal(0.0, torch.tensor([0.5, 1.0, 2.0])).log_prob(x).sum(-1),
    }[family]
    torch.testing.assert_close((eta * stats).sum(-1) - psi + log_h, model.log_joint(x, z) - model.log_prior(z))
    assert model.has_exponential_family


def test_a_learned_scale_has_no_exponential_family_view_and_alws_names_it():
    s = nn.Parameter(torch.zeros(()))
    model = from_distributions(prior=lambda: Normal(0.0, 1.0), likelihood=lambda z: Normal(z[..., None], s.exp()), generative=[s])
    assert not model.has_exponential_family
    with pytest.raises(ValueError, match="Normal.*target='generic'"):
        ws.ALWS(target="exp_family").check_model(model)
    assert ws.ALWS().resolved_target(model) == "generic"


def test_from_distributions_reparameterised_proposal_trains_by_iwae():
    torch.manual_seed(0)
    enc = nn.Linear(2, 2)
    dec = nn.Linear(1, 2)
    model = from_distributions(
        prior=lambda: Independent(Normal(torch.zeros(1), 1.0), 1),
        likelihood=lambda z: Normal(dec(z), 0.5),
        proposal=lambda x: Independent(Normal(enc(x)[..., :1], enc(x)[..., 1:].exp()), 1),
        generative=dec,
        recognition=enc,
    )
    assert model.reparameterizable
    x = torch.randn(300, 2) @ torch.tensor([[1.0, 0.5], [0.0, 0.3]])
    fit = ws.train(model, ws.IWAE(k=5), x, x[:100], epochs=3, progress=False, lr_p=1e-2, lr_q=1e-2)
    assert fit.history[-1]["valid_log_likelihood"] > fit.history[0]["valid_log_likelihood"]


def test_from_distributions_refuses_what_is_not_a_function():
    with pytest.raises(TypeError, match="prior must be a function"):
        from_distributions(prior=Normal(0.0, 1.0), likelihood=lambda z: Normal(z, 1.0))


# ------------------------------------------------------------------ exact evaluation


def test_categorical_latents_are_enumerated_by_their_one_hot_states():
    """The issue's case: a categorical latent of C = 20 states gave 2^20 binary vectors."""
    torch.manual_seed(0)
    c, d = 20, 6
    model = ws.HelmholtzMachine(CategoricalPrior(c), [BernoulliLayer(c, d)], [CategoricalLayer(d, c)]).double()
    with torch.no_grad():
        model.prior.logits.normal_()
    x = torch.bernoulli(torch.full((10, d), 0.4, dtype=torch.float64))
    states = model.enumerate_latents()
    assert [s.shape for s in states] == [(c, c)] and torch.equal(states[0], torch.eye(c, dtype=torch.float64))
    one_hot = torch.eye(c, dtype=torch.float64)
    lp = torch.log_softmax(model.prior.logits, 0)[:, None] + model.generative[0].log_prob(x, one_hot[:, None, :])
    torch.testing.assert_close(ws.evaluate.exact_log_marginal(model, x), torch.logsumexp(lp, 0))
    # and a binary layer under a categorical one: the product of the supports, 2^3 × 4 states
    model2 = ws.HelmholtzMachine(
        CategoricalPrior(4), [BernoulliLayer(3, d), BernoulliLayer(4, 3)], [BernoulliLayer(d, 3), CategoricalLayer(3, 4)]
    ).double()
    z1, z2 = model2.enumerate_latents()
    assert z1.shape == (32, 3) and z2.shape == (32, 4) and len({tuple(a) + tuple(b) for a, b in zip(z1.tolist(), z2.tolist())}) == 32
    est = ws.log_likelihood(model2, x, k=20000, seed=0)
    exact = ws.exact_log_likelihood(model2, x)
    assert abs(est.mean - exact.mean) < 0.05


def test_gaussian_latents_are_refused_by_exact_evaluation():
    with pytest.raises(ValueError, match="no finite support"):
        ws.exact_log_likelihood(ws.HelmholtzMachine.gaussian([4, 2], hidden=(3,)), torch.rand(3, 4).round())
    with pytest.raises(ModelContractError, match="exact_log_marginal.*enumerate_latents"):
        ws.exact_log_likelihood(variant(enumerate_latents=None), X)


# ------------------------------------------------------------------ command line


USER_MODEL = """
    import torch
    from torch import nn
    from torch.distributions import Categorical, Normal
    import wakesleep as ws

    def good(data_dim):
        logits = nn.Parameter(torch.zeros(3))
        net = nn.Linear(data_dim, 3)
        return ws.models.from_distributions(prior=lambda: Categorical(logits=logits),
                                            likelihood=lambda c: Normal(4.0 * c.unsqueeze(-1).to(torch.float32), 1.0),
                                            proposal=lambda x: Categorical(logits=net(x)), generative=[logits], recognition=net)

    class NoProposal(nn.Module):
        def sample(self, n): ...

    def broken():
        return NoProposal()
"""


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "wakesleep", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_the_command_line_trains_evaluates_and_refuses_a_users_model(tmp_path):
    (tmp_path / "mymodel.py").write_text(textwrap.dedent(USER_MODEL))
    rng = np.random.default_rng(0)
    x = (4.0 * rng.integers(0, 3, 600) + rng.normal(size=600))[:, None].astype("float32")
    np.savez(tmp_path / "data.npz", train=x[:400], valid=x[400:500], test=x[500:])
    common = ["--dataset", "data.npz", "--epochs", "2", "--test-k", "50", "--no-progress"]
    bad = _cli("train", "--model", "mymodel.py:broken", *common, "--run-dir", "bad", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "lacks propose, log_joint, q_parameters, p_parameters, log_proposal (" in bad.stderr
    assert not (tmp_path / "bad" / "config.json").exists()  # nothing written for a refused model
    ok = _cli("train", "--model", "mymodel.py:good", "--algorithm", "rws", *common, "--run-dir", "ok", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert config["model"] == {"kind": "user", "spec": f"{tmp_path / 'mymodel.py'}:good", "data_dim": 1}
    spec = config["model"]["spec"]
    ev = _cli("evaluate", str(tmp_path / "ok"), "--model", spec, "--k", "20", "--no-progress", cwd=ROOT)  # from another directory
    assert ev.returncode == 0 and "test log-likelihood" in ev.stdout, ev.stderr
    unnamed = _cli("evaluate", str(tmp_path / "ok"), "--k", "20", "--no-progress", cwd=ROOT)  # the run alone names no code to run
    assert unnamed.returncode == 2 and f"pass --model {spec}" in unnamed.stderr, unnamed.stderr
    (tmp_path / "ok" / "summary.json").unlink()
    again = _cli("train", "--model", "mymodel.py:good", "--run-dir", "ok", "--resume", "--no-progress", cwd=tmp_path)  # the model named again
    assert again.returncode == 0 and (tmp_path / "ok" / "summary.json").is_file(), again.stderr
    assert len((tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "ok" / "samples.png").stat().st_size > 0


def test_vae_keeps_the_particles_asked_for():
    from wakesleep.cli import build_parser, estimator_settings

    a = build_parser().parse_args(["train", "--algorithm", "vae", "--k", "5"])
    assert estimator_settings(a) == {"k": 5}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ws.VAE(**estimator_settings(a)).k == 5


def test_compare_and_diagnose_take_a_users_model(tmp_path, monkeypatch):
    """compare's [model] spec and diagnose --model run the example mixture like a built-in model."""
    from wakesleep.cli import main
    from wakesleep.lab import compare

    sys.path.insert(0, str(ROOT / "examples"))
    import gmm

    np.savez(tmp_path / "gmm.npz", train=gmm.make_data(400).numpy(), valid=gmm.make_data(100, 1).numpy(), test=gmm.make_data(100, 2).numpy())
    monkeypatch.chdir(ROOT)
    cfg = compare.parse_config(
        {
            "name": "gmm",
            "data": {"dataset": str(tmp_path / "gmm.npz")},
            "model": {"spec": "examples/gmm.py:mixture"},
            "train": {"epochs": 1},
            "evaluate": {"test_k": 20},
            "estimators": [{"label": "RWS", "algorithm": "rws", "settings": {"k": 5}}, {"label": "IWAE", "algorithm": "iwae"}],
        }
    )
    assert cfg.model == {"spec": f"{ROOT / 'examples' / 'gmm.py'}:mixture"}
    with pytest.raises(ValueError, match="IWAE needs reparameterisable latents"):  # refused before any run
        compare.run_compare(cfg, out_dir=tmp_path / "cmp", progress=False)
    assert not (tmp_path / "cmp").exists()
    cfg.estimators = cfg.estimators[:1]
    records, _, out = compare.run_compare(cfg, out_dir=tmp_path / "cmp", progress=False)
    assert len(records) == 1 and math.isfinite(records[0]["test_log_likelihood"])
    assert main(["evaluate", str(out / "RWS" / "seed0"), "--model", "examples/gmm.py:mixture", "--k", "10", "--no-progress"]) == 0
    with pytest.raises(compare.ConfigError, match="model.spec"):
        compare.parse_config({"data": {"dataset": "x"}, "model": {"spec": "nothing-here.py:f"}, "train": {}, "estimators": [{"algorithm": "rws"}]})
    code = main(
        [
            "diagnose",
            "--model",
            "examples/gmm.py:mixture",
            "--estimator",
            "rws:k=4,q_update=wake",
            "--repeats",
            "3",
            "--batch",
            "4",
            "--out",
            str(tmp_path / "diag"),
            "--no-progress",
        ]
    )
    assert code == 0 and (tmp_path / "diag" / "diagnostics-gmm-mixture.csv").is_file()


def test_isotropic_normal_exponential_family_is_the_normal_density():
    """η·S(x) − Ψ from the shared helper equals Σ_d log N(x_d; μ_d, σ²) (h = 1), for a scalar σ and a σ per row."""
    from wakesleep.models.distributions import isotropic_normal_exponential_family, isotropic_normal_statistics

    g = torch.Generator().manual_seed(0)
    mean = torch.randn(6, 5, generator=g, dtype=torch.float64)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    for log_scale in (torch.tensor(-0.3, dtype=torch.float64), torch.linspace(-1, 1, 6, dtype=torch.float64)[:, None]):
        eta, psi = isotropic_normal_exponential_family(mean, log_scale)
        assert eta.shape == (6, 6) and psi.shape == (6,)
        exact = torch.distributions.Normal(mean, log_scale.exp()).log_prob(x).sum(-1)
        torch.testing.assert_close((eta * isotropic_normal_statistics(x)).sum(-1) - psi, exact, rtol=0, atol=1e-12)
