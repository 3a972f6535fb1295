"""Stochastic layers: small modules that map a parent tensor to a distribution over the next layer.

Every layer offers three views of the same conditional density:

- ``dist(parent)`` returns a ``torch.distributions`` object (``Independent`` with one event
  dimension), for users and for anything that wants ``batch_shape``/``event_shape``/``support``;
- ``log_prob(value, parent)`` and ``sample(parent)`` are fused forms of the same density
  (:mod:`wakesleep.fused`, each written once there) for the training hot path, where building
  a ``Distribution`` object per call costs more than the arithmetic (``tests/test_layers.py`` checks that they agree with ``dist``).

Shapes follow ``torch.distributions``: parents are ``[*batch, in_features]``, values
``[*batch, out_features]``, log-densities ``[*batch]`` in nats.  Priors (top layers) have no
parent and take the batch shape instead.

Layer types: factorial Bernoulli (the sigmoid belief network layer of Neal 1992, used by
Hinton et al. 1995 and Bornschein & Bengio 2015), autoregressive Bernoulli (NADE, Larochelle &
Murray 2011; fDARN, Gregor et al. 2014: the RWS paper's NADE and AR-SBN layers), diagonal
Gaussian (Kingma & Welling 2014; Burda et al. 2016), factorial Poisson, one-hot categorical, and
priors: Bernoulli, Gaussian, categorical (a mixture prior together with a Gaussian layer fed the
one-hot component) and an angle on the circle.

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

from wakesleep.fused import _LOG_2PI, bernoulli_log_prob, bernoulli_sample, categorical_log_prob, nade_logits, normal_log_prob, normal_sample

# isort: off
# isort: on


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


def register_learnable(module: nn.Module, name: str, value: Tensor, learn: bool) -> None:
    """Register ``value`` on ``module`` as the parameter ``name`` if ``learn``, else as a buffer
    (saved in the state dict, moved with the module, never trained)."""
    if learn:
        setattr(module, name, nn.Parameter(value))
    else:
        module.register_buffer(name, value)


def refuse_reparameterisation(reparameterize: bool, units: str, use: str) -> None:
    """Raise ``ValueError`` if ``reparameterize`` is asked of discrete ``units``, naming the estimators to ``use``."""
    if reparameterize:
        raise ValueError(f"{units} cannot be reparameterised; use {use}")


_BERNOULLI = ("Bernoulli units", "RWS or wake-sleep, not VAE/IWAE")
_CATEGORICAL = ("categorical units", "RWS, wake-sleep or ALWS")
_POISSON = ("Poisson counts", "RWS, wake-sleep or ALWS")


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

    def sample_and_log_prob(self, parent: Tensor, sample_shape: tuple[int, ...] = (), reparameterize: bool = False) -> tuple[Tensor, Tensor]:
        """Draw ``value [*sample_shape, *batch, out]`` and return it with its log-density ``[*sample_shape, *batch]``.

        The parent's network runs once, whatever ``sample_shape`` is (for K particles from one x).
        Without ``reparameterize`` the value is detached and the log-density still carries the
        gradient with respect to this layer's parameters (the score-function form RWS needs).
        """
        d = self.dist(parent)
        value = d.rsample(sample_shape) if reparameterize else d.sample(sample_shape)
        return value, d.log_prob(value)


class NetworkLayer(StochasticLayer):
    """A conditional layer whose distribution's parameters are a network of the parent, ``net``:
    an MLP ``in_features -> hidden... -> outputs`` (one affine map without hidden units).

    Args:
        in_features: parent size.
        out_features: event size of the value.
        hidden: hidden sizes of the network.
        outputs: the network's output width (default ``out_features``).
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (), outputs: int | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.net = mlp(in_features, hidden, out_features if outputs is None else outputs)

    @property
    def affine(self) -> bool:
        """True when the layer's network (``net``) is one affine map from the parent (no hidden units)."""
        return isinstance(self.net, nn.Linear)

    def output_affine(self) -> tuple[Tensor, Tensor]:
        """``(weight [P, H], bias [P])``: the parameters of the last affine map of the layer's network
        (the whole map parent -> outputs when :attr:`affine`), the parameters themselves, so that
        in-place edits change the layer.  Its P outputs are the layer's natural parameters (logits,
        log-rates) or, for a Gaussian, the means then (with an amortised scale) the log-scales.
        Exact references read and set weights through this, not through the network's modules.
        """
        last = [m for m in self.net.modules() if isinstance(m, nn.Linear)][-1]
        return last.weight, last.bias


class BernoulliLayer(NetworkLayer):
    """Factorial Bernoulli: p(v_i = 1 | parent) = σ(f(parent)_i), f an MLP (affine for an SBN).

    Args:
        in_features: parent size.
        out_features: number of binary units.
        hidden: hidden sizes of f; ``()`` gives the sigmoid belief network layer
            σ(W parent + b) (Neal 1992; Bornschein & Bengio 2015).
    """

    discrete = True

    def logits(self, parent: Tensor) -> Tensor:
        return self.net(parent)

    def dist(self, parent: Tensor) -> Distribution:
        return Independent(Bernoulli(logits=self.logits(parent), validate_args=False), 1)

    def log_prob(self, value: Tensor, parent: Tensor) -> Tensor:
        return bernoulli_log_prob(self.logits(parent), value)

    def sample(self, parent: Tensor, reparameterize: bool = False) -> Tensor:
        refuse_reparameterisation(reparameterize, *_BERNOULLI)
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
        refuse_reparameterisation(reparameterize, *_BERNOULLI)
        logits = self.logits(parent)
        with torch.no_grad():
            value = bernoulli_sample(torch.sigmoid(logits), sample_shape)
        return value, bernoulli_log_prob(logits, value)


class AutoregressiveBernoulliLayer(NetworkLayer):
    """Binary units in a fixed order, each conditioned on the units before it and on the parent:

        p(v | parent) = Π_i σ(l_i),   l_i = l_i(v_<i, parent),

    with the running-sum form both subclasses share: a state r_i [*batch, M] that starts at a
    function of the parent, r_0 = ``initial(net(parent))``, and grows by one column per unit,
    r_{i+1} = r_i + U[:, i] v_i (U = :meth:`running_weight`, [M, out]), and a read-out
    l_i = ``readout(r_i, i)``.  Sampling follows that recursion unit by unit (a loop over the
    ``out_features`` units, each step vectorised over every leading dimension: particles, batch);
    :meth:`log_prob` is one parallel pass over all units given the value (teacher forcing,
    :meth:`conditional_logits`), so training costs no loop.

    Shapes follow the other layers: parent ``[*batch, in_features]``, value ``[*batch, out_features]``
    (the two broadcast against each other, e.g. data x [B, D] against latents [K, B, d]), log-densities
    ``[*batch]`` in nats.  Values are binary and cannot be reparameterised; there is no
    ``torch.distributions`` object and no exponential-family view (the units are not conditionally
    independent given the parent).
    """

    discrete = True

    def conditional_logits(self, value: Tensor, parent: Tensor) -> Tensor:
        """l_i = logit p(v_i = 1 | v_<i, parent) for every unit i, given the whole value: ``[*batch, out]``."""
        raise NotImplementedError

    def running_weight(self) -> Tensor:
        """U [M, out]: column i is what unit i, when on, adds to the running state."""
        raise NotImplementedError

    def initial(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """(r_0 [*batch, M], the parent's bias on the logits [*batch, out]) from the parent's network output ``cond``."""
        raise NotImplementedError

    def readout(self, running: Tensor, bias: Tensor, i: int) -> Tensor:
        """l_i [*batch] from the running state r_i [*batch, M] and the logits' bias [*batch, out]."""
        raise NotImplementedError

    def dist(self, parent: Tensor) -> Distribution:
        raise NotImplementedError(f"{type(self).__name__} is autoregressive and has no torch.distributions object; use log_prob and sample")

    def log_prob(self, value: Tensor, parent: Tensor) -> Tensor:
        return bernoulli_log_prob(self.conditional_logits(value, parent), value)

    # A loop of out_features small steps: left to eager mode when the estimator is compiled
    # (``--compile``), where tracing would unroll it into a graph of thousands of nodes.
    @torch.compiler.disable
    def _draw(self, cond: Tensor, sample_shape: tuple[int, ...], keep_logits: bool = False) -> tuple[Tensor, Tensor | None]:
        """Ancestral draw unit by unit from the parent's network output ``cond`` (no gradient).

        Returns:
            (value [*sample_shape, *batch, out], the logits l_i met on the way [same shape] if
            ``keep_logits``, else None).
        """
        with torch.no_grad():
            running, bias = self.initial(cond.detach())
            shape = (*sample_shape, *bias.shape)
            running = running.expand(*sample_shape, *running.shape).clone()  # a copy per particle, updated in place
            u_rows = self.running_weight().detach().T.contiguous()  # row i: what unit i adds
            value = bias.new_empty(shape)
            logits = bias.new_empty(shape) if keep_logits else None
            # v_i = [u_i < σ(l_i)] = [logit(u_i) < l_i], u_i uniform: thresholds drawn at once, no sigmoid per step
            threshold = torch.logit(torch.rand(shape, dtype=bias.dtype, device=bias.device))
            for i in range(self.out_features):
                logit = self.readout(running, bias, i)
                if keep_logits:
                    logits[..., i] = logit
                v = (logit > threshold[..., i]).to(bias.dtype)
                value[..., i] = v
                running.addcmul_(v.unsqueeze(-1), u_rows[i])
        return value, logits

    def sample(self, parent: Tensor, reparameterize: bool = False) -> Tensor:
        refuse_reparameterisation(reparameterize, *_BERNOULLI)
        return self._draw(self.net(parent), ())[0]

    def mean(self, parent: Tensor) -> Tensor:
        """p(v_i = 1 | v_<i, parent) along one ancestral draw of v, ``[*batch, out]``.

        E[v | parent] has no closed form for an autoregressive layer; these probabilities are
        unbiased for it unit by unit (E over v_<i of E[v_i | v_<i] is E[v_i]), and are what the
        sample pictures show.
        """
        with torch.no_grad():
            return torch.sigmoid(self._draw(self.net(parent), (), keep_logits=True)[1])

    def sample_and_log_prob(self, parent, sample_shape=(), reparameterize=False):
        refuse_reparameterisation(reparameterize, *_BERNOULLI)
        cond = self.net(parent)  # once, whatever sample_shape: the draw reads it detached, log_prob with gradient
        value = self._draw(cond, tuple(sample_shape))[0]
        return value, bernoulli_log_prob(self._forced_logits(value, cond), value)

    def _forced_logits(self, value: Tensor, cond: Tensor) -> Tensor:
        raise NotImplementedError


class DARNLayer(AutoregressiveBernoulliLayer):
    """fDARN, the autoregressive sigmoid belief network layer (the RWS paper's AR-SBN):

        p(v_i = 1 | v_<i, parent) = σ(Σ_{j<i} A_ij v_j + f(parent)_i),

    A strictly lower-triangular (only its part below the diagonal is used), f an MLP (the affine
    W parent + b of Gregor et al.'s fDARN without hidden units).  Gregor, Danihelka, Mnih,
    Blundell & Wierstra (2014), "Deep AutoRegressive Networks", ICML; Bornschein & Bengio (2015).
    Sampling costs O(out²) per draw; :meth:`log_prob` is one masked matmul.

    Args:
        in_features: the parent's size.
        out_features: number of binary units.
        hidden: hidden sizes of f (``()`` for fDARN's affine map).
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = ()):
        super().__init__(in_features, out_features, hidden)
        bound = 1.0 / math.sqrt(out_features)  # nn.Linear's scale for a map from out_features inputs
        self.autoregressive = nn.Parameter(torch.empty(out_features, out_features).uniform_(-bound, bound))

    def running_weight(self) -> Tensor:
        # column j: unit j's effect on every later unit; the running state is then f(parent) + Σ_{j<i} A_:j v_j
        return torch.tril(self.autoregressive, -1)

    def conditional_logits(self, value: Tensor, parent: Tensor) -> Tensor:
        return self._forced_logits(value, self.net(parent))

    def _forced_logits(self, value: Tensor, cond: Tensor) -> Tensor:
        return cond + value.to(cond.dtype) @ self.running_weight().T

    def initial(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        return cond, cond  # the running state starts at f(parent): then l_i is its i-th entry

    def readout(self, running: Tensor, bias: Tensor, i: int) -> Tensor:
        return running[..., i]


class NADELayer(AutoregressiveBernoulliLayer):
    """Conditional NADE: a neural autoregressive distribution over binary units, shifted by the parent:

        p(v_i = 1 | v_<i, parent) = σ(V_i · h_i + b_i + g_b(parent)_i),
        h_i = σ(W_{:,<i} v_<i + c + g_c(parent)),

    with one shared W [H, out] (so the pre-activations of h_i are a running sum, O(out·H) per
    draw), V [out, H], and g = (g_c, g_b) an MLP of the parent whose biases are c and b.
    Larochelle & Murray (2011), "The neural autoregressive distribution estimator", AISTATS; the
    conditional form (a function of the parent added to c and b) as in Bornschein & Bengio (2015).
    :meth:`log_prob` computes every h_i given the value by cumulative sums, in blocks of units
    (:func:`wakesleep.fused.nade_logits`).

    Args:
        in_features: the parent's size.
        out_features: number of binary units.
        hidden: NADE's hidden units H.
        parent_hidden: hidden sizes of g (``()`` for an affine map of the parent).

    Raises:
        ValueError: hidden < 1.
    """

    def __init__(self, in_features: int, out_features: int, hidden: int = 200, parent_hidden: Sequence[int] = ()):
        if int(hidden) < 1:
            raise ValueError(f"a NADE layer needs hidden >= 1 units, got {hidden}")
        super().__init__(in_features, out_features, parent_hidden, outputs=int(hidden) + out_features)
        self.hidden = int(hidden)
        self.weight = nn.Parameter(torch.empty(self.hidden, out_features).uniform_(-1 / math.sqrt(out_features), 1 / math.sqrt(out_features)))
        self.readout_weight = nn.Parameter(torch.empty(out_features, self.hidden).uniform_(-1 / math.sqrt(self.hidden), 1 / math.sqrt(self.hidden)))

    def running_weight(self) -> Tensor:
        return self.weight

    def initial(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        return cond[..., : self.hidden], cond[..., self.hidden :]

    def readout(self, running: Tensor, bias: Tensor, i: int) -> Tensor:
        return torch.sigmoid(running) @ self.readout_weight[i] + bias[..., i]

    def conditional_logits(self, value: Tensor, parent: Tensor) -> Tensor:
        return self._forced_logits(value, self.net(parent))

    def _forced_logits(self, value: Tensor, cond: Tensor) -> Tensor:
        c, b = self.initial(cond)
        return nade_logits(value, c, self.weight, self.readout_weight) + b


class GaussianLayer(NetworkLayer):
    """Diagonal Gaussian: N(μ(parent), diag σ²), μ an MLP.

    Args:
        in_features: the parent's size.
        out_features: the value's size.
        hidden: hidden sizes of the MLP.
        scale: ``"amortised"`` (log σ is a second output head of the MLP, as in a VAE encoder or
            decoder) or ``"learned"`` (log σ is a free parameter vector, as in factor analysis).
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (), scale: str = "amortised"):
        if scale not in ("amortised", "learned"):
            raise ValueError(f"scale must be 'amortised' or 'learned', got {scale!r}")
        super().__init__(in_features, out_features, hidden, outputs=out_features * (2 if scale == "amortised" else 1))
        self.scale = scale
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
        return normal_sample(mean, log_scale, torch.randn_like(mean), reparameterize)

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
        value = normal_sample(mean, log_scale, eps, reparameterize)
        return value, normal_log_prob(mean, log_scale, value)


class PoissonLayer(NetworkLayer):
    """Factorial Poisson counts: v_i ~ Poisson(exp(f(parent)_i)), f an MLP giving the log-rates.

    Args:
        in_features: the parent's size.
        out_features: the value's size.
        hidden: hidden sizes of f.

    Values are non-negative integers (not binary); they cannot be reparameterised.
    """

    discrete = True
    binary = False

    def log_rate(self, parent: Tensor) -> Tensor:
        return self.net(parent)

    def dist(self, parent: Tensor) -> Distribution:
        return Independent(Poisson(self.log_rate(parent).exp(), validate_args=False), 1)

    def log_prob(self, value: Tensor, parent: Tensor) -> Tensor:
        return self._log_prob(value, *self.exponential_family(parent))

    def _log_prob(self, value: Tensor, eta: Tensor, psi: Tensor) -> Tensor:
        """η·x − Ψ + log h(x) [*batch], nats, from the natural parameters and log-normaliser."""
        return (value * eta).sum(-1) - psi + self.log_base_measure(value)

    def sample(self, parent: Tensor, reparameterize: bool = False) -> Tensor:
        refuse_reparameterisation(reparameterize, *_POISSON)
        return torch.poisson(self.log_rate(parent).detach().exp())

    def mean(self, parent: Tensor) -> Tensor:
        return self.log_rate(parent).exp()

    def sample_and_log_prob(self, parent, sample_shape=(), reparameterize=False):
        refuse_reparameterisation(reparameterize, *_POISSON)
        eta, psi = self.exponential_family(parent)
        with torch.no_grad():
            value = torch.poisson(eta.exp().expand(*sample_shape, *eta.shape))
        return value, self._log_prob(value, eta, psi)

    def exponential_family(self, parent: Tensor) -> tuple[Tensor, Tensor]:
        """η = log rate [*batch, out], Ψ = Σ_i rate_i [*batch] (nats); S(x) = x,
        log h(x) = −Σ_i log x_i!."""
        eta = self.log_rate(parent)
        return eta, eta.exp().sum(-1)

    def sufficient_statistics(self, value: Tensor) -> Tensor:
        return value

    def log_base_measure(self, value: Tensor) -> Tensor:
        return -torch.lgamma(value + 1.0).sum(-1)


class CategoricalLayer(NetworkLayer):
    """One-hot categorical: v ~ OneHotCategorical(softmax(f(parent))), f an MLP (e.g. the
    proposal q(c | y) for a mixture component c).

    Args:
        in_features: parent size.
        num_classes: number of categories (= ``out_features``, the one-hot width).
        hidden: hidden sizes of f.
    """

    discrete = True

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = ()):
        super().__init__(in_features, num_classes, hidden)

    def dist(self, parent: Tensor) -> Distribution:
        return OneHotCategorical(logits=self.net(parent), validate_args=False)

    def log_prob(self, value: Tensor, parent: Tensor) -> Tensor:
        return categorical_log_prob(torch.log_softmax(self.net(parent), -1), value)

    def sample(self, parent: Tensor, reparameterize: bool = False) -> Tensor:
        refuse_reparameterisation(reparameterize, *_CATEGORICAL)
        return self.dist(parent.detach()).sample()

    def sample_and_log_prob(self, parent, sample_shape=(), reparameterize=False):
        refuse_reparameterisation(reparameterize, *_CATEGORICAL)
        logp = torch.log_softmax(self.net(parent), -1)
        with torch.no_grad():
            value = OneHotCategorical(logits=logp, validate_args=False).sample(sample_shape)
        return value, categorical_log_prob(logp, value)


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
        refuse_reparameterisation(reparameterize, *_BERNOULLI)
        return bernoulli_sample(torch.sigmoid(self.logits).detach(), batch_shape)

    def mean(self, batch_shape: tuple[int, ...] = ()) -> Tensor:
        return torch.sigmoid(self.logits).expand(*batch_shape, -1)


class NADEPrior(NADELayer, Prior):
    """NADE prior on the top layer: a NADE with no parent (the RWS authors' ``NADETop``,
    jbornschein/reweighted-ws, the top layer of their NADE models in place of a factorial Bernoulli):

        p(z_i = 1 | z_<i) = σ(V_i · h_i + b_i),   h_i = σ(W_{:,<i} z_<i + c),

    with the learned biases c [H] and b [d] (``bias``, zeros at the start) where
    :class:`NADELayer` has a network of the parent; sampling and :meth:`log_prob` are that layer's.
    Larochelle & Murray (2011).  Methods take ``batch_shape`` in place of the parent, as every
    :class:`Prior`; log-densities are in nats.

    Args:
        out_features: number of binary units d.
        hidden: NADE's hidden units H.

    Raises:
        ValueError: hidden < 1.
    """

    def __init__(self, out_features: int, hidden: int = 200):
        super().__init__(1, out_features, hidden)
        del self.net  # no parent: the biases below stand where the parent's network was
        self.in_features = 0
        self.bias = nn.Parameter(torch.zeros(self.hidden + out_features))  # (c, b)

    def conditional_logits(self, value: Tensor, parent: Tensor | tuple[int, ...] = ()) -> Tensor:
        return self._forced_logits(value, self.bias)

    def log_prob(self, value: Tensor, batch_shape: tuple[int, ...] = ()) -> Tensor:
        return bernoulli_log_prob(self._forced_logits(value, self.bias), value)

    def sample(self, batch_shape: tuple[int, ...] = (), reparameterize: bool = False) -> Tensor:
        refuse_reparameterisation(reparameterize, *_BERNOULLI)
        return self._draw(self.bias, tuple(batch_shape))[0]

    def mean(self, batch_shape: tuple[int, ...] = ()) -> Tensor:
        """p(z_i = 1 | z_<i) along one ancestral draw per batch entry (see :meth:`NADELayer.mean`)."""
        with torch.no_grad():
            return torch.sigmoid(self._draw(self.bias, tuple(batch_shape), keep_logits=True)[1])

    def sample_and_log_prob(self, batch_shape=(), sample_shape=(), reparameterize=False):
        refuse_reparameterisation(reparameterize, *_BERNOULLI)
        value = self._draw(self.bias, (*sample_shape, *batch_shape))[0]
        return value, self.log_prob(value)


class GaussianPrior(Prior):
    """Diagonal Gaussian prior N(μ, diag σ²); the standard normal unless ``learn=True``."""

    def __init__(self, out_features: int, learn: bool = False):
        super().__init__()
        self.out_features = out_features
        loc, log_scale = torch.zeros(out_features), torch.zeros(out_features)
        register_learnable(self, "loc", loc, learn)
        register_learnable(self, "log_scale", log_scale, learn)

    def dist(self, batch_shape: tuple[int, ...] = ()) -> Distribution:
        return Independent(Normal(self.loc.expand(*batch_shape, -1), self.log_scale.exp().expand(*batch_shape, -1)), 1)

    def log_prob(self, value: Tensor, batch_shape: tuple[int, ...] = ()) -> Tensor:
        return normal_log_prob(self.loc, self.log_scale, value)

    def sample(self, batch_shape: tuple[int, ...] = (), reparameterize: bool = False) -> Tensor:
        eps = torch.randn(*batch_shape, self.out_features, device=self.loc.device, dtype=self.loc.dtype)
        return normal_sample(self.loc, self.log_scale, eps, reparameterize)

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
        register_learnable(self, "logits", torch.zeros(num_classes), learn)

    @property
    def probs(self) -> Tensor:
        """π = softmax(logits) [num_classes]."""
        return torch.softmax(self.logits, -1)

    def dist(self, batch_shape: tuple[int, ...] = ()) -> Distribution:
        return OneHotCategorical(logits=self.logits.expand(*batch_shape, -1), validate_args=False)

    def log_prob(self, value: Tensor, batch_shape: tuple[int, ...] = ()) -> Tensor:
        return categorical_log_prob(torch.log_softmax(self.logits, -1), value)

    def sample(self, batch_shape: tuple[int, ...] = (), reparameterize: bool = False) -> Tensor:
        refuse_reparameterisation(reparameterize, *_CATEGORICAL)
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
        register_learnable(self, "natural", torch.zeros(2), learn)

    def dist(self, batch_shape: tuple[int, ...] = ()) -> Distribution:
        raise NotImplementedError("CirclePrior has no torch.distributions object on z; use angle_dist() for the angle a")

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
        refuse_reparameterisation(reparameterize, "CirclePrior samples", "ALWS, RWS or wake-sleep")
        a = self.angle_dist().sample(batch_shape)
        return torch.stack([torch.sin(a), torch.cos(a)], -1)

    def mean(self, batch_shape: tuple[int, ...] = ()) -> Tensor:
        """E[z] = (I₁(κ)/I₀(κ)) ν/κ."""
        kappa = self._kappa()
        ratio = torch.special.i1e(kappa) / torch.special.i0e(kappa)
        return (ratio * self.natural / kappa).expand(*batch_shape, -1)
