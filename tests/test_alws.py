"""ALWS (Wenliang et al. 2020): exponential-family views, new priors, and the gradient estimator
against exact gradients of factor analysis (closed-form log p(x) and autograd)."""

from __future__ import annotations

import math

import pytest
import torch
from exactness import grads
from torch.distributions import Normal, OneHotCategorical, Poisson

from wakesleep.estimators import ALWS, ESTIMATORS, build_kernel_ridge, sleep_phase_loss, train_proposal
from wakesleep.estimators.alws import exp_family_prediction
from wakesleep.evaluate import exact_log_likelihood, exact_log_marginal
from wakesleep.layers import (
    BernoulliLayer,
    CategoricalLayer,
    CategoricalPrior,
    CirclePrior,
    GaussianLayer,
    GaussianPrior,
    PoissonLayer,
)
from wakesleep.models import HelmholtzMachine
from wakesleep.models.contract import EXPONENTIAL_FAMILY, GENERATIVE, ExponentialFamilyModel, LatentVariableModel, ModelContractError, check_model
from wakesleep.training import TrainConfig, train

F64 = torch.float64
TARGETS = ("generic", "exp_family")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These solves are small (N ≤ 4000): on a shared 2-core machine one thread avoids the
    OpenMP contention that made them up to 50× slower; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ layers and priors


@pytest.mark.parametrize(
    "layer",
    [
        BernoulliLayer(3, 5, (4,)),
        GaussianLayer(3, 5, (4,)),
        GaussianLayer(3, 5, (), scale="learned"),
        PoissonLayer(3, 5, (4,)),
    ],
)
def test_exponential_family_view_reproduces_log_prob(layer):
    """η·S(x) − Ψ + log h(x) must equal log p(x | parent) of torch.distributions, for every layer."""
    torch.manual_seed(0)
    layer = layer.double()
    parent = torch.randn(7, 3, dtype=F64)
    x = layer.sample(parent)
    eta, psi = layer.exponential_family(parent)
    stats = layer.sufficient_statistics(x)
    assert eta.shape == stats.shape and psi.shape == (7,)
    via_ef = (eta * stats).sum(-1) - psi + layer.log_base_measure(x)
    torch.testing.assert_close(via_ef, layer.dist(parent).log_prob(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.log_prob(x, parent), layer.dist(parent).log_prob(x), rtol=1e-12, atol=1e-12)


def test_gaussian_and_poisson_views_have_the_textbook_form():
    torch.manual_seed(1)
    g = GaussianLayer(2, 3, (), scale="learned").double()
    with torch.no_grad():
        g.log_scale.copy_(torch.tensor([0.1, -0.5, 0.3]))
    parent = torch.randn(4, 2, dtype=F64)
    mu, sigma = g.net(parent), g.log_scale.exp()
    eta, psi = g.exponential_family(parent)
    torch.testing.assert_close(eta, torch.cat([mu / sigma**2, (-0.5 / sigma**2).expand(4, 3)], -1))
    torch.testing.assert_close(psi, (mu**2 / (2 * sigma**2) + 0.5 * torch.log(2 * math.pi * sigma**2)).sum(-1))
    p = PoissonLayer(2, 3).double()
    x = torch.tensor([[0.0, 3.0, 1.0]], dtype=F64)
    eta, psi = p.exponential_family(parent[:1])
    torch.testing.assert_close(p.log_prob(x, parent[:1]), Poisson(eta.exp()).log_prob(x).sum(-1))
    torch.testing.assert_close(psi, eta.exp().sum(-1))


def test_poisson_likelihood_is_not_binary_data():
    model = HelmholtzMachine(GaussianPrior(2), [PoissonLayer(2, 4)], [GaussianLayer(4, 2)])
    assert not model.binary_data and model.has_exponential_family
    assert HelmholtzMachine.sbn([4, 2]).binary_data


def test_categorical_prior_and_layer_match_torch():
    torch.manual_seed(2)
    prior = CategoricalPrior(4).double()
    with torch.no_grad():
        prior.logits.copy_(torch.randn(4))
    c = prior.sample((6,))
    assert c.shape == (6, 4) and torch.all(c.sum(-1) == 1)
    torch.testing.assert_close(prior.log_prob(c), OneHotCategorical(logits=prior.logits).log_prob(c))
    layer = CategoricalLayer(3, 4, (5,)).double()
    y = torch.randn(6, 3, dtype=F64)
    torch.testing.assert_close(layer.log_prob(c, y), layer.dist(y).log_prob(c))


def test_mixture_model_log_joint_is_the_hierarchical_density():
    """log p(x, y, c) = log π_c + log N(y; μ_c, σ_c) + log N(x; MLP(y), σ²) for HelmholtzMachine.mixture."""
    torch.manual_seed(3)
    model = HelmholtzMachine.mixture(2, 2, 5, hidden=(8,), q_hidden=(8,)).double()
    (y, c), x = model.sample(10)
    comp = model.generative[1].net  # affine in one-hot c
    mean, log_scale = comp(c).chunk(2, -1)
    expected = (
        torch.log_softmax(model.prior.logits, -1)[c.argmax(-1)]
        + Normal(mean, log_scale.exp()).log_prob(y).sum(-1)
        + model.generative[0].dist(y).log_prob(x)
    )
    torch.testing.assert_close(model.log_joint(x, [y, c]), expected)
    rebuilt = HelmholtzMachine.from_config(model.config)
    assert rebuilt.config == model.config


def test_circle_prior_is_a_normalised_von_mises_on_the_circle():
    torch.manual_seed(4)
    prior = CirclePrior(learn=True).double()
    a = torch.linspace(-math.pi, math.pi, 20001, dtype=F64)[:-1]
    z = torch.stack([a.sin(), a.cos()], -1)
    for nu in ([0.0, 0.0], [0.8, -1.2]):
        with torch.no_grad():
            prior.natural.copy_(torch.tensor(nu))
        mass = prior.log_prob(z).exp().mean() * 2 * math.pi  # Riemann sum of a periodic function: spectrally exact
        assert abs(mass.item() - 1) < 1e-10
        s = prior.sample((20000,))
        assert torch.allclose(s.norm(dim=-1), torch.ones((), dtype=F64), atol=1e-12)
        se = s.std(0) / math.sqrt(s.shape[0])
        assert ((s.mean(0) - prior.mean()).abs() < 4 * se).all(), (s.mean(0), prior.mean())
    # the uniform angle has no learnable parameter unless asked, and a finite gradient at ν = 0
    assert list(CirclePrior().parameters()) == []
    with torch.no_grad():
        prior.natural.zero_()
    (g,) = torch.autograd.grad(prior.log_prob(z[:10]).sum(), prior.natural)
    torch.testing.assert_close(g, z[:10].sum(0))  # ∇ν log p = z − E[z] and E[z] = 0 at ν = 0


def test_protocol_checks():
    fa = HelmholtzMachine.factor_analysis(3, 2)
    assert isinstance(fa, LatentVariableModel) and isinstance(fa, ExponentialFamilyModel)
    check_model(fa, GENERATIVE + EXPONENTIAL_FAMILY, "ALWS")

    class OnlySamples(torch.nn.Module):
        def sample(self, n):
            return [torch.zeros(n, 1)], torch.zeros(n, 3)

    with pytest.raises(ModelContractError, match="lacks log_joint, p_parameters, log_prior, exponential_family, sufficient_statistics"):
        check_model(OnlySamples(), GENERATIVE + EXPONENTIAL_FAMILY, "ALWS")
    with pytest.raises(TypeError, match="ALWS.*lacks log_joint, p_parameters \\("):
        ALWS(target="generic").check_model(OnlySamples())


# ------------------------------------------------------------------ the estimator on factor analysis


def fa_model(seed=0, learn_prior=True, sigma=0.5, D=3, d=2):
    """A float64 factor-analysis model with W ~ N(0, 1), b ~ N(0, 0.3²), σ = ``sigma``."""
    torch.manual_seed(seed)
    model = HelmholtzMachine.factor_analysis(D, d, learn_prior=learn_prior).double()
    with torch.no_grad():
        g = model.generative[0]
        g.net.weight.copy_(torch.randn(D, d, dtype=F64))
        g.net.bias.copy_(0.3 * torch.randn(D, dtype=F64))
        g.log_scale.fill_(math.log(sigma))
    return model


@pytest.fixture(scope="module")
def fa_problem():
    """The model at θ and a wake batch of 100 points from another random factor-analysis model
    (so ∇θ log p(x) ≠ 0), with the exact gradient of mean_m log p(x_m) by autograd through the
    closed form."""
    model = fa_model(0)
    torch.manual_seed(5)
    _, x = fa_model(1).sample(100)
    exact = grads(model.p_parameters(), exact_log_marginal(model, x).mean())
    return model, x, exact


@pytest.fixture(scope="module")
def prior_shifted_batch(fa_problem):
    """100 points from the model with its prior moved (μ₀ = (0.8, −0.5), log s = (0.4, −0.3)), so
    that the prior parameters' exact gradient is large."""
    truth = fa_model(0)
    with torch.no_grad():
        truth.prior.loc.copy_(torch.tensor([0.8, -0.5]))
        truth.prior.log_scale.copy_(torch.tensor([0.4, -0.3]))
    torch.manual_seed(5)
    return truth.sample(100)[1]


def learned_kernel(model, target, n=400, steps=30, lr=0.1, seed=0):
    """(log bandwidth, log λ) after ALWS's kernel step alone (Adam, ``steps`` steps, fresh sleep
    and validation sets of n and n/2 each step, θ fixed) from the median heuristic and λ = 1e-2."""
    est = ALWS(sleep_samples=n, valid_samples=n // 2, lam=1e-2, target=target).double()
    opt = torch.optim.Adam(est.parameters(), lr=lr)
    torch.manual_seed(seed)
    for it in range(steps):
        with torch.no_grad():
            zs, xs = model.sample(n)
            zv, xv = model.sample(n // 2)
            if it == 0:
                est.krr.kernel.init_bandwidth_(xs)
        t = est.targets(model, zs, xs, target).detach()
        loss = est.kernel_loss(model, zs, xs, t, zv, xv, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return est.krr.kernel.log_bandwidth.item(), est.krr.log_lam.item()


@pytest.fixture(scope="module")
def fa_kernels(fa_problem):
    """The kernel ALWS learns for each target on the factor-analysis model (see learned_kernel)."""
    return {t: learned_kernel(fa_problem[0], t) for t in TARGETS}


def alws_gradients(model, x, n, repeats, lam=1e-2, seed=0, targets=TARGETS, krr_seed=0, kernels=None, **krr):
    """θ-gradient estimates of mean_m log p(x_m): {target: [repeats, P]}, both targets from the
    same sleep sets.  The kernel is fixed: ``kernels[target] = (log bandwidth, log λ)`` if given,
    else the median-heuristic bandwidth and λ = ``lam``; ``krr_seed`` seeds random features /
    Nyström subsets."""
    ests = {}
    for t in targets:
        ests[t] = ALWS(sleep_samples=n, lam=lam, learn_kernel=False, seed=krr_seed, **krr).double()
        if kernels is not None:
            with torch.no_grad():
                ests[t].krr.log_lam.fill_(kernels[t][1])
    out = {t: [] for t in targets}
    for r in range(repeats):
        torch.manual_seed(seed + 7919 * r + n)
        zs, xs = model.sample(n)
        chol = None
        for t in targets:
            est = ests[t]
            if kernels is None:
                est.krr.kernel.init_bandwidth_(xs)
            else:
                with torch.no_grad():
                    est.krr.kernel.log_bandwidth.fill_(kernels[t][0])
            if est.krr.method == "exact" and (chol is None or kernels is not None):
                chol = est.krr.cholesky(xs)
            elif est.krr.method != "exact":
                chol = None
            j = est.model_surrogate(model, x, xs, est.targets(model, zs, xs, t), t, chol)
            out[t].append(grads(model.p_parameters(), j))
    return {t: torch.stack(g) for t, g in out.items()}


def _summary(g, exact):
    rel = (g - exact).norm(dim=1) / exact.norm()
    cos = torch.nn.functional.cosine_similarity(g, exact[None], dim=1)
    sd = g.var(0, unbiased=True).sum().sqrt() / exact.norm()  # spread across repeats, relative
    return rel, cos, sd


def _check_falls(errors: dict[int, torch.Tensor]) -> None:
    """Mean relative error must fall between successive N by more than 2 standard errors of the
    difference (independent repeats)."""
    ns = sorted(errors)
    for a, b in zip(ns, ns[1:]):
        ea, eb = errors[a], errors[b]
        se = math.sqrt(ea.var() / len(ea) + eb.var() / len(eb))
        assert ea.mean() - eb.mean() > 2 * se, (a, ea.mean().item(), b, eb.mean().item(), se)


def test_surrogates_are_the_kernel_regressions_they_claim(fa_problem):
    """generic: mean_m Σ_n A[n, m] log p(x_n, z_n); exp_family: mean_m Σ_n A[n, m] log p(x_m, z_n)
    (η(z_n)·S(x_m) − Ψ(z_n) + log p(z_n) is the log-joint at the wake point; h = 1 here) —
    values and θ-gradients, against the explicit weights A [N, M]."""
    model, x, _ = fa_problem
    est = ALWS(sleep_samples=300, lam=1e-2, learn_kernel=False).double()
    torch.manual_seed(0)
    zs, xs = model.sample(300)
    est.krr.kernel.init_bandwidth_(xs)
    with torch.no_grad():
        a = est.krr.weights(xs, x)  # [N, M]
    m = x.shape[0]
    generic_ref = (a * model.log_joint(xs, zs)[:, None]).sum() / m
    z_pair = [z[:, None, :] for z in zs]  # [N, 1, d] against x [M, D]: log p(x_m, z_n) [N, M]
    exp_ref = (a * model.log_joint(x, z_pair)).sum() / m
    for t, ref in (("generic", generic_ref), ("exp_family", exp_ref)):
        j = est.model_surrogate(model, x, xs, est.targets(model, zs, xs, t), t)
        torch.testing.assert_close(j, ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(grads(model.p_parameters(), j), grads(model.p_parameters(), ref), rtol=1e-8, atol=1e-10)


def test_gradient_matches_exact_and_improves_with_n(fa_problem, fa_kernels):
    """Factor analysis (D = 3, d = 2, σ = 0.5), wake batch of 100, kernel (bandwidth, λ) as ALWS
    learns it (30 kernel steps, see learned_kernel), 6 sleep sets per N, both targets: mean cosine
    with the exact gradient ≥ 0.95 at N = 2000, and the relative error falls from N = 250 to 2000
    by more than 2 standard errors (the slow test sweeps N = 250, 1000, 4000).  With the unlearned
    median-heuristic kernel (λ = 1e-2) the cosine at N = 2000 was only 0.95 (generic) / 0.92
    (exp_family) on this batch: kernel learning is part of the estimator."""
    model, x, exact = fa_problem
    g = {n: alws_gradients(model, x, n, repeats=6, kernels=fa_kernels) for n in (250, 2000)}
    for t in TARGETS:
        _, cos, _ = _summary(g[2000][t], exact)
        assert cos.mean() >= 0.95, (t, cos)
        _check_falls({n: _summary(gn[t], exact)[0] for n, gn in g.items()})


@pytest.mark.slow
def test_gradient_error_falls_over_250_1000_4000_and_target_variances(fa_problem, fa_kernels, capsys):
    """The issue's sweep N = 250, 1000, 4000 with 8 sleep sets each, for the learned and the
    fixed (median heuristic, λ = 1e-2) kernels; prints relative error, cosine, bias and spread
    across repeats of both targets (recorded in docs/results.md); asserts the error falls at
    each step for both targets and both kernels."""
    model, x, exact = fa_problem
    with capsys.disabled():
        print("\nlearned kernels (log bandwidth, log lambda):", fa_kernels)
        for kind, kernels in (("learned", fa_kernels), ("fixed", None)):
            errors = {t: {} for t in TARGETS}
            for n in (250, 1000, 4000):
                g = alws_gradients(model, x, n, repeats=8, seed=1, kernels=kernels)
                for t in TARGETS:
                    rel, cos, sd = _summary(g[t], exact)
                    errors[t][n] = rel
                    bias = (g[t].mean(0) - exact).norm() / exact.norm()
                    print(
                        f"{kind:7s} {t:10s} N={n:5d} rel.err {rel.mean():.3f}±{rel.std() / 8**0.5:.3f} "
                        f"cos {cos.mean():.3f} (min {cos.min():.3f}) bias {bias:.3f} spread {sd:.3f}"
                    )
            for t in TARGETS:
                _check_falls(errors[t])


def test_prior_parameter_gradients_match_the_closed_form(fa_problem, prior_shifted_batch):
    """∇ w.r.t. the prior N(μ₀, diag s²) of log p(x) = log N(x; W μ₀ + b, W S Wᵀ + Ψ):
    ∇μ₀ = Wᵀ r and ∂/∂log s_j = s_j² ((w_jᵀ r)² − w_jᵀ C⁻¹ w_j), r = C⁻¹(x − m), averaged over
    the wake batch. ALWS learns them through log p(z_n) only, identically for both targets."""
    model, x = fa_problem[0], prior_shifted_batch
    w, b = model.generative[0].net.weight, model.generative[0].net.bias
    s2 = model.prior.log_scale.exp() ** 2
    cov = w @ torch.diag(s2) @ w.T + torch.diag(torch.exp(2 * model.generative[0].log_scale))
    r = torch.linalg.solve(cov, (x - (w @ model.prior.loc + b)).T)  # [D, M]
    cinv_w = torch.linalg.solve(cov, w)
    closed = torch.cat(
        [
            (w.T @ r).mean(1),
            (s2[:, None] * ((w.T @ r) ** 2 - (w * cinv_w).sum(0)[:, None])).mean(1),
        ]
    ).detach()
    prior_params = [model.prior.loc, model.prior.log_scale]
    torch.testing.assert_close(grads(prior_params, exact_log_marginal(model, x).mean()), closed)

    n_prior = sum(p.numel() for p in prior_params)  # p_parameters() lists the prior's first
    assert model.p_parameters()[:2] == prior_params
    g = alws_gradients(model, x, 2000, repeats=3, seed=11)
    torch.testing.assert_close(g["generic"][:, :n_prior], g["exp_family"][:, :n_prior], rtol=1e-9, atol=1e-12)
    rel, cos, _ = _summary(g["generic"][:, :n_prior], closed)
    assert cos.min() >= 0.95 and rel.mean() < 0.2, (cos, rel)


def test_random_features_and_nystrom_converge_to_exact_krr(fa_problem):
    """On one sleep set (N = 600): RFF with F = 100, 400, 1600 (4 frequency draws each) and
    Nyström with m = 50, 150, 600 (4 random subsets each) give θ-gradients whose distance to exact
    KRR's falls with F and m; Nyström with m = N is exact KRR up to its K_mm jitter."""
    model, x, _ = fa_problem
    ref = alws_gradients(model, x, 600, repeats=1, seed=3, targets=("generic",))["generic"][0]

    def errs(method, sizes, key):
        out = {}
        for size in sizes:
            e = []
            for s in range(4):
                g = alws_gradients(model, x, 600, repeats=1, seed=3, targets=("generic",), krr=method, krr_seed=s, **{key: size})
                e.append(((g["generic"][0] - ref).norm() / ref.norm()).item())
            out[size] = torch.tensor(e)
        return out

    rff = errs("rff", (100, 400, 1600), "num_features")
    nys = errs("nystrom", (50, 150, 600), "num_inducing")
    _check_falls(rff)
    _check_falls({k: v for k, v in nys.items() if k < 600})
    assert nys[600].max() < 1e-3, nys[600]
    assert rff[1600].mean() < 0.1 and nys[150].mean() < nys[50].mean()


# ------------------------------------------------------------------ the loss contract


def grads_kept(params, loss):
    """Like exactness.grads, keeping the graph for further gradients."""
    gs = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, gs)])


def _est(**kw):
    kw.setdefault("sleep_samples", 200)
    kw.setdefault("valid_samples", 50)
    kw.setdefault("lam", 1e-2)
    return ALWS(**kw).double()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("method", ["exact", "rff"])
def test_one_loss_carries_model_and_kernel_gradients(fa_problem, target, method):
    """The θ-gradient of the loss is −(model surrogate)'s; the kernel parameters' gradient is the
    validation loss's; neither leaks into the other's parameters."""
    model, x, _ = fa_problem
    est = _est(target=target, krr=method, features="mlp", data_dim=3, feature_dim=2, feature_hidden=(8,))
    torch.manual_seed(9)
    out = est(model, x)
    theta, kern = model.p_parameters(), list(est.parameters())
    assert {"wake_log_joint", "kernel_loss", "bandwidth", "lam"} <= set(out.metrics)
    g_theta, g_kern = grads_kept(theta, out.loss), grads_kept(kern, out.loss)
    assert bool(est.bandwidth_initialised)

    torch.manual_seed(9)  # the same sleep and validation sets
    zs, xs = model.sample(200)
    zv, xv = model.sample(50)
    chol = est.krr.cholesky(xs) if method == "exact" else None
    t = est.targets(model, zs, xs, target)
    surrogate = est.model_surrogate(model, x, xs, t, target, chol)
    k_loss = est.kernel_loss(model, zs, xs, t.detach(), zv, xv, target, chol)
    torch.testing.assert_close(g_theta, -grads_kept(theta, surrogate))
    torch.testing.assert_close(g_kern, grads_kept(kern, k_loss))
    assert torch.count_nonzero(grads_kept(kern, surrogate)) == 0
    assert torch.count_nonzero(grads_kept(theta, k_loss)) == 0
    assert all(torch.count_nonzero(g) > 0 for g in torch.autograd.grad(k_loss, kern))


def test_exp_family_prediction_paths_agree():
    """The exact path forms the weights when there are fewer query points than target columns;
    otherwise it solves for the columns: same values and kernel gradients."""
    torch.manual_seed(0)
    krr = build_kernel_ridge(lam=0.1).double()
    xs, xq = torch.randn(60, 2, dtype=F64), torch.randn(5, 2, dtype=F64)
    targets, stats = torch.randn(60, 8, dtype=F64), torch.randn(5, 7, dtype=F64)
    krr.kernel.init_bandwidth_(xs)
    few = exp_family_prediction(krr, xs, targets, xq, stats)  # 5 < 8 columns: weights path
    many = exp_family_prediction(krr, xs, targets[:, :5].contiguous(), xq, stats[:, :4])  # 5 = 5: solve path
    pred = krr.predict(xs, targets, xq)
    torch.testing.assert_close(few, (pred[:, :-1] * stats).sum(-1) - pred[:, -1])
    pred = krr.predict(xs, targets[:, :5], xq)
    torch.testing.assert_close(many, (pred[:, :-1] * stats[:, :4]).sum(-1) - pred[:, -1])
    params = list(krr.parameters())
    g_few = grads(params, few.square().sum())
    g_ref = grads(params, ((krr.predict(xs, targets, xq)[:, :-1] * stats).sum(-1) - krr.predict(xs, targets, xq)[:, -1]).square().sum())
    torch.testing.assert_close(g_few, g_ref)


def test_sleep_phase_update_of_the_proposal(fa_problem):
    """q_update='sleep' adds exactly sleep_phase_loss (φ only); θ's gradient is unchanged."""
    model, x, _ = fa_problem
    a, b = _est(q_update="sleep", q_batch=64), _est()
    torch.manual_seed(4)
    out_a = a(model, x)
    assert "sleep_log_q" in out_a.metrics
    torch.manual_seed(4)
    out_b = b(model, x)
    ref_q = sleep_phase_loss(model, 64)  # the draws a made after its sleep and validation sets
    torch.testing.assert_close(grads_kept(model.p_parameters(), out_a.loss), grads_kept(model.p_parameters(), out_b.loss))
    torch.testing.assert_close(grads_kept(model.q_parameters(), out_a.loss), grads_kept(model.q_parameters(), ref_q))
    assert torch.count_nonzero(grads_kept(model.q_parameters(), out_b.loss)) == 0


def test_bad_settings_and_models_are_named():
    with pytest.raises(ValueError, match="target"):
        ALWS(target="fancy")
    with pytest.raises(ValueError, match="q_update"):
        ALWS(q_update="wake")
    with pytest.raises(ValueError, match="data_dim"):
        ALWS(features="mlp")
    with pytest.raises(ValueError, match="kernel"):
        ALWS(kernel="laplace")
    model = HelmholtzMachine.factor_analysis(3, 2)
    with pytest.raises(ValueError, match=r"estimator.to"):
        ALWS(sleep_samples=50, valid_samples=10)(model.double(), torch.randn(4, 3, dtype=F64))

    class Generic(torch.nn.Module):  # a simulator with no exponential-family view and no proposal
        data_dim = 3

        def __init__(self):
            super().__init__()
            self.inner = HelmholtzMachine.factor_analysis(3, 2)

        def sample(self, n):
            return self.inner.sample(n)

        def log_joint(self, x, zs):
            return self.inner.log_joint(x, zs)

        def log_prior(self, zs):
            return self.inner.log_prior(zs)

        def p_parameters(self):
            return self.inner.p_parameters()

        def q_parameters(self):
            return []

    sim = Generic()
    # The missing members are named (not a list of likelihood types).
    with pytest.raises(ModelContractError, match="lacks exponential_family, sufficient_statistics"):
        ALWS(target="exp_family").check_model(sim)
    with pytest.raises(ModelContractError, match="lacks log_proposal"):
        ALWS(q_update="sleep").check_model(sim)
    est = ALWS(sleep_samples=100, valid_samples=20)
    assert est.resolved_target(sim) == "generic" and est.resolved_target(model) == "exp_family"
    out = est(sim, torch.randn(8, 3))
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    assert ESTIMATORS["alws"] is ALWS and ALWS(**est.settings()).settings() == est.settings()


def test_training_factor_analysis_raises_the_exact_likelihood():
    """A short ALWS run (θ and kernel learned, 60 steps) on data from another factor-analysis
    model must raise the exact log-likelihood of held-out data by far more than its standard error."""
    truth = fa_model(1, learn_prior=False, sigma=0.3)
    torch.manual_seed(6)
    _, data = truth.sample(1200)
    model = fa_model(0, learn_prior=False).float()
    est = ALWS(sleep_samples=500, valid_samples=100, lam=1e-2, q_update="sleep")
    before = exact_log_likelihood(model, data[1000:].float())
    train(model, est, data[:1000].float(), config=TrainConfig(epochs=6, batch_size=100, lr_p=3e-2, lr_estimator=1e-2, progress=False))
    after = exact_log_likelihood(model, data[1000:].float())
    assert after.mean > before.mean + 5 * (after.stderr + before.stderr), (before, after)


def test_train_proposal_fits_q_by_sleep_updates():
    model = fa_model(0, learn_prior=False).float()
    theta = [p.detach().clone() for p in model.p_parameters()]
    torch.manual_seed(0)
    losses = train_proposal(model, steps=150, batch_size=100, lr=2e-2, progress=False)
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 0.5
    assert all(torch.equal(a, b) for a, b in zip(theta, model.p_parameters()))
    with pytest.raises(ValueError, match="no proposal"):
        train_proposal(torch.nn.Linear(2, 2))


def test_state_dict_round_trip_keeps_the_learned_bandwidth(fa_problem):
    model, x, _ = fa_problem
    est = _est(krr="rff", num_features=20)
    est(model, x)
    fresh = _est(krr="rff", num_features=20)
    fresh.load_state_dict(est.state_dict())
    assert bool(fresh.bandwidth_initialised)
    torch.testing.assert_close(fresh.krr.kernel.log_bandwidth, est.krr.kernel.log_bandwidth)
    torch.testing.assert_close(fresh.krr.rff_frequencies, est.krr.rff_frequencies)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_alws_step_on_cuda(fa_problem):
    model, x, _ = fa_problem
    model = fa_model(0).cuda()
    est = _est().cuda()
    out = est(model, x.cuda())
    out.loss.backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in model.p_parameters())


def test_command_line_trains_and_evaluates_alws(tmp_path):
    """`wakesleep train --algorithm alws` records its estimator settings and kernel learning rate in
    config.json, and trains q by sleep updates so that `wakesleep evaluate` works."""
    import json

    from wakesleep.cli import main

    run = tmp_path / "alws"
    args = [
        "train",
        "--algorithm",
        "alws",
        "--model",
        "gaussian",
        "--layers",
        "4",
        "--hidden",
        "16",
        "--sleep-samples",
        "200",
        "--krr",
        "nystrom",
        "--num-inducing",
        "50",
        "--kernel",
        "matern32",
        "--lam",
        "0.01",
        "--lr-kernel",
        "0.02",
        "--batch-size",
        "200",
        "--test-k",
        "10",
        "--valid-k",
        "5",
        "--run-dir",
        str(run),
        "--no-progress",
    ]
    assert main(args + ["--epochs", "1"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["estimator"]["krr"] == "nystrom" and config["estimator"]["num_inducing"] == 50
    assert config["estimator"]["kernel"] == "matern32" and config["estimator"]["q_update"] == "sleep"
    assert config["train"]["lr_estimator"] == 0.02
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_kernel_loss", "train_sleep_log_q", "valid_log_likelihood"} <= set(first)
    assert main(["evaluate", str(run), "--k", "10", "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluations"][-1]["k"] == 10 and math.isfinite(summary["evaluations"][-1]["mean"])


def test_resumed_training_keeps_the_learned_kernel(tmp_path):
    """train(..., resume=True) restores the estimator: a bandwidth far from the median heuristic's
    survives (re-initialisation would pull it back to the median distance, about 3 here)."""
    truth = fa_model(1, learn_prior=False)
    torch.manual_seed(0)
    data = truth.sample(400)[1].float()
    cfg = dict(batch_size=100, lr_estimator=0.05, progress=False, patience=None)
    est = ALWS(sleep_samples=200, valid_samples=50, lam=1e-2)
    with torch.no_grad():
        est.krr.kernel.log_bandwidth.fill_(math.log(50.0))
        est.bandwidth_initialised.fill_(True)
    train(fa_model(0, learn_prior=False).float(), est, data, config=TrainConfig(epochs=1, **cfg), run_dir=tmp_path)
    saved = est.krr.kernel.log_bandwidth.item()
    fresh = ALWS(sleep_samples=200, valid_samples=50, lam=1e-2)
    fit = train(fa_model(0, learn_prior=False).float(), fresh, data, config=TrainConfig(epochs=2, **cfg), run_dir=tmp_path, resume=True)
    assert [r["epoch"] for r in fit.history] == [1, 2]
    # 4 more Adam steps of lr 0.05 move log σ by at most 0.2 (plus rounding)
    assert abs(fresh.krr.kernel.log_bandwidth.item() - saved) <= 0.2 + 1e-4
    assert fresh.krr.kernel.bandwidth.item() > 30


def test_a_model_without_proposal_on_the_circle_trains_by_alws():
    """A latent angle z = (sin a, cos a) with a learned von Mises prior and a Gaussian likelihood, no
    proposal: ALWS gives θ-gradients (also to the prior's ν) and the proposal-based paths refuse
    clearly."""
    torch.manual_seed(0)
    model = HelmholtzMachine(CirclePrior(learn=True), [GaussianLayer(2, 5, (16,), scale="learned")], None)
    assert model.q_parameters() == [] and not model.has_proposal
    x = model.sample(64)[1]
    out = ALWS(sleep_samples=300, valid_samples=50)(model, x)
    g = torch.autograd.grad(out.loss, model.p_parameters())
    assert all(torch.isfinite(t).all() for t in g) and torch.count_nonzero(g[0]) == 2  # ν first
    with pytest.raises(ValueError, match="no proposal"):
        model.log_weights(x, 3)
    with pytest.raises(ModelContractError, match="lacks log_proposal"):
        ALWS(q_update="sleep").check_model(model)
    with pytest.raises(ValueError, match="recognition"):
        HelmholtzMachine(CirclePrior(), [GaussianLayer(2, 5)], [GaussianLayer(5, 2), GaussianLayer(2, 2)])
