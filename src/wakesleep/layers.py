"""Stochastic layers: small modules that map a parent tensor to a distribution over the next layer.

Every layer offers three views of the same conditional density:

- ``dist(parent)`` returns a ``torch.distributions`` object (``Independent`` with one event
  dimension), for users and for anything that wants ``batch_shape``/``event_shape``/``support``;
- ``log_prob(value, parent)`` and ``sample(parent)`` are fused forms of the same density for the
  training hot path, where building a ``Distribution`` object per call costs more than the
  arithmetic (``tests/test_layers.py`` checks that they agree with ``dist``).

Shapes follow ``torch.distributions``: parents are ``[*batch, in_features]``, values
``[*batch, out_features]``, log-densities ``[*batch]`` in nats.  Priors (top layers) have no
parent and take the batch shape instead.

Layer types: factorial Bernoulli (the sigmoid belief network layer of Neal 1992, used by
Hinton et al. 1995 and Bornschein & Bengio 2015), diagonal Gaussian (Kingma & Welling 2014;
Burda et al. 2016), factorial Poisson, one-hot categorical, and priors: Bernoulli, Gaussian,
categorical (a mixture prior together with a Gaussian layer fed the one-hot component) and an
angle on the circle.

Exponential-family view (for ALWS, Wenliang et al. 2020, Algorithm 1; ALGORITHMS.md §4 step 3):
the Bernoulli, Gaussian and Poisson layers also offer

- ``exponential_family(parent) -> (η [*batch, S], Ψ [*batch])``: natural parameters and
  log-normaliser, so that log p(x | parent) = η·S(x) − Ψ + log h(x);
- ``sufficient_statistics(x) -> S(x) [*batch, S]`` and ``log_base_measure(x) -> log h(x) [*batch]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal, OneHotCategorical, Poisson, VonMises

_LOG_2PI = math.log(2 * math.pi)


def mlp(in_features: int, hidden: Sequence[int], out_features: int, activation: type[nn.Module] = nn.Tanh) -> nn.Module:
    """A multilayer perceptron ``in -> hidden... -> out`` with ``activation`` between layers.

    With ``hidden == ()`` it is a single affine map (the sigmoid-belief-network case).
    """
    sizes = [in_features, *hidden, out_features]
    mods: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        mods.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            mods.append(activation())
    return mods[0] if len(mods) == 1 else nn.Sequential(*mods)


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

        warnings.warn(f"torch.compile is unavailable ({first_line(err)}); "
                      "using the eager kernels (same results, slower). Install a C++ compiler to use --compile.",
                      RuntimeWarning, stacklevel=2)
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


class StochasticLayer(nn.Module):
    """Base class: a conditional distribution p(value | parent) with a fixed event size.

    Attributes:
        in_features: size of the parent (0 for a prior).
        out_features: event size of the value.
        discrete: True when values are discrete (no reparameterised sampling).
    """

    in_features: int
    out_features: int
    discrete: bool = False

    def dist(self, parent: Tensor) -> Distribution:
        raise NotImplementedError

    def log_prob(self, value: Tensor, parent: Tensor) -> Tensor:
        return self.dist(parent).log_prob(value)

    def sample(self, parent: Tensor, reparameterize: bool = False) -> Tensor:
        d = self.dist(parent)
        return d.rsample() if reparameterize else d.sample()

    @property
    def binary(self) -> bool:
        """True when values lie in {0, 1} (discrete layers, except count layers such as Poisson)."""
        return self.discrete

    def mean(self, parent: Tensor) -> Tensor:
        """The conditional mean E[value | parent] (used to show samples as images)."""
        return self.dist(parent).mean

    def sample_and_log_prob(
        self, parent: Tensor, sample_shape: tuple[int, ...] = (), reparameterize: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Draw ``value [*sample_shape, *batch, out]`` and return it with its log-density ``[*sample_shape, *batch]``.

        The parent's network runs once, whatever ``sample_shape`` is (for K particles from one x).
        Without ``reparameterize`` the value is detached and the log-density still carries the
        gradient with respect to this layer's parameters (the score-function form RWS needs).
        """
        d = self.dist(parent)
        value = d.rsample(sample_shape) if reparameterize else d.sample(sample_shape)
        return value, d.log_prob(value)


class BernoulliLayer(StochasticLayer):
    """Factorial Bernoulli: p(v_i = 1 | parent) = σ(f(parent)_i), f an MLP (affine for an SBN).

    Args:
        in_features: parent size.
        out_features: number of binary units.
        hidden: hidden sizes of f; ``()`` gives the sigmoid belief network layer
            σ(W parent + b) (Neal 1992; Bornschein & Bengio 2015).
    """

    discrete = True

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = ()):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.net = mlp(in_features, hidden, out_features)

    def logits(self, parent: Tensor) -> Tensor:
        return self.net(parent)

    def dist(self, parent: Tensor) -> Distribution:
        return Independent(Bernoulli(logits=self.logits(parent), validate_args=False), 1)

    def log_prob(self, value: Tensor, parent: Tensor) -> Tensor:
        return bernoulli_log_prob(self.logits(parent), value)

    def sample(self, parent: Tensor, reparameterize: bool = False) -> Tensor:
        if reparameterize:
            raise ValueError("Bernoulli units cannot be reparameterised; use RWS or wake-sleep, not VAE/IWAE")
        return bernoulli_sample(torch.sigmoid(self.logits(parent)).detach())

    def mean(self, parent: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(parent))

    def exponential_family(self, parent: Tensor) -> tuple[Tensor, Tensor]:
        """η = logits [*batch, out], Ψ = Σ_i softplus(η_i) [*batch] (nats); S(x) = x, h = 1."""
        eta = self.logits(parent)
        return eta, F.softplus(eta).sum(-1)

    def sufficient_statistics(self, value: Tensor) -> Tensor:
        return value

    def log_base_measure(self, value: Tensor) -> Tensor:
        return value.new_zeros(value.shape[:-1])

    def sample_and_log_prob(self, parent, sample_shape=(), reparameterize=False):
        if reparameterize:
            raise ValueError("Bernoulli units cannot be reparameterised; use RWS or wake-sleep, not VAE/IWAE")
        logits = self.logits(parent)
        with torch.no_grad():
            value = bernoulli_sample(torch.sigmoid(logits), sample_shape)
        return value, bernoulli_log_prob(logits, value)


class GaussianLayer(StochasticLayer):
    """Diagonal Gaussian: N(μ(parent), diag σ²), μ an MLP.

    Args:
        in_features, out_features: parent and value sizes.
        hidden: hidden sizes of the MLP.
        scale: ``"amortised"`` (log σ is a second output head of the MLP, as in a VAE encoder or
            decoder) or ``"learned"`` (log σ is a free parameter vector, as in factor analysis).
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (), scale: str = "amortised"):
        super().__init__()
        if scale not in ("amortised", "learned"):
            raise ValueError(f"scale must be 'amortised' or 'learned', got {scale!r}")
        self.in_features, self.out_features, self.scale = in_features, out_features, scale
        self.net = mlp(in_features, hidden, out_features * (2 if scale == "amortised" else 1))
        if scale == "learned":
            self.log_scale = nn.Parameter(torch.zeros(out_features))

    def params(self, parent: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log-scale), each [*batch, out_features]."""
        h = self.net(parent)
        if self.scale == "amortised":
            mean, log_scale = h.chunk(2, dim=-1)
            return mean, log_scale
        return h, self.log_scale.expand_as(h)

    def dist(self, parent: Tensor) -> Distribution:
        mean, log_scale = self.params(parent)
        return Independent(Normal(mean, log_scale.exp(), validate_args=False), 1)

    def log_prob(self, value: Tensor, parent: Tensor) -> Tensor:
        mean, log_scale = self.params(parent)
        return normal_log_prob(mean, log_scale, value)

    def sample(self, parent: Tensor, reparameterize: bool = False) -> Tensor:
        mean, log_scale = self.params(parent)
        eps = torch.randn_like(mean)
        if not reparameterize:
            mean, log_scale = mean.detach(), log_scale.detach()
        return mean + log_scale.exp() * eps

    def mean(self, parent: Tensor) -> Tensor:
        return self.params(parent)[0]

    def exponential_family(self, parent: Tensor) -> tuple[Tensor, Tensor]:
        """η = (μ/σ², −1/(2σ²)) [*batch, 2·out], Ψ = Σ_i μ_i²/(2σ_i²) + ½ log 2πσ_i² [*batch]
        (nats); S(x) = (x, x²), h = 1."""
        mean, log_scale = self.params(parent)
        prec = torch.exp(-2.0 * log_scale)
        eta = torch.cat([mean * prec, -0.5 * prec], dim=-1)
        psi = (0.5 * mean * mean * prec + log_scale).sum(-1) + 0.5 * mean.shape[-1] * _LOG_2PI
        return eta, psi

    def sufficient_statistics(self, value: Tensor) -> Tensor:
        return torch.cat([value, value * value], dim=-1)

    def log_base_measure(self, value: Tensor) -> Tensor:
        return value.new_zeros(value.shape[:-1])

    def sample_and_log_prob(self, parent, sample_shape=(), reparameterize=False):
        mean, log_scale = self.params(parent)
        eps = torch.randn(*sample_shape, *mean.shape, dtype=mean.dtype, device=mean.device)
        if reparameterize:
            value = mean + log_scale.exp() * eps
        else:
            value = (mean.detach() + log_scale.detach().exp() * eps)
        return value, normal_log_prob(mean, log_scale, value)


class PoissonLayer(StochasticLayer):
    """Factorial Poisson counts: v_i ~ Poisson(exp(f(parent)_i)), f an MLP giving the log-rates.

    Args:
        in_features, out_features: parent and value sizes.
        hidden: hidden sizes of f.

    Values are non-negative integers (not binary); they cannot be reparameterised.
    """

    discrete = True
    binary = False

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = ()):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.net = mlp(in_features, hidden, out_features)

    def log_rate(self, parent: Tensor) -> Tensor:
        return self.net(parent)

    def dist(self, parent: Tensor) -> Distribution:
        return Independent(Poisson(self.log_rate(parent).exp(), validate_args=False), 1)

    def log_prob(self, value: Tensor, parent: Tensor) -> Tensor:
        eta, psi = self.exponential_family(parent)
        return (value * eta).sum(-1) - psi + self.log_base_measure(value)

    def sample(self, parent: Tensor, reparameterize: bool = False) -> Tensor:
        if reparameterize:
            raise ValueError("Poisson counts cannot be reparameterised; use RWS, wake-sleep or ALWS")
        return torch.poisson(self.log_rate(parent).detach().exp())

    def mean(self, parent: Tensor) -> Tensor:
        return self.log_rate(parent).exp()

    def sample_and_log_prob(self, parent, sample_shape=(), reparameterize=False):
        if reparameterize:
            raise ValueError("Poisson counts cannot be reparameterised; use RWS, wake-sleep or ALWS")
        eta, psi = self.exponential_family(parent)
        with torch.no_grad():
            value = torch.poisson(eta.exp().expand(*sample_shape, *eta.shape))
        return value, (value * eta).sum(-1) - psi + self.log_base_measure(value)

    def exponential_family(self, parent: Tensor) -> tuple[Tensor, Tensor]:
        """η = log rate [*batch, out], Ψ = Σ_i rate_i [*batch] (nats); S(x) = x,
        log h(x) = −Σ_i log x_i!."""
        eta = self.log_rate(parent)
        return eta, eta.exp().sum(-1)

    def sufficient_statistics(self, value: Tensor) -> Tensor:
        return value

    def log_base_measure(self, value: Tensor) -> Tensor:
        return -torch.lgamma(value + 1.0).sum(-1)


class CategoricalLayer(StochasticLayer):
    """One-hot categorical: v ~ OneHotCategorical(softmax(f(parent))), f an MLP (e.g. the
    proposal q(c | y) for a mixture component c).

    Args:
        in_features: parent size.
        num_classes: number of categories (= ``out_features``, the one-hot width).
        hidden: hidden sizes of f.
    """

    discrete = True

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = ()):
        super().__init__()
        self.in_features, self.out_features = in_features, num_classes
        self.net = mlp(in_features, hidden, num_classes)

    def dist(self, parent: Tensor) -> Distribution:
        return OneHotCategorical(logits=self.net(parent), validate_args=False)

    def log_prob(self, value: Tensor, parent: Tensor) -> Tensor:
        return (value * torch.log_softmax(self.net(parent), -1)).sum(-1)

    def sample(self, parent: Tensor, reparameterize: bool = False) -> Tensor:
        if reparameterize:
            raise ValueError("categorical units cannot be reparameterised; use RWS, wake-sleep or ALWS")
        return self.dist(parent.detach()).sample()

    def sample_and_log_prob(self, parent, sample_shape=(), reparameterize=False):
        if reparameterize:
            raise ValueError("categorical units cannot be reparameterised; use RWS, wake-sleep or ALWS")
        logp = torch.log_softmax(self.net(parent), -1)
        with torch.no_grad():
            value = OneHotCategorical(logits=logp, validate_args=False).sample(sample_shape)
        return value, (value * logp).sum(-1)


class Prior(StochasticLayer):
    """A top layer: a distribution with no parent.  Methods take ``batch_shape`` in place of the parent."""

    in_features = 0


class BernoulliPrior(Prior):
    """Factorial Bernoulli prior with learned logits (the top layer of an SBN)."""

    discrete = True

    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = out_features
        self.logits = nn.Parameter(torch.zeros(out_features))

    def dist(self, batch_shape: tuple[int, ...] = ()) -> Distribution:
        return Independent(Bernoulli(logits=self.logits.expand(*batch_shape, -1), validate_args=False), 1)

    def log_prob(self, value: Tensor, batch_shape: tuple[int, ...] = ()) -> Tensor:
        return bernoulli_log_prob(self.logits, value)

    def sample(self, batch_shape: tuple[int, ...] = (), reparameterize: bool = False) -> Tensor:
        if reparameterize:
            raise ValueError("Bernoulli units cannot be reparameterised; use RWS or wake-sleep, not VAE/IWAE")
        return bernoulli_sample(torch.sigmoid(self.logits).detach(), batch_shape)

    def mean(self, batch_shape: tuple[int, ...] = ()) -> Tensor:
        return torch.sigmoid(self.logits).expand(*batch_shape, -1)


class GaussianPrior(Prior):
    """Diagonal Gaussian prior N(μ, diag σ²); the standard normal unless ``learn=True``."""

    def __init__(self, out_features: int, learn: bool = False):
        super().__init__()
        self.out_features = out_features
        loc, log_scale = torch.zeros(out_features), torch.zeros(out_features)
        if learn:
            self.loc, self.log_scale = nn.Parameter(loc), nn.Parameter(log_scale)
        else:
            self.register_buffer("loc", loc)
            self.register_buffer("log_scale", log_scale)

    def dist(self, batch_shape: tuple[int, ...] = ()) -> Distribution:
        return Independent(Normal(self.loc.expand(*batch_shape, -1), self.log_scale.exp().expand(*batch_shape, -1)), 1)

    def log_prob(self, value: Tensor, batch_shape: tuple[int, ...] = ()) -> Tensor:
        return normal_log_prob(self.loc, self.log_scale, value)

    def sample(self, batch_shape: tuple[int, ...] = (), reparameterize: bool = False) -> Tensor:
        eps = torch.randn(*batch_shape, self.out_features, device=self.loc.device, dtype=self.loc.dtype)
        loc, log_scale = (self.loc, self.log_scale) if reparameterize else (self.loc.detach(), self.log_scale.detach())
        return loc + log_scale.exp() * eps

    def mean(self, batch_shape: tuple[int, ...] = ()) -> Tensor:
        return self.loc.expand(*batch_shape, -1)


class CategoricalPrior(Prior):
    """One-hot categorical prior c ~ Cat(π), π = softmax(logits) with learned logits (uniform
    at initialisation).  With a ``GaussianLayer(num_classes, d)`` below it (mean and log-scale
    affine in the one-hot c, i.e. one (μ_c, σ_c) per component) it is a Gaussian mixture prior
    with learned weights, means and scales (the hierarchical model of ALWS §7.6).

    Args:
        num_classes: number of categories (the one-hot width).
        learn: learn the logits (else a uniform buffer).
    """

    discrete = True

    def __init__(self, num_classes: int, learn: bool = True):
        super().__init__()
        self.out_features = num_classes
        logits = torch.zeros(num_classes)
        if learn:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)

    @property
    def probs(self) -> Tensor:
        """π = softmax(logits) [num_classes]."""
        return torch.softmax(self.logits, -1)

    def dist(self, batch_shape: tuple[int, ...] = ()) -> Distribution:
        return OneHotCategorical(logits=self.logits.expand(*batch_shape, -1), validate_args=False)

    def log_prob(self, value: Tensor, batch_shape: tuple[int, ...] = ()) -> Tensor:
        return (value * torch.log_softmax(self.logits, -1)).sum(-1)

    def sample(self, batch_shape: tuple[int, ...] = (), reparameterize: bool = False) -> Tensor:
        if reparameterize:
            raise ValueError("categorical units cannot be reparameterised; use RWS, wake-sleep or ALWS")
        return OneHotCategorical(logits=self.logits.detach(), validate_args=False).sample(batch_shape)

    def mean(self, batch_shape: tuple[int, ...] = ()) -> Tensor:
        return self.probs.expand(*batch_shape, -1)


class CirclePrior(Prior):
    """An angle on the unit circle, z = (sin a, cos a) [*, 2], with a von Mises distribution in
    natural parameters ν ∈ R²:  log p(z) = ν·z − log(2π I₀(‖ν‖)), nats, density with respect to
    arc length (so a = atan2(z₀, z₁) has the von Mises density with mean direction
    atan2(ν₀, ν₁) and concentration κ = ‖ν‖).  ν = 0 is the uniform angle a ~ U[−π, π) of the
    ALWS paper's non-Euclidean latent (Wenliang et al. 2020, §5.2; ALGORITHMS.md §7.2).

    Args:
        learn: learn ν (starting at 0, the uniform angle); else ν stays 0.

    Samples are not reparameterisable (use ALWS, RWS or wake-sleep).
    """

    def __init__(self, learn: bool = False):
        super().__init__()
        self.out_features = 2
        nu = torch.zeros(2)
        if learn:
            self.natural = nn.Parameter(nu)
        else:
            self.register_buffer("natural", nu)

    def dist(self, batch_shape: tuple[int, ...] = ()) -> Distribution:
        raise NotImplementedError(
            "CirclePrior has no torch.distributions object on z; use angle_dist() for the angle a"
        )

    def _kappa(self) -> Tensor:
        # sqrt(κ² + tiny): finite gradient at ν = 0, where ∇ log I₀(κ) = 0.
        return torch.sqrt(self.natural.square().sum() + 1e-30)

    def log_prob(self, value: Tensor, batch_shape: tuple[int, ...] = ()) -> Tensor:
        kappa = self._kappa()
        log_norm = math.log(2 * math.pi) + torch.log(torch.special.i0e(kappa)) + kappa
        return (value * self.natural).sum(-1) - log_norm

    def angle_dist(self) -> Distribution:
        """The von Mises distribution of the angle a (no gradient)."""
        nu = self.natural.detach()
        return VonMises(torch.atan2(nu[0], nu[1]), self._kappa().detach().clamp_min(1e-8), validate_args=False)

    def sample(self, batch_shape: tuple[int, ...] = (), reparameterize: bool = False) -> Tensor:
        if reparameterize:
            raise ValueError("CirclePrior samples cannot be reparameterised; use ALWS, RWS or wake-sleep")
        a = self.angle_dist().sample(batch_shape)
        return torch.stack([torch.sin(a), torch.cos(a)], -1)

    def mean(self, batch_shape: tuple[int, ...] = ()) -> Tensor:
        """E[z] = (I₁(κ)/I₀(κ)) ν/κ."""
        kappa = self._kappa()
        ratio = torch.special.i1e(kappa) / torch.special.i0e(kappa)
        return (ratio * self.natural / kappa).expand(*batch_shape, -1)
