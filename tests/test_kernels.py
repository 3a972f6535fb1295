"""Tests for wakesleep.kernels: kernels and kernel ridge regression for ALWS (Wenliang et al. 2020)."""

import itertools
import math
import statistics
import warnings

import pytest
import torch
from torch import nn

from wakesleep.kernels import (
    GaussianKernel,
    KernelRidge,
    KernelRidgeError,
    LinearFeatures,
    MaternKernel,
    MLPFeatures,
)

F64 = torch.float64
KERNELS = {
    "gauss": lambda **kw: GaussianKernel(**kw),
    "matern12": lambda **kw: MaternKernel(0.5, **kw),
    "matern32": lambda **kw: MaternKernel(1.5, **kw),
    "matern52": lambda **kw: MaternKernel(2.5, **kw),
}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _data(n, m, d=2, seed=0, c=3):
    g = _gen(seed)
    xs = torch.rand(n, d, generator=g, dtype=F64)
    xw = torch.rand(m, d, generator=g, dtype=F64)
    t = torch.randn(n, c, generator=g, dtype=F64)
    return xs, xw, t


def _brute_kernel(name, a, b, bw):
    """k(a_i, b_j) from explicit differences and the textbook formulas."""
    r = torch.stack([torch.stack([(ai - bj).norm() for bj in b]) for ai in a]) / bw
    if name == "gauss":
        return torch.exp(-0.5 * r**2)
    if name == "matern12":
        return torch.exp(-r)
    if name == "matern32":
        return (1 + math.sqrt(3) * r) * torch.exp(-math.sqrt(3) * r)
    return (1 + math.sqrt(5) * r + 5 * r**2 / 3) * torch.exp(-math.sqrt(5) * r)


# ---- kernels --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KERNELS)
def test_gram_matches_closed_form(name):
    a, b, _ = _data(7, 5, d=3)
    k = KERNELS[name](bandwidth=0.7).double()
    # Matérn uses r = sqrt(r² + 1e-12): |Δk| ≤ max|dk/dr| · 1e-6 ≤ 1e-6.
    tol = 1e-6 if name != "gauss" else 1e-12
    bw = k.bandwidth.item()  # 0.7 up to the float32 rounding of its log at construction
    assert bw == pytest.approx(0.7, rel=1e-6)
    torch.testing.assert_close(k(a, b), _brute_kernel(name, a, b, bw), atol=tol, rtol=0)
    torch.testing.assert_close(k(a), _brute_kernel(name, a, a, bw), atol=tol, rtol=0)


@pytest.mark.parametrize("name", ["matern12", "matern32", "matern52"])
def test_matern_gradients_finite_at_zero_distance(name):
    x = torch.randn(6, 3, generator=_gen(1), dtype=F64)
    x = torch.cat([x, x[:3]])  # duplicated rows: zero distances off the diagonal too
    k = KERNELS[name](features=LinearFeatures(3, 2)).double()
    loss = k(x).sum() + k(x, x[:4]).sum()
    loss.backward()
    grads = [k.log_bandwidth.grad, k.features.linear.weight.grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert k.log_bandwidth.grad.abs() > 0


def test_kernel_rejects_bad_arguments():
    with pytest.raises(ValueError, match="nu"):
        MaternKernel(1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        GaussianKernel(bandwidth=0.0)
    k = GaussianKernel()
    with pytest.raises(ValueError, match="width"):
        k(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="shape"):
        k(torch.zeros(3))


def test_median_heuristic_matches_brute_force():
    x = torch.randn(40, 3, generator=_gen(2), dtype=F64)
    feats = LinearFeatures(3, 2).double()
    k = GaussianKernel(features=feats).double()
    k.init_bandwidth_(x)
    with torch.no_grad():
        f = feats(x).tolist()
    brute = statistics.median(math.dist(f[i], f[j]) for i, j in itertools.combinations(range(40), 2))
    assert k.bandwidth.item() == pytest.approx(brute, rel=1e-10)


def test_median_heuristic_subsamples():
    x = torch.randn(50, 2, generator=_gen(3), dtype=F64)
    k = GaussianKernel().double().init_bandwidth_(x, max_points=20, generator=_gen(9))
    sub = x[torch.randperm(50, generator=_gen(9))[:20]].tolist()
    brute = statistics.median(math.dist(a, b) for a, b in itertools.combinations(sub, 2))
    assert k.bandwidth.item() == pytest.approx(brute, rel=1e-10)
    with pytest.raises(ValueError, match="median"):
        GaussianKernel().init_bandwidth_(torch.ones(10, 2))


def test_rff_frequencies_reproduce_kernel_within_standard_error():
    # (1/F') Σ cos(ω·δ) estimates κ(δ) with variance ((1 + κ(2δ))/2 − κ(δ)²) / F' (Gaussian and
    # Matérn spectral densities alike); check |z| < 5 for a few separations.
    nfreq, dim = 4000, 3
    deltas = torch.randn(6, dim, generator=_gen(4), dtype=F64) * 0.8
    for name, kern in KERNELS.items():
        k = kern().double()
        omega = k.spectral_frequencies(nfreq, dim, _gen(5))
        est = torch.cos(deltas @ omega.T).mean(-1)
        zero = torch.zeros(1, dim, dtype=F64)
        with torch.no_grad():
            true = k(deltas, zero)[:, 0]
            true2 = k(2 * deltas, zero)[:, 0]
        se = (((1 + true2) / 2 - true**2) / nfreq).sqrt()
        assert ((est - true).abs() / se).max() < 5, name


# ---- exact KRR ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KERNELS)
def test_exact_krr_matches_dense_float64_solve(name):
    xs, xw, t = _data(60, 9)
    krr = KernelRidge(KERNELS[name](bandwidth=0.4), lam=1e-3).double()
    with torch.no_grad():
        k_ss, k_sw = krr.kernel(xs), krr.kernel(xs, xw)
        ref = torch.linalg.solve(k_ss + krr.lam * torch.eye(60, dtype=F64), k_sw)
        A = krr.weights(xs, xw)
        pred = krr.predict(xs, t, xw)
    scale = ref.abs().max()
    torch.testing.assert_close(A, ref, atol=1e-8 * scale, rtol=0)
    torch.testing.assert_close(pred, ref.T @ t, atol=1e-8 * (ref.T @ t).abs().max(), rtol=0)


@pytest.mark.parametrize("method", ["exact", "nystrom", "rff"])
def test_solve_and_predict_agree_with_weights(method):
    xs, xw, t = _data(80, 11)
    rhs = torch.randn(11, 4, generator=_gen(6), dtype=F64)
    krr = KernelRidge(GaussianKernel(bandwidth=0.3), lam=1e-2, method=method, num_inducing=30, num_features=60, inducing="first").double()
    with torch.no_grad():
        A = krr.weights(xs, xw)
        assert A.shape == (80, 11)
        torch.testing.assert_close(krr.solve(xs, xw, rhs), A @ rhs, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(krr.predict(xs, t, xw), A.T @ t, rtol=1e-9, atol=1e-12)
        # 1-D targets / right-hand sides drop the trailing dim.
        assert krr.solve(xs, xw, rhs[:, 0]).shape == (80,)
        torch.testing.assert_close(krr.predict(xs, t[:, 0], xw), A.T @ t[:, 0], rtol=1e-9, atol=1e-12)


def test_model_step_contraction_matches_mean_prediction():
    # ALWS model step: mean_m Ĵ(x_m) = Σ_n t_n (A 1/M)_n with A constant; θ-gradients agree and
    # the kernel gets none.
    xs, xw, _ = _data(50, 8)
    theta = torch.tensor([0.3, -1.2], dtype=F64, requires_grad=True)
    krr = KernelRidge(GaussianKernel(bandwidth=0.5)).double()
    t = torch.sin(xs @ theta)[:, None]
    with torch.no_grad():
        w = krr.solve(xs, xw, torch.full((8, 1), 1 / 8, dtype=F64))
    surrogate = (w * t).sum()
    (g1,) = torch.autograd.grad(surrogate, theta, retain_graph=True)
    ref = krr.predict(xs, t, xw).mean()
    (g2,) = torch.autograd.grad(ref, theta)
    torch.testing.assert_close(surrogate, ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=0)


@pytest.mark.parametrize("dim", [1, 2])
def test_krr_fit_of_smooth_function_improves_with_n(dim):
    # Noise s.d. 0.1 (variance 0.01). With the median bandwidth the fit has at most a few dozen
    # effective degrees of freedom, so at N = 800 the variance term is ≲ 0.01·80/800 = 1e-3; the
    # bound below is that (1-D: 1e-3) or twice it (2-D, adding bias).
    def f(x):
        return torch.sin(2 * math.pi * x[:, 0]) if dim == 1 else torch.sin(3 * x[:, 0]) * torch.cos(2 * x[:, 1])

    width = 1.0 if dim == 1 else 2.0
    x_test = torch.rand(500, dim, generator=_gen(1), dtype=F64) * width
    mses = []
    for n in (50, 200, 800):
        per_seed = []
        for seed in range(3):
            g = _gen(100 + seed)
            x = torch.rand(n, dim, generator=g, dtype=F64) * width
            y = f(x) + 0.1 * torch.randn(n, generator=g, dtype=F64)
            krr = KernelRidge(GaussianKernel().double().init_bandwidth_(x), lam=1e-2).double()
            with torch.no_grad():
                per_seed.append(((krr.predict(x, y, x_test) - f(x_test)) ** 2).mean().item())
        mses.append(sum(per_seed) / 3)
    assert mses[0] > mses[1] > mses[2]
    assert mses[2] < (1e-3 if dim == 1 else 2e-3)


# ---- approximations -------------------------------------------------------------------------


def _rel_err(krr, xs, t, xq, exact):
    with torch.no_grad():
        return ((krr.predict(xs, t, xq) - exact).norm() / exact.norm()).item()


def _smooth_problem():
    xs, xq, _ = _data(600, 50, seed=7)
    t = torch.sin(6 * xs[:, :1]) + xs[:, 1:] ** 2
    return xs, xq, t


@pytest.mark.parametrize("name", KERNELS)
def test_nystrom_approaches_exact(name):
    xs, xq, t = _smooth_problem()
    kernel = KERNELS[name]().double().init_bandwidth_(xs)
    with torch.no_grad():
        exact = KernelRidge(kernel, lam=1e-2).double().predict(xs, t, xq)
    errs = [_rel_err(KernelRidge(kernel, lam=1e-2, method="nystrom", num_inducing=m, seed=1).double(), xs, t, xq, exact) for m in (25, 100, 400)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-2
    # All sleep points inducing: Nyström KRR is exact KRR (up to the m·eps jitter on K_mm).
    full = KernelRidge(kernel, lam=1e-2, method="nystrom", num_inducing=600).double()
    assert _rel_err(full, xs, t, xq, exact) < 1e-8


@pytest.mark.parametrize("name", KERNELS)
def test_rff_approaches_exact(name):
    # Monte Carlo: error ~ F^(-1/2), averaged over 4 frequency seeds. At F = 1024 each kernel entry
    # has standard error ≤ (1/(F/2))^(1/2) = 0.044; the smoothed prediction error must be below it.
    xs, xq, t = _smooth_problem()
    kernel = KERNELS[name]().double().init_bandwidth_(xs)
    with torch.no_grad():
        exact = KernelRidge(kernel, lam=1e-2).double().predict(xs, t, xq)
    errs = []
    for f in (16, 128, 1024):
        errs.append(
            sum(_rel_err(KernelRidge(kernel, lam=1e-2, method="rff", num_features=f, seed=s).double(), xs, t, xq, exact) for s in range(4)) / 4
        )
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < math.sqrt(2 / 1024)


def test_rff_primal_equals_dual_with_documented_features():
    # Primal solve with Φ = [cos(φΩᵀ/σ), sin(φΩᵀ/σ)]/sqrt(F/2) equals dual KRR with kernel ΦΦᵀ.
    xs, xw, t = _data(40, 7)
    krr = KernelRidge(MaternKernel(1.5, features=LinearFeatures(2, 3), bandwidth=0.5), lam=1e-2, method="rff", num_features=20).double()
    with torch.no_grad():
        f_s, f_w = krr.kernel.features(xs), krr.kernel.features(xw)
        omega = krr.rff_frequencies / krr.kernel.bandwidth
        assert omega.shape == (10, 3)

        def phi(f):
            return torch.cat([torch.cos(f @ omega.T), torch.sin(f @ omega.T)], -1) / math.sqrt(10)

        ps, pw = phi(f_s), phi(f_w)
        ref = torch.linalg.solve(ps @ ps.T + krr.lam * torch.eye(40, dtype=F64), ps @ pw.T)
        torch.testing.assert_close(krr.weights(xs, xw), ref, rtol=0, atol=1e-8 * ref.abs().max())


def test_rff_lazy_frequencies_survive_state_dict():
    xs, xw, t = _data(30, 5, d=4)
    a = KernelRidge(GaussianKernel(), method="rff", num_features=16, seed=3).double()
    assert a.rff_frequencies.numel() == 0  # IdentityFeatures(): width unknown until first use
    pred = a.predict(xs, t, xw)
    assert a.rff_frequencies.shape == (8, 4)
    b = KernelRidge(GaussianKernel(), method="rff", num_features=16, seed=99).double()
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.predict(xs, t, xw), pred)


# ---- non-PD fallback and errors -------------------------------------------------------------


def test_duplicated_points_with_zero_lambda_use_jitter_once():
    x = torch.randint(0, 2, (40, 12), generator=_gen(8)).to(F64)  # binary, like SBN samples
    x = torch.cat([x, x[:10]])
    krr = KernelRidge(GaussianKernel().double().init_bandwidth_(x), lam=0.0, learn_lam=False).double()
    xw = x[:5] + 0.1
    with pytest.warns(RuntimeWarning, match="jitter"):
        A = krr.weights(x, xw)
    assert torch.isfinite(A).all()
    with torch.no_grad():
        k = krr.kernel(x)
        # (K + δI) A = K_sw with δ ≤ 1e-6 (mean diag 1): K A − K_sw = −δA.
        resid = (k @ A - krr.kernel(x, xw)).abs().max()
    assert resid <= 1e-6 * A.abs().max() * 1.01 + 1e-9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        krr.weights(x, xw)  # warned once per instance


class _NegatedGaussian(GaussianKernel):
    def gram_features(self, fa, fb=None):
        return -super().gram_features(fa, fb)


def test_indefinite_matrix_raises_naming_lambda():
    xs, xw, t = _data(10, 3)
    krr = KernelRidge(_NegatedGaussian(), lam=1e-3).double()
    with pytest.raises(KernelRidgeError, match=r"lam \(λ\) = 0.001.*increase lam"):
        krr.predict(xs, t, xw)
    assert issubclass(KernelRidgeError, ValueError)


def test_nan_inputs_are_reported():
    xs, xw, t = _data(10, 3)
    xs[2, 0] = float("nan")
    with pytest.raises(KernelRidgeError, match="NaN"):
        KernelRidge(GaussianKernel()).double().predict(xs, t, xw)


def test_krr_rejects_bad_arguments():
    k = GaussianKernel()
    for kwargs in (
        {"method": "svd"},
        {"lam": -1.0},
        {"lam": 0.0},
        {"method": "rff", "num_features": 15},
        {"num_inducing": 0},
        {"inducing": "kmeans"},
    ):
        with pytest.raises(ValueError):
            KernelRidge(k, **kwargs)
    krr = KernelRidge(k)
    xs, xw, t = (z.float() for z in _data(10, 3))
    with pytest.raises(ValueError, match="rhs"):
        krr.solve(xs, xw, torch.ones(4, 1))
    with pytest.raises(ValueError, match="targets"):
        krr.predict(xs, t[:5], xw)
    with pytest.raises(ValueError, match="width"):
        krr.weights(xs, torch.ones(3, 5))
    with pytest.raises(ValueError, match="t_val"):
        krr.validation_loss(xs, t, xw, t[:2])


# ---- kernel learning ------------------------------------------------------------------------


def test_validation_loss_is_mean_per_sample_error_with_detached_targets():
    xs, xv, t = _data(30, 12)
    t.requires_grad_(True)
    tv = torch.randn(12, 3, generator=_gen(11), dtype=F64, requires_grad=True)
    krr = KernelRidge(GaussianKernel(bandwidth=0.5)).double()
    loss = krr.validation_loss(xs, t, xv, tv)
    pred = krr.predict(xs, t.detach(), xv)
    torch.testing.assert_close(loss, ((pred - tv.detach()) ** 2).sum(-1).mean())
    loss.backward()
    assert t.grad is None and tv.grad is None
    # 1-D targets: mean of squared errors.
    loss1 = krr.validation_loss(xs, t[:, 0], xv, tv[:, 0])
    torch.testing.assert_close(loss1, ((pred[:, 0] - tv[:, 0].detach()) ** 2).mean())


@pytest.mark.parametrize("method", ["exact", "nystrom", "rff"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_gradients_reach_all_kernel_parameters(method, batch_norm):
    xs, xv, _ = _data(64, 16, d=3, seed=12)
    ts, tv = torch.sin(3 * xs).sum(-1, keepdim=True), torch.sin(3 * xv).sum(-1, keepdim=True)
    feats = MLPFeatures(3, hidden=(8,), out_dim=4, batch_norm=batch_norm)
    krr = KernelRidge(MaternKernel(2.5, features=feats), lam=1e-2, method=method, num_inducing=20, num_features=40).double()
    n_feat = len(list(feats.parameters()))
    assert len(list(krr.parameters())) == n_feat + 2  # + log_bandwidth, log_lam
    if method == "rff":
        assert "rff_frequencies" in dict(krr.named_buffers())
        assert not any("rff" in name for name, _ in krr.named_parameters())
    krr.validation_loss(xs, ts, xv, tv).backward()
    for name, p in krr.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for p in (krr.log_lam, krr.kernel.log_bandwidth, feats.net[0].weight):
        assert p.grad.abs().max() > 0
    # Batch norm: one wake point is fine (sleep and wake are normalised together).
    assert krr.solve(xs, xv[:1], torch.ones(1, 1, dtype=F64)).shape == (64, 1)


@pytest.mark.parametrize("method", ["exact", "nystrom", "rff"])
def test_validation_loss_gradcheck(method):
    xs, xv, t = _data(25, 6, seed=13, c=2)
    tv = torch.randn(6, 2, generator=_gen(14), dtype=F64)
    krr = KernelRidge(
        GaussianKernel(features=LinearFeatures(2, 2), bandwidth=0.5), lam=1e-2, method=method, num_inducing=10, num_features=30, inducing="first"
    ).double()
    names = ["krr.log_lam", "krr.kernel.log_bandwidth", "krr.kernel.features.linear.weight"]
    wrapper = _LossModule(krr)
    params = dict(wrapper.named_parameters())

    def loss(*values):
        return torch.func.functional_call(wrapper, dict(zip(names, values)), (xs, t, xv, tv))

    assert torch.autograd.gradcheck(loss, tuple(params[n].detach().clone().requires_grad_(True) for n in names))


class _LossModule(nn.Module):
    def __init__(self, krr):
        super().__init__()
        self.krr = krr

    def forward(self, *args):
        return self.krr.validation_loss(*args)


@pytest.mark.parametrize("method", ["exact", "nystrom", "rff"])
def test_float32_agrees_with_float64(method):
    # Cholesky solves are backward stable: relative error ≲ n·eps·κ with κ ≤ (N + λ)/λ for a
    # kernel with unit diagonal, i.e. 100 · 1.2e-7 · 1001 ≈ 1.2e-2 here (n = N = 100, λ = 0.1).
    xs, xw, t = _data(100, 10, seed=15)
    kw = dict(lam=0.1, method=method, num_inducing=50, num_features=100, inducing="first")
    k64 = KernelRidge(GaussianKernel(bandwidth=0.3), **kw).double()
    k32 = KernelRidge(GaussianKernel(bandwidth=0.3), **kw)
    with torch.no_grad():
        p64 = k64.predict(xs, t, xw)
        p32 = k32.predict(xs.float(), t.float(), xw.float())
    assert p32.dtype == torch.float32
    assert ((p32.double() - p64).norm() / p64.norm()).item() < 1.2e-2


def test_cholesky_reuse_gives_the_same_values_and_gradients():
    # One factor of K_ss + λI shared by several solves must change nothing: values and the
    # gradients w.r.t. the kernel parameters and λ, against a dense float64 reference in which
    # autograd differentiates torch.linalg.solve.
    xs, xw, t = _data(40, 7, d=3, seed=21, c=2)
    krr = KernelRidge(GaussianKernel(features=LinearFeatures(3, 2), bandwidth=0.5), lam=0.05).double()
    params = [krr.kernel.log_bandwidth, krr.log_lam, krr.kernel.features.linear.weight]

    def dense():
        f = krr.kernel.features
        k = krr.kernel
        k_ss = k.gram_features(f(xs))
        a = torch.linalg.solve(k_ss + krr.lam * torch.eye(40, dtype=F64), k.gram_features(f(xs), f(xw)))
        return (a.mT @ t).square().sum()

    ref = torch.autograd.grad(dense(), params)
    chol = krr.cholesky(xs)
    assert not chol.requires_grad
    for c in (None, chol):
        out = krr.predict(xs, t, xw, chol=c).square().sum()
        got = torch.autograd.grad(out, params)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(krr.solve(xs, xw, t[:7], chol=chol), krr.solve(xs, xw, t[:7]))
        torch.testing.assert_close(krr.weights(xs, xw, chol=chol), krr.weights(xs, xw))
    with pytest.raises(ValueError, match="chol must be"):
        krr.weights(xs[:10], xw, chol=chol)
    rff = KernelRidge(GaussianKernel(), method="rff", num_features=10).double()
    with pytest.raises(ValueError, match="method='exact'"):
        rff.cholesky(xs)
    with pytest.raises(ValueError, match="method='exact'"):
        rff.solve(xs, xw, t[:7], chol=chol)


def test_docstring_examples_run():
    import doctest

    import wakesleep.kernels as mod

    result = doctest.testmod(mod, extraglobs={"torch": torch})
    assert result.attempted > 0 and result.failed == 0
