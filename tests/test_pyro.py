"""The Pyro front end (wakesleep.pyro.from_pyro): against its hand-written twin, weights per datapoint
(not per batch, pyro-ppl/pyro#2220), plate layouts and sample dims, PyroModule parameters, the sleep
phase, training, and the refusals.

Tolerances: the twins are compared in float64, where the two compute the same log-densities by
different operations (Pyro's Categorical/Normal log_prob against log_softmax indexing and the
written-out Gaussian); they agree to a few ulps of numbers of size ~10 nats, so rtol 1e-12 leaves
three orders of magnitude for rounding while any wrong term (a missing log σ is 2.5 nats, a weight
summed over the batch is off by whole datapoints) fails by far.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributions import Normal

pyro = pytest.importorskip("pyro")
import pyro.distributions as dist  # noqa: E402
from pyro.nn import PyroModule, PyroParam  # noqa: E402
from torch.distributions import constraints  # noqa: E402

import wakesleep as ws  # noqa: E402
from wakesleep.estimators import sleep_phase_loss  # noqa: E402
from wakesleep.models import check_model, check_shapes  # noqa: E402
from wakesleep.models.contract import log_weights  # noqa: E402
from wakesleep.pyro import from_pyro  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import gmm  # noqa: E402
import gmm_pyro  # noqa: E402

MEMBERS = ["propose", "log_joint", "log_proposal", "sample", "log_prior", "p_parameters", "q_parameters"]
TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def twins(seed: int = 0):
    """The Pyro mixture and the hand-written one with the same (random) parameters, float64."""
    torch.manual_seed(seed)
    hand, prog = gmm.HandWrittenMixture().double(), gmm_pyro.mixture_pyro().double()
    with torch.no_grad():
        hand.prior.logits.normal_()
        pairs = list(zip(prog.p_parameters() + prog.q_parameters(), hand.p_parameters() + hand.q_parameters(), strict=True))
        for dst, src in pairs:
            dst.copy_(src)  # same order, same shapes (copy_ would refuse others)
    return hand, prog


def fixed(model, z, as_latent):
    """``model`` proposing the given particles (so both twins see the same ones)."""
    model.propose = lambda x, k: (as_latent(z), model.log_proposal(x, as_latent(z)))
    return model


def test_the_pyro_program_equals_its_hand_written_twin():
    hand, prog = twins()
    x = gmm.make_data(6, seed=3).double()
    c, _ = hand.propose(x, 50)  # [K, B] from the hand-written proposal
    z = {"c": c}
    torch.testing.assert_close(prog.log_joint(x, z), hand.log_joint(x, c), **TIGHT)
    torch.testing.assert_close(prog.log_proposal(x, z), hand.log_proposal(x, c), **TIGHT)
    torch.testing.assert_close(prog.log_prior(z), hand.log_prior(c), **TIGHT)
    # particles from the Pyro guide: the right shapes, detached z, the twin's log q and log-weights
    zp, log_q = prog.propose(x, 7)
    assert zp["c"].shape == (7, 6) and zp["c"].dtype == torch.long and log_q.shape == (7, 6) and not zp["c"].requires_grad
    torch.testing.assert_close(log_q, hand.log_proposal(x, zp["c"]), **TIGHT)
    torch.testing.assert_close(prog.log_joint(x, zp) - log_q, hand.log_joint(x, zp["c"]) - hand.log_proposal(x, zp["c"]), **TIGHT)
    # log q carries the gradient to φ only; log p to θ only
    assert log_q.requires_grad and prog.log_joint(x, zp).grad_fn is not None
    (g_theta,) = torch.autograd.grad(log_q.sum(), prog.p_parameters(), allow_unused=True)
    assert g_theta is None
    # identical RWS gradients (θ and wake-φ) for the same particles
    grads = []
    for model, as_latent in ((hand, lambda c: c), (prog, gmm_pyro.as_latent)):
        out = ws.RWS(k=50, q_update="wake")(fixed(model, c, as_latent), x)
        grads.append(torch.autograd.grad(out.loss, model.p_parameters() + model.q_parameters()))
    assert len(grads[0]) == len(grads[1]) == 7
    for a, b in zip(*grads):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)  # sums of 300 products: a little rounding more


def test_weights_are_normalised_per_datapoint_not_per_batch():
    """Two datapoints whose likelihoods differ by hundreds of nats: normalised over the whole batch
    (Pyro's ReweightedWakeSleep, pyro-ppl/pyro#2220) one datapoint gets almost no weight; per datapoint
    each gets weights summing to 1, and RWS's θ-gradient is the per-datapoint one."""
    hand, prog = twins(1)
    x = torch.tensor([[0.0], [400.0]], dtype=torch.float64)  # the second far from every component
    torch.manual_seed(0)
    log_w = log_weights(prog, x, 30)
    assert log_w.shape == (30, 2)
    per_datapoint = torch.softmax(log_w, 0)
    per_batch = torch.softmax(log_w.reshape(-1), 0).reshape(30, 2)
    torch.testing.assert_close(per_datapoint.sum(0), torch.ones(2, dtype=torch.float64))
    assert per_batch.sum(0)[1] < 1e-6  # the far datapoint vanishes from a per-batch estimator
    # each datapoint's column is its own: evaluated alone it gives the same log-weights
    torch.manual_seed(1)
    c, _ = hand.propose(x, 30)
    z = {"c": c}
    lp, lq = prog.log_joint(x, z), prog.log_proposal(x, z)
    for b in range(2):
        zb = {"c": c[:, b : b + 1]}
        torch.testing.assert_close((lp - lq)[:, b : b + 1], prog.log_joint(x[b : b + 1], zb) - prog.log_proposal(x[b : b + 1], zb), **TIGHT)
    # RWS's wake-θ update on fixed particles is Σ_k w̃_kb ∇θ log p(x_b, z_kb) with w̃ the per-datapoint softmax
    prog = fixed(prog, c, gmm_pyro.as_latent)
    loss = ws.RWS(k=30, q_update="wake")(prog, x).loss
    (g,) = torch.autograd.grad(loss, prog.p_parameters()[:1])
    w = torch.softmax((lp - lq).detach(), 0)
    (want,) = torch.autograd.grad(-(w * lp).sum(0).mean(), prog.p_parameters()[:1], retain_graph=True)
    wb = torch.softmax((lp - lq).detach().reshape(-1), 0).reshape(30, 2)
    (batch,) = torch.autograd.grad(-(wb * lp).sum() / 2, prog.p_parameters()[:1])
    torch.testing.assert_close(g, want, **TIGHT)
    assert (g - batch).norm() > 0.1 * g.norm()  # the per-batch gradient is another one


def test_sleep_samples_and_the_sleep_phase():
    _, prog = twins()
    z, x = prog.sample(40)
    assert z["c"].shape == (40,) and x.shape == (40, 1) and z["c"].dtype == torch.long and x.dtype == torch.float64
    # x drawn given z: within 6σ of its component's mean (a chance of 2e-9 each to fail)
    assert ((x[:, 0] - 10.0 * z["c"]).abs() < 6 * gmm.SIGMA).all()
    assert prog.log_joint(x, z).shape == (40,) and prog.log_proposal(x, z).shape == (40,) and prog.log_prior(z).shape == (40,)
    loss = sleep_phase_loss(prog, 40)
    gp = torch.autograd.grad(loss, prog.p_parameters(), allow_unused=True)
    gq = torch.autograd.grad(loss, prog.q_parameters())
    assert all(g is None or not g.any() for g in gp) and all(g.abs().sum() > 0 for g in gq[-2:])


def test_it_meets_the_contract_and_trains():
    torch.manual_seed(0)
    prog = gmm_pyro.mixture_pyro()
    x, x_valid = gmm.make_data(2000), gmm.make_data(200, seed=1)
    check_model(prog, MEMBERS, "test")
    check_shapes(prog, x, MEMBERS)
    assert prog.data_dim == 1 and prog.reparameterizable is False  # Categorical: no rsample
    before = (gmm.learned_probs(prog) - gmm.true_probs()).abs().sum()
    ws.train(prog, ws.RWS(k=5), x, x_valid, epochs=2, lr_p=1e-2, lr_q=1e-2, progress=False)
    after = (gmm.learned_probs(prog) - gmm.true_probs()).abs().sum()
    # From the uniform start (0.345) 40 Adam steps give 0.20-0.26 over seeds 0-2; an estimator
    # without the right θ-gradient stays at >= 0.34.
    assert after < 0.85 * before, (before, after)


# ------------------------------------------------------------------ PyroModule parameters


class PyroMixture(PyroModule):
    """The mixture with π a simplex-constrained PyroParam (held unconstrained by the module)."""

    def __init__(self):
        super().__init__()
        self.probs = PyroParam(torch.full((gmm.COMPONENTS,), 1.0 / gmm.COMPONENTS), constraint=constraints.simplex)
        self.register_buffer("means", 10.0 * torch.arange(gmm.COMPONENTS, dtype=torch.get_default_dtype()))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(probs=self.probs))
            pyro.sample("x", dist.Normal(self.means[c], gmm.SIGMA), obs=x[..., 0])


class PyroMixtureGuide(PyroModule):
    def __init__(self):
        super().__init__()
        self.net = gmm.proposal_net()  # a plain nn.Module inside a PyroModule: pyro.module sites

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=self.net(x)))


def test_pyro_modules_keep_their_own_parameters():
    """PyroModules with PyroParams are accepted, their parameters are the module's (two instances
    with the same names share nothing through Pyro's global store), and a state_dict round trip
    restores the model."""
    torch.manual_seed(0)
    a, b = from_pyro(PyroMixture(), PyroMixtureGuide()), from_pyro(PyroMixture(), PyroMixtureGuide())
    assert "generative.probs_unconstrained" in a.state_dict() and len(a.p_parameters()) == 1 and len(a.q_parameters()) == 6
    x = gmm.make_data(50)
    ws.train(a, ws.RWS(k=5), x, x[:20], epochs=2, batch_size=10, lr_p=5e-2, lr_q=5e-2, progress=False)
    z, _ = a.propose(x[:8], 4)
    # b is untouched by a's training: still the uniform prior
    assert not torch.allclose(a.log_joint(x[:8], z), b.log_joint(x[:8], z))
    torch.testing.assert_close(b.log_prior(z), torch.full((4, 8), -torch.log(torch.tensor(20.0)).item()))
    assert not torch.allclose(a.log_prior(z), b.log_prior(z))
    assert all(p is not q for p in a.parameters() for q in b.parameters())
    # a's log-joint is the hand-written twin's with logits = log π
    hand = gmm.HandWrittenMixture()
    with torch.no_grad():
        hand.prior.logits.copy_(a.generative.probs.log())
    torch.testing.assert_close(a.log_joint(x[:8], z), hand.log_joint(x[:8], z["c"]), rtol=1e-5, atol=1e-5)  # float32
    # a checkpoint restores it into a fresh instance
    c = from_pyro(PyroMixture(), PyroMixtureGuide())
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(c.log_joint(x[:8], z), a.log_joint(x[:8], z), rtol=0, atol=0)
    torch.testing.assert_close(c.log_proposal(x[:8], z), a.log_proposal(x[:8], z), rtol=0, atol=0)


# ------------------------------------------------------------------ plates and sample dims


class LinearGaussian(nn.Module):
    """z_b ∈ R³ with z_bj ~ N(μ_j, 1) in a plate over j, a scalar s_b ~ N(0, 1) in the data plate
    only, x_b ~ N(W z_b + s_b, I) ∈ R²."""

    def __init__(self):
        super().__init__()
        self.mu, self.w = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2, 3))


class OuterData(LinearGaussian):
    """The data plate outermost (dim -2), the latent coordinates at dim -1; x as an event; s [.., B, 1]."""

    def forward(self, x):
        with pyro.plate("data", x.shape[0], dim=-2):
            with pyro.plate("coords", 3, dim=-1):
                z = pyro.sample("z", dist.Normal(self.mu, 1.0))  # [.., B, 3]
            s = pyro.sample("s", dist.Normal(0.0, 1.0))  # [.., B, 1]
            pyro.sample("x", dist.Normal((z @ self.w.T + s).unsqueeze(-2), 1.0).to_event(1), obs=x.unsqueeze(-2))


class OuterGuide(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(2, 3)

    def forward(self, x):
        with pyro.plate("data", x.shape[0], dim=-2):
            with pyro.plate("coords", 3, dim=-1):
                pyro.sample("z", dist.Normal(self.net(x), 0.5))
            pyro.sample("s", dist.Normal(x.mean(-1, keepdim=True), 0.5))


class InnerData(LinearGaussian):
    """Pyro's default layout: the data plate at dim -1, coordinates and columns in plates at dim -2
    (site values [.., 3, B], [.., 2, B], and s [B] that Pyro broadcasts to [K, 1, B] among K
    particles); z leaves still come out as [*S, B, 3] and [*S, B]."""

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            with pyro.plate("coords", 3, dim=-2):
                z = pyro.sample("z", dist.Normal(self.mu[:, None], 1.0))
            s = pyro.sample("s", dist.Normal(0.0, 1.0))
            with pyro.plate("cols", 2, dim=-2):
                pyro.sample("x", dist.Normal(self.w @ z + s, 1.0), obs=x.T)


class InnerGuide(OuterGuide):
    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            with pyro.plate("coords", 3, dim=-2):
                pyro.sample("z", dist.Normal(self.net(x).T, 0.5))
            pyro.sample("s", dist.Normal(x.mean(-1), 0.5))


def written_out(gen, rec, x, z):
    """log p(x, z) and log q(z | x) [*S, B] for z {"z": [*S, B, 3], "s": [*S, B] or [*S, B, 1]},
    with torch.distributions."""
    c, s = z["z"], z["s"].reshape(z["z"].shape[:-1])
    log_p = Normal(gen.mu, 1.0).log_prob(c).sum(-1) + Normal(0.0, 1.0).log_prob(s) + Normal(c @ gen.w.T + s[..., None], 1.0).log_prob(x).sum(-1)
    return log_p, Normal(rec.net(x), 0.5).log_prob(c).sum(-1) + Normal(x.mean(-1), 0.5).log_prob(s)


@pytest.mark.parametrize("layout", [(OuterData, OuterGuide), (InnerData, InnerGuide)], ids=["data-plate-outer", "data-plate-at-dim-1"])
def test_plates_and_sample_dims(layout):
    """Both plate layouts give the written-out densities per datapoint, summed over the coordinate
    and column plates; S of 0, 1 and 2 dims; the data plate found though another plate has the
    batch's size (3); sleep samples recovered as [n, D]; reparameterised particles (VAE/IWAE)."""
    torch.manual_seed(0)
    gen, rec = layout[0]().double(), layout[1]().double()
    prog = from_pyro(gen, rec)
    x = torch.randn(3, 2, dtype=torch.float64)  # B = 3 = the coordinate plate's size
    z, log_q = prog.propose(x, 8)
    assert z["z"].shape == (8, 3, 3) and z["s"].shape[:2] == (8, 3) and log_q.shape == (8, 3)
    log_p, want_q = written_out(gen, rec, x, z)
    torch.testing.assert_close(prog.log_joint(x, z), log_p, **TIGHT)
    torch.testing.assert_close(log_q, want_q, **TIGHT)
    torch.testing.assert_close(prog.log_proposal(x, z), want_q, **TIGHT)
    for zs in ({n: v[0] for n, v in z.items()}, {n: v.reshape(2, 4, *v.shape[1:]) for n, v in z.items()}):  # S = (), (2, 4)
        log_p, want_q = written_out(gen, rec, x, zs)
        torch.testing.assert_close(prog.log_joint(x, zs), log_p, **TIGHT)
        torch.testing.assert_close(prog.log_proposal(x, zs), want_q, **TIGHT)
    zs, xs = prog.sample(7)
    assert zs["z"].shape == (7, 3) and zs["s"].shape[0] == 7 and xs.shape == (7, 2)
    # x given z: the residual x − W z − s is N(0, I); 7·2 draws all within 6σ (a chance of 3e-8 to fail)
    assert ((xs - zs["z"] @ gen.w.T - zs["s"].reshape(7, 1)).abs() < 6).all()
    torch.testing.assert_close(prog.log_joint(xs, zs), written_out(gen, rec, xs, zs)[0], **TIGHT)
    check_shapes(prog, x, MEMBERS)
    assert prog.reparameterizable
    zr, _ = prog.propose(x, 4, reparameterize=True)
    (g,) = torch.autograd.grad(zr["z"].sum(), rec.net.weight)
    assert g.abs().sum() > 0
    out = ws.IWAE(k=4)(prog, x)
    assert all(g is not None and g.abs().sum() > 0 for g in torch.autograd.grad(out.loss, prog.q_parameters()))


class WithFactor(gmm_pyro.MixtureModel):
    """The mixture with a pyro.deterministic mean and a pyro.factor of 0.5 nats on c = 3."""

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=self.prior.logits))
            mean = pyro.deterministic("mean", self.prior.means[c])
            pyro.factor("bonus", 0.5 * (c == 3).to(mean.dtype))
            pyro.sample("x", dist.Normal(mean, gmm.SIGMA), obs=x[..., 0])


def test_factors_count_and_deterministic_sites_stay():
    """log_joint adds the factor per datapoint; sleep samples release only the data site (the
    deterministic site keeps its value, the factor is not a data site)."""
    torch.manual_seed(0)
    prog, plain = from_pyro(WithFactor(), gmm_pyro.MixtureGuide(), data_dim=1), gmm_pyro.mixture_pyro()
    plain.load_state_dict(prog.state_dict())
    x = gmm.make_data(4)
    z, _ = prog.propose(x, 30)
    torch.testing.assert_close(prog.log_joint(x, z), plain.log_joint(x, z) + 0.5 * (z["c"] == 3))
    zs, xs = prog.sample(5)
    assert list(zs) == ["c"] and zs["c"].shape == (5,) and xs.shape == (5, 1)


# ------------------------------------------------------------------ refusals


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


class NoPlate(nn.Module):
    def forward(self, x):
        c = pyro.sample("c", dist.Normal(torch.zeros(x.shape[0]), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(c, 1.0).to_event(1), obs=x[..., 0])


class NoPlateGuide(nn.Module):
    def forward(self, x):
        pyro.sample("c", dist.Normal(torch.zeros(x.shape[0]), 1.0).to_event(1))


def test_refusals_name_the_fix():
    x = torch.randn(4, 1)
    with pytest.raises(ValueError, match="latent model site 'mu' is outside the data plate.*put it inside the data plate"):
        from_pyro(GlobalLatent(), GlobalGuide()).propose(x, 2)
    with pytest.raises(TypeError, match=r"pyro.param\('loc_in_the_global_store'\).*hold the parameter in the module"):
        from_pyro(StoreParam(), LocalGuide()).propose(x, 2)
    with pytest.raises(ValueError, match="pass data_dim= to from_pyro"):
        from_pyro(gmm_pyro.MixtureModel(), gmm_pyro.MixtureGuide()).sample(3)
    # with data_dim (or after a batch) it samples
    assert from_pyro(gmm_pyro.MixtureModel(), gmm_pyro.MixtureGuide(), data_dim=1).sample(3)[1].shape == (3, 1)
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        from_pyro(lambda x: None, gmm_pyro.MixtureGuide())
    with pytest.raises(ValueError, match=r"does not sample the model's latent site\(s\) \['c'\]"):
        from_pyro(gmm_pyro.MixtureModel(), OtherGuide()).propose(x, 2)
    with pytest.raises(ValueError, match="found no pyro.plate over the data batch"):
        from_pyro(NoPlate(), NoPlateGuide()).propose(x, 2)
    with pytest.raises(ValueError, match="data_dim must be a positive integer"):
        from_pyro(gmm_pyro.MixtureModel(), gmm_pyro.MixtureGuide(), data_dim=0)
    with pytest.raises(ValueError, match=r"z must be a dict holding every latent site \['c'\]"):
        gmm_pyro.mixture_pyro().log_joint(x, torch.zeros(2, 4, dtype=torch.long))


def test_import_needs_pyro_only_for_the_front_end():
    """``import wakesleep`` works without Pyro; ``import wakesleep.pyro`` then says how to install it."""
    code = (
        "import sys\n"
        "sys.modules['pyro'] = None  # as if pyro-ppl were not installed\n"
        "import wakesleep\n"
        "try:\n"
        "    import wakesleep.pyro\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert 'pip install "wakesleep[pyro]"' in out.stdout


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
