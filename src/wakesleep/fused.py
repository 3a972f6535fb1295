"""Fused log-densities behind the stochastic layers, and the process-wide compile switch.

The training hot path evaluates the same few densities over [K, B, D] tensors at every step;
here they are written once, in the forms that are fastest there:

- :func:`bernoulli_log_prob`: Σ x·l − softplus(l) as one autograd node with a closed-form backward
  (:class:`_BernoulliLogProb`), optionally run as ``torch.compile`` kernels;
- :func:`normal_log_prob` and :func:`normal_sample`: the diagonal Gaussian's log-density and draw;
- :func:`categorical_log_prob`: the one-hot categorical's log-density from normalised log-probabilities;
- :func:`bernoulli_sample`: binary draws by ``uniform < p``;
- :func:`nade_logits`: NADE's read-out of every unit given the value, in blocks of units with a
  closed-form backward (:class:`_NADELogits`), so that [*, D, H] is never held whole;
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


#: At most this many factors 1 + e^{-|l|} (each in (1, 2]) are multiplied before a log: 2^120 is
#: below float32's largest number (2^128), so the running product cannot overflow.
_MAX_FACTORS = 120


def _lanes(d: int) -> tuple[int, int] | None:
    """(factors, lanes) with factors · lanes = d and factors ≤ ``_MAX_FACTORS``, the fewest lanes,
    a multiple of 8 (one AVX2 vector) where d allows; None when d has no such split."""
    splits = [(d // m, m) for m in range(1, d + 1) if d % m == 0 and d // m <= _MAX_FACTORS]
    if not splits:
        return None
    return next((s for s in splits if s[1] % 8 == 0), splits[0])


def _log_prob_kernel(logits: Tensor, value: Tensor) -> Tensor:
    # softplus(l) = max(l, 0) + log(1 + e^{-|l|}), written out so that Inductor emits one
    # vectorised loop (its softplus/log1p lowering is no faster than ATen's).  Σ_i log(1 + e_i) is
    # taken as Σ_lanes log Π_i (1 + e_i): per unit one exp and a multiply instead of an exp and a
    # log, 2.4x faster compiled on [85, 100, 784] (docs/benchmarks.md).  Rounding: each product of
    # n factors is off by at most n·eps/2 relatively, so the sum by at most d·eps/2 nats (eps of
    # the dtype), as the sum of d logs is; for e below epsilon, 1 + e rounds to 1, an error under
    # 6e-8 nats per unit in float32, as before.  Half precision would overflow: per-unit logs there.
    d = int(logits.shape[-1])  # static under torch.compile: one kernel per width d
    split = _lanes(d) if logits.dtype in (torch.float32, torch.float64) else None
    one_plus_e = 1 + torch.exp(-logits.abs())
    linear = (value * logits - logits.clamp_min(0)).sum(-1)
    if split is None:
        return linear - torch.log(one_plus_e).sum(-1)
    return linear - torch.log(one_plus_e.unflatten(-1, split).prod(-2)).sum(-1)


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


#: Numbers per block of NADE's hidden pre-activations [*, m, H] (a few MB: the block stays in cache).
_NADE_BLOCK = 2**20


def _nade_blocks(d: int, per_unit: int) -> list[tuple[int, int]]:
    """Blocks [i0, i1) of the d units with about ``_NADE_BLOCK`` numbers each (``per_unit`` per unit)."""
    m = max(1, min(d, _NADE_BLOCK // max(per_unit, 1)))
    return [(i0, min(d, i0 + m)) for i0 in range(0, d, m)]


def _nade_block(value: Tensor, c: Tensor, weight: Tensor, running: Tensor, i0: int, i1: int) -> tuple[Tensor, Tensor]:
    """For units i0..i1−1: (h = σ(c + Σ_{j<i} W_:j v_j) [*, m, H], the block's own Σ_j W_:j v_j [*vb, m, H] inclusive)."""
    step = value[..., i0:i1, None] * weight[:, i0:i1].T  # [*vb, m, H]: unit j's term W_:j v_j
    incl = torch.cumsum(step, -2)
    # exclusive by a shift (not incl − step), so that h_i does not depend on v_i even by rounding
    before = F.pad(incl[..., :-1, :], (0, 0, 1, 0)) + running.unsqueeze(-2)
    return torch.sigmoid(before + c.unsqueeze(-2)), incl


class _NADELogits(torch.autograd.Function):
    """s_i = V_i · σ(c + Σ_{j<i} W_:j v_j) for every unit i, block by block of units.

    Autograd of the plain expression keeps the [*, D, H] pre-activations and hidden units (for a
    784-pixel NADE over K·B = 500 particles and H = 200, 300 MB each) and spends most of its time
    allocating them; here the forward keeps only the running sums at block starts, and the backward
    recomputes each block: ∂/∂V_i = Σ g_i h_i, ∂/∂a_i = g_i V_i h_i (1 − h_i) (a_i the
    pre-activation), ∂/∂c = Σ_i ∂/∂a_i, ∂/∂W_:j = Σ v_j Σ_{i>j} ∂/∂a_i, ∂/∂v_j = W_:j · Σ_{i>j} ∂/∂a_i.
    """

    @staticmethod
    def forward(ctx, value: Tensor, c: Tensor, weight: Tensor, readout: Tensor) -> Tensor:
        lead = torch.broadcast_shapes(value.shape[:-1], c.shape[:-1])
        d, h_units = value.shape[-1], c.shape[-1]
        blocks = _nade_blocks(d, math.prod(lead) * h_units)
        out = c.new_empty(*lead, d)
        running = value.new_zeros(*value.shape[:-1], h_units)  # Σ_{j<i0} W_:j v_j
        starts = []
        for i0, i1 in blocks:
            starts.append(running)
            h, incl = _nade_block(value, c, weight, running, i0, i1)
            out[..., i0:i1] = torch.linalg.vecdot(h, readout[i0:i1])
            running = running + incl[..., -1, :]
        ctx.blocks = blocks
        ctx.save_for_backward(value, c, weight, readout, torch.stack(starts))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        value, c, weight, readout, starts = ctx.saved_tensors
        lead = grad.shape[:-1]
        h_units = c.shape[-1]
        d_c = grad.new_zeros(*lead, h_units)
        d_weight, d_readout = torch.zeros_like(weight), torch.zeros_like(readout)
        d_value = torch.zeros_like(value) if ctx.needs_input_grad[0] else None
        suffix = value.new_zeros(*value.shape[:-1], h_units)  # Σ_{i ≥ i1} ∂/∂a_i, summed to the value's shape
        for (i0, i1), running in zip(reversed(ctx.blocks), reversed(starts)):
            m = i1 - i0
            h, _ = _nade_block(value, c, weight, running, i0, i1)
            g = grad[..., i0:i1]  # [*, m]
            d_readout[i0:i1] = torch.einsum("nj,njh->jh", g.reshape(-1, m), h.reshape(-1, m, h_units))
            d_a = h.mul_(1 - h).mul_(g.unsqueeze(-1) * readout[i0:i1])  # [*, m, H], in h's storage
            d_c += d_a.sum(-2)
            d_a = d_a.sum_to_size(*value.shape[:-1], m, h_units)
            rev = torch.cumsum(d_a.flip(-2), -2).flip(-2)  # Σ_{i ≥ j} within the block
            after = F.pad(rev[..., 1:, :], (0, 0, 0, 1)) + suffix.unsqueeze(-2)  # Σ_{i > j}, all blocks
            d_weight[:, i0:i1] = torch.einsum("nj,njh->hj", value[..., i0:i1].reshape(-1, m), after.reshape(-1, m, h_units))
            if d_value is not None:
                d_value[..., i0:i1] = torch.linalg.vecdot(after, weight[:, i0:i1].T)
            suffix = suffix + rev[..., 0, :]
        return d_value, d_c.sum_to_size(c.shape), d_weight, d_readout


def nade_logits(value: Tensor, c: Tensor, weight: Tensor, readout: Tensor) -> Tensor:
    """NADE's read-out s_i = V_i · σ(c + Σ_{j<i} W_:j v_j) for every unit i given the whole value
    (Larochelle & Murray 2011; the logits less the output bias b), in nats' log-odds.

    Args:
        value: v [*vb, D].
        c: the hidden units' bias [*cb, H] (broadcast against ``value``'s leading dimensions).
        weight: W [H, D].
        readout: V [D, H].

    Returns:
        s [*broadcast(vb, cb), D], differentiable in all four inputs, computed in blocks of units
        (:class:`_NADELogits`).
    """
    dtype = torch.promote_types(c.dtype, weight.dtype)
    return _NADELogits.apply(value.to(dtype), c, weight, readout)
