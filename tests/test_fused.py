"""The fused hot-path forms agree with ``torch.distributions`` and with autograd of the plain
expression: values, gradients (both arguments, broadcasting) and second derivatives."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent

from wakesleep import layers
from wakesleep.layers import _BernoulliLogProb, bernoulli_log_prob, bernoulli_sample


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
    logits = torch.randn(2, layers._FUSE_FROM // 2 + 1, dtype=torch.float64, requires_grad=True)
    value = (torch.rand(2, layers._FUSE_FROM // 2 + 1, dtype=torch.float64) < 0.5).double()
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
