"""The fused hot-path forms agree with ``torch.distributions`` and with autograd of the plain
expression: values, gradients (both arguments, broadcasting) and second derivatives."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent

from wakesleep import fused
from wakesleep.fused import _BernoulliLogProb, bernoulli_log_prob, bernoulli_sample


def plain(logits, value):
    return (value * logits).sum(-1) - torch.nn.functional.softplus(logits).sum(-1)


# Large shapes take the fused node (≥ 2^16 elements), small ones the plain expression.
SHAPES = [((5, 100, 200), (100, 200)), ((100, 200), (5, 100, 200)), ((200,), (5, 100, 200)), ((3, 4, 6), (4, 6))]


@pytest.mark.parametrize("logit_shape,value_shape", SHAPES)
def test_log_prob_matches_torch_distributions(logit_shape, value_shape):
    torch.manual_seed(0)
    logits = torch.randn(logit_shape, dtype=torch.float64) * 3
    value = (torch.rand(value_shape, dtype=torch.float64) < 0.5).double()
    ref = Independent(Bernoulli(logits=logits, validate_args=False), 1).log_prob(value)
    torch.testing.assert_close(bernoulli_log_prob(logits, value), ref, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("logit_shape,value_shape", SHAPES)
def test_gradients_match_autograd_of_the_plain_expression(logit_shape, value_shape):
    torch.manual_seed(1)
    logits = (torch.randn(logit_shape, dtype=torch.float64) * 3).requires_grad_()
    value = torch.rand(value_shape, dtype=torch.float64).requires_grad_()  # a grad for the value too (not binary: fine)
    weight = torch.randn(torch.broadcast_shapes(logit_shape, value_shape)[:-1], dtype=torch.float64)
    g_fused = torch.autograd.grad((weight * bernoulli_log_prob(logits, value)).sum(), (logits, value))
    g_plain = torch.autograd.grad((weight * plain(logits, value)).sum(), (logits, value))
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_fused_node_is_used_for_large_tensors_and_has_second_derivatives():
    logits = torch.randn(2, fused._FUSE_FROM // 2 + 1, dtype=torch.float64, requires_grad=True)
    value = (torch.rand(2, fused._FUSE_FROM // 2 + 1, dtype=torch.float64) < 0.5).double()
    out = bernoulli_log_prob(logits, value)
    assert type(out.grad_fn).__name__ == "_BernoulliLogProbBackward"
    small_l = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    small_v = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_BernoulliLogProb.apply, (small_l, small_v))
    assert torch.autograd.gradgradcheck(_BernoulliLogProb.apply, (small_l, small_v))


def test_in_place_bernoulli_sampler_has_the_right_frequencies():
    torch.manual_seed(2)
    p = torch.tensor([0.0, 1e-3, 0.3, 0.5, 0.97, 1.0])
    n = 200_000
    s = bernoulli_sample(p, (n,))
    assert s.dtype == p.dtype and s.shape == (n, 6) and set(s.unique().tolist()) <= {0.0, 1.0}
    freq = s.mean(0)
    se = (p * (1 - p) / n).sqrt()
    assert freq[0] == 0 and freq[-1] == 1
    assert ((freq[1:-1] - p[1:-1]).abs() / se[1:-1]).max() < 4.5
    assert math.isclose(bernoulli_sample(torch.tensor([float("nan")]), (3,)).sum().item(), 0.0)


# ------------------------------------------------------------------ compiled kernels (opt-in)


@pytest.fixture
def compiled():
    """The compiled kernels switched on for one test (skips where Inductor cannot compile here)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ok = fused.use_compiled_kernels(True)
    if not ok:
        pytest.skip("torch.compile is unavailable on this machine (no C++ compiler?)")
    yield
    fused.use_compiled_kernels(False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_kernels_compute_the_same_log_density_and_gradient(compiled, dtype):
    torch.manual_seed(3)
    logits = (torch.randn(5, 100, 200, dtype=dtype) * 4).requires_grad_()
    logits.data[0, 0, :4] = torch.tensor([30.0, -30.0, 90.0, -90.0])  # saturated units
    value = (torch.rand(100, 200, dtype=dtype) < 0.4).to(dtype)
    weight = torch.randn(5, 100, dtype=dtype)
    out = bernoulli_log_prob(logits, value)
    assert type(out.grad_fn).__name__ == "_BernoulliLogProbBackward"
    (g,) = torch.autograd.grad((weight * out).sum(), logits)
    ref = plain(logits, value)
    # The closed form in float64 (autograd of torch's softplus is not a reference past its
    # threshold of 20, where it returns a gradient of exactly 1 instead of σ(l)).
    l64, v64 = logits.detach().double(), value.double()
    g_ref = ((v64 - torch.sigmoid(l64)) * weight.double().unsqueeze(-1)).to(dtype)
    # Rounding only: each of the 200 terms is off by at most a few ulps of its magnitude (the
    # compiled form also drops log(1 + e) for e = e^{-|l|} below epsilon, an error below eps·|l|).
    eps = torch.finfo(dtype).eps
    tol = 8 * eps * (value * logits).abs().add(torch.nn.functional.softplus(logits)).sum(-1).detach()
    assert ((out - ref).abs() <= tol).all()
    torch.testing.assert_close(g, g_ref, rtol=4 * eps, atol=4 * eps * weight.abs().max().item())


def test_compiled_kernels_switch_off_and_on():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        on = fused.use_compiled_kernels(True)
    try:
        assert (fused._compiled is not None) == on
    finally:
        assert fused.use_compiled_kernels(False) is False
    assert fused._compiled is None


def test_a_failing_compiler_warns_and_leaves_the_eager_kernels(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(fused, "_compiled_cache", None)  # as in a fresh process
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found"):
        assert fused.use_compiled_kernels(True) is False
    assert fused._compiled is None


def test_train_config_compile_must_be_a_bool():
    from wakesleep.training import TrainConfig

    assert TrainConfig(compile=True).compile is True
    with pytest.raises(ValueError, match="compile must be True or False"):
        TrainConfig(compile="yes")


@pytest.mark.parametrize("kind,algorithm", [("sbn", "rws"), ("sbn", "ws"), ("gaussian", "iwae")])
def test_compiled_step_draws_the_same_particles_and_computes_the_same_loss_and_gradient(compiled, kind, algorithm):
    """``TrainConfig(compile=True)``'s step against the eager one from the same seed.

    Random draws come from ATen in both (``fallback_random``), so the only differences are float32
    rounding in reordered sums (≤ ~1e-6 relative for these sizes; 1e-4 leaves room for the
    log-sum-exp and Adam-free gradient paths).  A different random stream would change the loss
    by whole nats.
    """
    import wakesleep as ws
    from wakesleep.training import compile_estimator

    torch.manual_seed(0)
    model = ws.HelmholtzMachine.sbn([784, 64]) if kind == "sbn" else ws.HelmholtzMachine.gaussian([784, 8], hidden=(32,))
    from wakesleep.estimators import ESTIMATORS

    estimator = ESTIMATORS[algorithm]()
    x = (torch.rand(100, 784) < 0.3).float()
    forward = compile_estimator(estimator)
    results = []
    for fn in (estimator, forward):
        torch.manual_seed(1)
        model.zero_grad(set_to_none=True)
        out = fn(model, x)
        out.loss.backward()
        results.append((out.loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_e, grads_e), (loss_c, grads_c) = results
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-4)
    for g_c, g_e in zip(grads_c, grads_e):
        torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-4 * g_e.abs().max().item() + 1e-6)


@pytest.mark.parametrize("d", [1, 10, 127, 200, 784, 1000])
def test_lanes_split_the_width_into_products_that_cannot_overflow(d):
    factors, lanes = fused._lanes(d)
    assert factors * lanes == d and factors <= fused._MAX_FACTORS
    assert 2.0**fused._MAX_FACTORS < torch.finfo(torch.float32).max  # each factor 1 + e^{-|l|} is at most 2
    if d in (200, 784, 1000):
        assert lanes % 8 == 0  # one vector lane per product


@pytest.mark.parametrize("d", [10, 127, 784])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_kernel_form_is_the_log_density_within_its_rounding_bound(d, dtype):
    """The compiled forward's expression (run eagerly here) takes Σ log(1 + e^{-|l|}) as logs of
    products over lanes: against float64 softplus, its error is within the rounding bound of the
    products (d·eps/2, a relative eps/2 per multiplication) plus that of the d-term sums."""
    torch.manual_seed(d)
    logits = torch.randn(7, 30, d, dtype=dtype) * 4
    logits[0, 0, : min(d, 4)] = torch.tensor([30.0, -30.0, 90.0, -90.0], dtype=dtype)[: min(d, 4)]
    value = (torch.rand(30, d, dtype=dtype) < 0.4).to(dtype)
    out = fused._log_prob_kernel(logits, value)
    l64, v64 = logits.double(), value.double()
    exact = (v64 * l64 - torch.nn.functional.softplus(l64)).sum(-1)
    eps = torch.finfo(dtype).eps
    tol = d * eps / 2 + 8 * eps * (v64 * l64).abs().add(torch.nn.functional.softplus(l64)).sum(-1)
    assert ((out.double() - exact).abs() <= tol).all()
