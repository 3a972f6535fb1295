"""Fused log-densities behind the stochastic layers, and the process-wide compile switch.

The training hot path evaluates the same few densities over [K, B, D] tensors at every step;
here they are written once, in the forms that are fastest there:

- :func:`bernoulli_log_prob`: Σ x·l − softplus(l) as one autograd node with a closed-form backward
  (:class:`_BernoulliLogProb`), optionally run as ``torch.compile`` kernels;
- :func:`normal_log_prob` and :func:`normal_sample`: the diagonal Gaussian's log-density and draw;
- :func:`categorical_log_prob`: the one-hot categorical's log-density from normalised log-probabilities;
- :func:`bernoulli_sample`: binary draws by ``uniform < p``;
- :func:`use_compiled_kernels`: the switch the trainer turns on with ``--compile`` (state of the
  whole process: ``_compiled``).

:mod:`wakesleep.layers` builds its layers on these; ``tests/test_fused.py`` checks them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)


class _BernoulliLogProb(torch.autograd.Function):
    """Σ_i [v_i l_i − softplus(l_i)] as one autograd node.

    Autograd of the plain expression keeps five nodes and, on the backward pass, runs
    ``softplus_backward``, a broadcast multiply and a sum over the [K, B, D] tensor; this node's
    backward is the closed form ∂/∂l = v − σ(l), three in-place passes, and ∂/∂v = l.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, value: Tensor) -> Tensor:
        ctx.save_for_backward(logits, value)
        if _compiled is not None:
            return _compiled[0](logits, value)
        return _plain_log_prob(logits, value)

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, value = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        grad_logits = grad_value = None
        if ctx.needs_input_grad[0]:
            shape = torch.broadcast_shapes(logits.shape, value.shape)
            if torch.is_grad_enabled() or logits.shape != shape:  # differentiable / broadcasting form
                grad_logits = ((value - torch.sigmoid(logits)) * g).sum_to_size(logits.shape)
            elif _compiled is not None:
                grad_logits = _compiled[1](logits, value, grad)
            else:
                grad_logits = torch.sigmoid(logits).sub_(value).mul_(-g)
        if ctx.needs_input_grad[1]:
            grad_value = (logits * g).sum_to_size(value.shape)
        return grad_logits, grad_value


def bernoulli_log_prob(logits: Tensor, value: Tensor) -> Tensor:
    """Σ_i log Bernoulli(value_i; σ(logits_i)) over the last dimension, broadcasting, in nats.

    Computes x·l − softplus(l), which equals ``-binary_cross_entropy_with_logits`` but broadcasts
    ``value [B, D]`` against ``logits [K, B, D]`` without materialising an expanded copy of x,
    as a single autograd node whose backward is the closed form ∂/∂l = x − σ(l).
    """
    if logits.dtype != value.dtype:
        value = value.to(logits.dtype)
    if max(logits.numel(), value.numel()) < _FUSE_FROM:
        # Small tensors: the per-node cost of a Python autograd.Function exceeds the arithmetic.
        return _plain_log_prob(logits, value)
    return _BernoulliLogProb.apply(logits, value)


def _plain_log_prob(logits: Tensor, value: Tensor) -> Tensor:
    return torch.linalg.vecdot(logits, value) - F.softplus(logits).sum(-1)


#: Tensors with at least this many elements take the fused autograd node in bernoulli_log_prob.
_FUSE_FROM = 2**16


def _log_prob_kernel(logits: Tensor, value: Tensor) -> Tensor:
    # softplus(l) = max(l, 0) + log(1 + e^{-|l|}); written out so that Inductor emits one
    # vectorised loop (its softplus/log1p lowering is no faster than ATen's).  For e^{-|l|} below
    # float32's epsilon, log(1 + e) rounds to 0: an absolute error under 6e-8 nats per unit.
    return (value * logits - logits.clamp_min(0) - torch.log(1 + torch.exp(-logits.abs()))).sum(-1)


def _grad_kernel(logits: Tensor, value: Tensor, grad: Tensor) -> Tensor:
    return (value - torch.sigmoid(logits)) * grad.unsqueeze(-1)


def first_line(err: BaseException) -> str:
    """``"TypeName: first line of the message"``: a compile failure's cause in one line (Inductor's
    messages run to pages)."""
    text = str(err)
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


#: (forward, backward) compiled kernels of the fused Bernoulli node, or None (eager ATen).
_compiled: tuple | None = None
_compiled_cache: tuple | None = None


def use_compiled_kernels(enabled: bool = True) -> bool:
    """Run the fused Bernoulli log-density's passes over [K, B, D] as ``torch.compile`` kernels.

    Opt-in (``TrainConfig(compile=True)``, ``wakesleep train --compile``): the forward
    Σ x·l − softplus(l) and the backward (x − σ(l))·g each become one vectorised loop instead of
    three to five ATen passes (``docs/benchmarks.md`` gives the measured gain).  Compiling needs
    a C++ compiler (Inductor's CPU back end) and takes seconds per new shape, so it pays only for
    runs of many steps.  What is computed does not change (``tests/test_fused.py`` compares it
    with the eager form); only float32 rounding differs.

    Args:
        enabled: True to switch the compiled kernels on, False for the eager ATen forms.

    Returns:
        True if compiled kernels are in use afterwards.  When compiling fails (no compiler, an
        unsupported platform) this warns once, names the cause, and returns False: the eager
        forms stay in use and the results are the same.
    """
    global _compiled, _compiled_cache
    if not enabled:
        _compiled = None
        return False
    if _compiled_cache is not None:  # compiled once per process; switching back on is free
        _compiled = _compiled_cache
        return True
    try:
        fwd = torch.compile(_log_prob_kernel, dynamic=None)
        bwd = torch.compile(_grad_kernel, dynamic=None)
        probe = torch.zeros(2, 3)
        fwd(probe, probe)  # compile now, so that a missing compiler shows here, not mid-training
        bwd(probe, probe, probe[:, 0])
    except Exception as err:  # Inductor raises many types (missing compiler, codegen errors)
        import warnings

        warnings.warn(
            f"torch.compile is unavailable ({first_line(err)}); "
            "using the eager kernels (same results, slower). Install a C++ compiler to use --compile.",
            RuntimeWarning,
            stacklevel=2,
        )
        _compiled = None
        return False
    _compiled = _compiled_cache = (fwd, bwd)
    return True


def bernoulli_sample(probs: Tensor, sample_shape: tuple[int, ...] = ()) -> Tensor:
    """Binary draws with P(1) = probs, shape [*sample_shape, *probs.shape], no gradient.

    ``uniform < p`` is several times faster than ``torch.bernoulli`` on the CPU and turns NaN
    probabilities into zeros, leaving the NaN to show in the log-density (where the trainer
    reports it) instead of raising inside the sampler.
    """
    u = torch.rand(*sample_shape, *probs.shape, dtype=probs.dtype, device=probs.device)
    return u.lt_(probs)  # in place: the 0/1 result lands in u's floating dtype, no bool copy


def normal_log_prob(mean: Tensor, log_scale: Tensor, value: Tensor) -> Tensor:
    """Σ_i log N(value_i; mean_i, exp(log_scale_i)²) over the last dimension, in nats."""
    z = (value - mean) * torch.exp(-log_scale)
    return -0.5 * (z * z).sum(-1) - log_scale.expand_as(z).sum(-1) - 0.5 * z.shape[-1] * _LOG_2PI


def normal_sample(mean: Tensor, log_scale: Tensor, eps: Tensor, reparameterize: bool = False) -> Tensor:
    """mean + exp(log_scale)·eps, the draw of N(mean, exp(log_scale)²) from standard-normal noise
    ``eps``; without ``reparameterize`` the draw is detached from mean and log-scale."""
    if not reparameterize:
        mean, log_scale = mean.detach(), log_scale.detach()
    return mean + log_scale.exp() * eps


def categorical_log_prob(log_probs: Tensor, value: Tensor) -> Tensor:
    """log Cat(value; π) = Σ_i value_i log π_i for one-hot ``value`` and normalised ``log_probs``
    (``log_softmax`` of the logits), over the last dimension, in nats."""
    return (value * log_probs).sum(-1)
