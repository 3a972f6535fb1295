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


@torch.compiler.disable  # a loop over blocks of units, with compiled kernels of its own; not traced into
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
        (:class:`_NADELogits`; with :func:`use_compiled_kernels` on, each block's forward and
        backward as one ``torch.compile`` kernel, :class:`_NADELogitsCompiled`).
    """
    dtype = torch.promote_types(c.dtype, weight.dtype)
    value = value.to(dtype)
    if _compiled is not None and value.dim() <= 3 and c.dim() <= 3:
        kernels = _nade_kernels(value, c, weight, readout)
        if kernels is not None:
            return _NADELogitsCompiled.apply(value, c, weight, readout, kernels)
    return _NADELogits.apply(value, c, weight, readout)


#: Units per block of the compiled NADE kernels: the block's running sums are a masked [m, m]
#: product (m·D·H multiply-adds per particle at matrix-product rate) instead of a cumulative sum
#: pass; 8 was fastest of 4, 8, 16 and 20 on both 784-200 and 200-200 (docs/benchmarks.md).
_NADE_COMPILED_BLOCK = 8


def _nade_block_forward(v: Tensor, w: Tensor, running: Tensor, c: Tensor, readout: Tensor) -> tuple[Tensor, Tensor]:
    """One block of m units, as one kernel: (s [P, N, m], the running sum after the block [Pv, N, H]).

    v [Pv, N, m], w = W_{:, block} [H, m], running = Σ_{j<i0} W_:j v_j [Pv, N, H], c [Pc, N, H],
    readout = V_block [m, H]; Pv and Pc are 1 or P (particles broadcast).
    """
    m = v.shape[-1]
    mask = torch.ones(m, m, dtype=v.dtype, device=v.device).tril(-1)  # [t, j]: j < t, exclusive
    before = torch.matmul(mask * v.unsqueeze(-2), w.T) + running.unsqueeze(-2)  # [Pv, N, m, H]
    s = (torch.sigmoid(before + c.unsqueeze(-2)) * readout).sum(-1)
    return s, running + v @ w.T


def _nade_block_backward(
    v: Tensor, w: Tensor, running: Tensor, c: Tensor, readout: Tensor, g: Tensor, suffix: Tensor, need_dv: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
    """The block's backward from g = ∂/∂s [P, N, m] and suffix = Σ_{i ≥ i1} ∂/∂a_i [Pv, N, H]:
    (∂/∂V_block [m, H], Σ_block ∂/∂a [P, N, H], ∂/∂W_block [H, m], ∂/∂v [Pv, N, m], the suffix
    for the block before); ∂/∂v is None unless ``need_dv``.  Recomputes the block's hidden units
    instead of keeping them."""
    m = v.shape[-1]
    mask = torch.ones(m, m, dtype=v.dtype, device=v.device).tril(-1)
    h = torch.sigmoid(torch.matmul(mask * v.unsqueeze(-2), w.T) + running.unsqueeze(-2) + c.unsqueeze(-2))
    gv = g.unsqueeze(-1)
    d_readout = (gv * h).sum((0, 1))
    d_a = h * (1 - h) * (gv * readout)  # [P, N, m, H]
    d_av = d_a.sum(0, keepdim=True) if v.shape[0] == 1 and d_a.shape[0] != 1 else d_a  # to v's shape
    # after_j = Σ_{i > j} ∂/∂a_i: within the block by the strictly upper mask, then the later blocks
    after = torch.einsum("ji,pnih->pnjh", mask.T, d_av) + suffix.unsqueeze(-2)
    d_w = torch.einsum("pnj,pnjh->hj", v, after)
    d_v = (after * w.T).sum(-1) if need_dv else None
    return d_readout, d_a.sum(-2), d_w, d_v, suffix + d_av.sum(-2)


_nade_compiled: tuple | None = None
_nade_failed = False


def _nade_kernels(value: Tensor, c: Tensor, weight: Tensor, readout: Tensor) -> tuple | None:
    """The compiled (forward, backward) block kernels, or None if they cannot be compiled here.

    Both are compiled on first use, on the first block of the caller's tensors, inside a try: a
    missing compiler or a codegen error warns once and leaves NADE on the eager kernels for the
    rest of the process.  ``dynamic=None``: static kernels for the first shapes (the training
    step's; 15% faster than dynamic ones there), and a size that changes later (evaluation's
    particles, a short last block) is compiled once as a dynamic dimension, so that new shapes
    do not exhaust Dynamo's recompile limit.
    """
    global _nade_compiled, _nade_failed
    if _nade_compiled is None and not _nade_failed:
        fwd = torch.compile(_nade_block_forward, dynamic=None)
        bwd = torch.compile(_nade_block_backward, dynamic=None)
        try:
            with torch.no_grad():
                v, cc = _as_three(value.detach(), c.detach())[:2]
                blocks = list(_nade_compiled_blocks(v, weight.detach(), readout.detach()))[:1]
                zeros = v.new_zeros(v.shape[0], v.shape[1], cc.shape[-1])
                s, _ = fwd(blocks[0][0], blocks[0][1], zeros, cc, blocks[0][2])
                bwd(blocks[0][0], blocks[0][1], zeros, cc, blocks[0][2], torch.zeros_like(s), zeros.clone(), False)
        except Exception as err:  # Inductor raises many types (missing compiler, codegen errors)
            import warnings

            warnings.warn(
                f"torch.compile of the NADE kernels is unavailable ({first_line(err)}); using the eager kernels (same results, slower)",
                RuntimeWarning,
                stacklevel=3,
            )
            _nade_failed = True
            return None
        _nade_compiled = (fwd, bwd)
    return _nade_compiled


def _nade_compiled_blocks(v: Tensor, weight: Tensor, readout: Tensor):
    """(i0, i1, v_block [Pv, N, m], W_block [H, m], V_block [m, H]) per block of
    :data:`_NADE_COMPILED_BLOCK` units, each a fresh contiguous tensor without grad: the kernels
    then see neither storage offsets nor requires_grad flags, either of which would recompile them."""
    m = _NADE_COMPILED_BLOCK
    for i0 in range(0, v.shape[-1], m):
        i1 = min(v.shape[-1], i0 + m)
        yield v[..., i0:i1].contiguous(), weight[:, i0:i1].contiguous(), readout[i0:i1].clone(), i0, i1


def _as_three(value: Tensor, c: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...], tuple[int, ...]]:
    """(value [Pv, N, D], c [Pc, N, H] (contiguous), value's and c's shapes at rank 3): leading
    shapes of rank ≤ 2 brought to (particles, batch), so that the kernels see one rank whatever
    the caller's."""
    v3 = (1,) * (3 - value.dim()) + tuple(value.shape)
    c3 = (1,) * (3 - c.dim()) + tuple(c.shape)
    n = max(v3[1], c3[1])
    # c as a fresh tensor ([Pc, N, H], small beside the [P, N, m, H] work): a view would have the
    # kernels guard on its base's strides, and recompile for each caller's
    return value.reshape(v3).expand(-1, n, -1), c.reshape(c3).expand(-1, n, -1).contiguous(), v3, c3


class _NADELogitsCompiled(torch.autograd.Function):
    """:class:`_NADELogits` with each block's forward and backward one ``torch.compile`` kernel
    (:func:`_nade_block_forward`, :func:`_nade_block_backward`): the sigmoid, the read-out and
    their gradients in one pass over the block's [P, N, m, H] pre-activations, which are never
    written out; the same equations, equal to the eager node's to float rounding
    (``tests/test_fused.py``).  :func:`nade_logits` takes this node only once :func:`_nade_kernels`
    has compiled both kernels; otherwise :class:`_NADELogits`."""

    @staticmethod
    def forward(ctx, value: Tensor, c: Tensor, weight: Tensor, readout: Tensor, kernels) -> Tensor:
        lead = torch.broadcast_shapes(value.shape[:-1], c.shape[:-1])
        v, cc = _as_three(value.detach(), c.detach())[:2]
        d, h_units = v.shape[-1], cc.shape[-1]
        out = cc.new_empty(max(v.shape[0], cc.shape[0]), v.shape[1], d)
        running = v.new_zeros(v.shape[0], v.shape[1], h_units)  # Σ_{j<i0} W_:j v_j
        starts = []
        for vb, wb, rb, i0, i1 in _nade_compiled_blocks(v, weight.detach(), readout.detach()):
            starts.append(running)
            out[..., i0:i1], running = kernels[0](vb, wb, running, cc, rb)
        ctx.kernels, ctx.starts = kernels, starts  # a list, not a stack: views of a stack carry storage offsets
        ctx.save_for_backward(value, c, weight, readout)
        return out.reshape(*lead, d)

    @staticmethod
    def backward(ctx, grad: Tensor):
        value, c, weight, readout = ctx.saved_tensors
        starts = ctx.starts
        v, cc, v3, c3 = _as_three(value.detach(), c.detach())
        d, h_units = v.shape[-1], cc.shape[-1]
        g = grad.detach().reshape(-1, v.shape[1], d)
        need_dv = ctx.needs_input_grad[0]
        d_c = g.new_zeros(g.shape[0], v.shape[1], h_units)
        d_weight, d_readout = torch.zeros_like(weight), torch.zeros_like(readout)
        d_v = torch.zeros_like(v) if need_dv else None
        suffix = v.new_zeros(v.shape[0], v.shape[1], h_units)  # Σ_{i ≥ i1} ∂/∂a_i, at v's shape
        blocks = list(_nade_compiled_blocks(v, weight.detach(), readout.detach()))
        for (vb, wb, rb, i0, i1), running in zip(reversed(blocks), reversed(starts)):
            blk = ctx.kernels[1](vb, wb, running, cc, rb, g[..., i0:i1].contiguous(), suffix, need_dv)
            d_readout[i0:i1], dc, d_weight[:, i0:i1], dv, suffix = blk
            d_c += dc
            if need_dv:
                d_v[..., i0:i1] = dv
        d_value = d_v.sum_to_size(v3).reshape(value.shape) if need_dv else None
        return d_value, d_c.sum_to_size(c3).reshape(c.shape), d_weight, d_readout, None
