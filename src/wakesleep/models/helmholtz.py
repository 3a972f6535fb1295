"""The Helmholtz machine: a generative stack p_θ(z_L) … p_θ(x | z_1) and a recognition stack q_φ(z_1 | x) … q_φ(z_L | z_{L-1}).

Dayan, Hinton, Neal & Zemel (1995), "The Helmholtz machine"; Hinton, Dayan, Frey & Neal (1995),
"The wake-sleep algorithm for unsupervised neural networks"; Bornschein & Bengio (2015),
"Reweighted wake-sleep" (deep SBNs); Burda, Grosse & Salakhutdinov (2016) (Gaussian latents).

Conventions (see ``../shared/DESIGN.md``):

- Latents are a list ``zs = [z_1, …, z_L]`` from the bottom (next to x) to the top.
- Particles come first: with K particles for a batch x [B, D], each z_l is [K, B, d_l] and
  log-weights are [K, B].  Log-densities are in nats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from wakesleep.layers import (
    AutoregressiveBernoulliLayer,
    BernoulliLayer,
    BernoulliPrior,
    CategoricalLayer,
    CategoricalPrior,
    DARNLayer,
    GaussianLayer,
    GaussianPrior,
    NADELayer,
    NADEPrior,
    Prior,
    StochasticLayer,
)
from wakesleep.models.contract import enumerated_log_marginal

MAX_ENUMERATED_LATENTS = 24
#: The layer kinds of :meth:`HelmholtzMachine.sbn`: factorial Bernoulli, NADE and fDARN.
LAYER_KINDS = ("sbn", "nade", "darn")
#: The top layer's prior kinds of :meth:`HelmholtzMachine.sbn`: factorial Bernoulli or NADE (the RWS authors' ``NADETop``).
PRIOR_KINDS = ("sbn", "nade")
#: NADE's hidden units when not given.
DEFAULT_NADE_HIDDEN = 200


class HelmholtzMachine(nn.Module):
    """A directed latent-variable model p_θ(z, x) paired with a recognition model (proposal) q_φ(z | x).

    Args:
        prior: the top layer p_θ(z_L).
        generative: ``[p(x | z_1), p(z_1 | z_2), …, p(z_{L-1} | z_L)]`` (bottom first).
        recognition: ``[q(z_1 | x), q(z_2 | z_1), …, q(z_L | z_{L-1})]`` (bottom first), or
            ``None`` for a generative model without a proposal (e.g. a latent on the circle,
            :class:`~wakesleep.layers.CirclePrior`), trainable by ALWS only.
        config: the builder arguments, kept so a checkpoint can rebuild the model
            (:meth:`from_config`).

    Raises:
        ValueError: if the stacks' sizes do not chain.
    """

    def __init__(
        self,
        prior: Prior,
        generative: Sequence[StochasticLayer],
        recognition: Sequence[StochasticLayer] | None,
        config: dict[str, Any] | None = None,
    ):
        super().__init__()
        recognition = [] if recognition is None else recognition
        if not generative or (recognition and len(generative) != len(recognition)):
            raise ValueError("need one generative (and, with a proposal, one recognition) layer per latent layer")
        self.prior = prior
        self.generative = nn.ModuleList(generative)
        self.recognition = nn.ModuleList(recognition)
        self.config = dict(config or {})
        sizes = [generative[0].out_features] + [g.in_features for g in generative]
        if sizes[-1] != prior.out_features:
            raise ValueError(f"top generative layer takes {sizes[-1]} units but the prior has {prior.out_features}")
        for i, g in enumerate(generative):
            if i > 0 and g.out_features != generative[i - 1].in_features:
                raise ValueError(f"generative layer {i} emits {g.out_features} units, layer below takes {generative[i - 1].in_features}")
        for i, r in enumerate(recognition):
            if (r.in_features, r.out_features) != (sizes[i], sizes[i + 1]):
                raise ValueError(f"recognition layer {i} maps {r.in_features}->{r.out_features}, expected {sizes[i]}->{sizes[i + 1]}")
        self.data_dim = sizes[0]
        self.latent_sizes = tuple(sizes[1:])

    # ----------------------------------------------------------------- builders
    @classmethod
    def sbn(
        cls,
        sizes: Sequence[int],
        q_hidden: Sequence[int] = (),
        p_hidden: Sequence[int] = (),
        p_layers: str | Sequence[str] = "sbn",
        q_layers: str | Sequence[str] = "sbn",
        nade_hidden: int = DEFAULT_NADE_HIDDEN,
        prior: str = "sbn",
    ) -> HelmholtzMachine:
        """Sigmoid belief network: binary latents, a factorial Bernoulli (or NADE) prior on the top layer, and
        each conditional layer factorial (``"sbn"``) or autoregressive (``"nade"``, ``"darn"``), as
        the RWS paper's models (Bornschein & Bengio 2015, §4: SBN, AR-SBN and NADE layers).

        Args:
            sizes: ``[D, d_1, …, d_L]``: data width, then latent layer sizes bottom to top;
                e.g. ``[784, 200]`` is the one-layer SBN-200.
            q_hidden: hidden sizes inside each recognition layer's network of its parent (``()``
                gives the plain σ(W h + b) SBN layer).
            p_hidden: the same inside each generative layer.
            p_layers: the kind of each generative layer, bottom first, ``[p(x | z_1), p(z_1 | z_2),
                …, p(z_{L-1} | z_L)]``: ``"sbn"`` (:class:`~wakesleep.layers.BernoulliLayer`),
                ``"nade"`` (:class:`~wakesleep.layers.NADELayer`) or ``"darn"``
                (:class:`~wakesleep.layers.DARNLayer`); one string for every layer.
            q_layers: the kind of each recognition layer, ``[q(z_1 | x), …, q(z_L | z_{L-1})]``, likewise.
            nade_hidden: hidden units H of every NADE layer (the NADE prior's too).
            prior: the top layer's prior p(z_L): ``"sbn"`` factorial Bernoulli
                (:class:`~wakesleep.layers.BernoulliPrior`) or ``"nade"``
                (:class:`~wakesleep.layers.NADEPrior`, the RWS authors' ``NADETop``).

        Raises:
            ValueError: bad sizes, an unknown layer or prior kind, a list of kinds not one per latent
                layer, or nade_hidden < 1.

        With the default kinds (all ``"sbn"``) the model, its parameters' creation order and its
        ``config`` are those of the factorial SBN, so seeded runs are unchanged.
        """
        sizes = _check_sizes(sizes)
        pk, qk = _layer_kinds(p_layers, len(sizes) - 1, "p_layers"), _layer_kinds(q_layers, len(sizes) - 1, "q_layers")
        gen = [_binary_layer(pk[i], sizes[i + 1], sizes[i], p_hidden, nade_hidden) for i in range(len(sizes) - 1)]
        rec = [_binary_layer(qk[i], sizes[i], sizes[i + 1], q_hidden, nade_hidden) for i in range(len(sizes) - 1)]
        cfg = {"kind": "sbn", "sizes": list(sizes), "q_hidden": list(q_hidden), "p_hidden": list(p_hidden)}
        if prior not in PRIOR_KINDS:
            raise ValueError(f"prior: unknown prior kind {prior!r}; choose from {list(PRIOR_KINDS)}")
        if set(pk + qk) != {"sbn"}:  # recorded only where they differ, so that factorial SBNs keep their record
            cfg.update(p_layers=pk, q_layers=qk)
        if prior != "sbn":
            cfg["prior"] = prior
        if "nade" in pk + qk + [prior]:
            cfg["nade_hidden"] = int(nade_hidden)
        top = NADEPrior(sizes[-1], nade_hidden) if prior == "nade" else BernoulliPrior(sizes[-1])
        return cls(top, gen, rec, cfg)

    @classmethod
    def gaussian(
        cls,
        sizes: Sequence[int],
        hidden: Sequence[int] = (200, 200),
        likelihood: str = "bernoulli",
        learn_prior: bool = False,
    ) -> HelmholtzMachine:
        """Gaussian latents with MLP layers (the VAE/IWAE architecture of Burda et al. 2016, and the
        Helmholtz machine of the seed note: q = N(μ_φ(x), diag σ²_φ(x)), p(z) = N(0, I),
        p(x | z) = Bernoulli(f_θ(z))).

        Args:
            sizes: ``[D, d_1, …, d_L]``, e.g. ``[784, 50]`` (IWAE's one-layer model).
            hidden: tanh hidden sizes inside every layer (IWAE: (200, 200) for the first layer).
            likelihood: ``"bernoulli"`` for binary data, ``"gaussian"`` for real-valued data
                (mean and log-scale from the network).
            learn_prior: learn the prior's mean and scale (else N(0, I)).

        Raises:
            ValueError: for an unknown likelihood.
        """
        sizes = _check_sizes(sizes)
        if likelihood == "bernoulli":
            out: StochasticLayer = BernoulliLayer(sizes[1], sizes[0], hidden)
        elif likelihood == "gaussian":
            out = GaussianLayer(sizes[1], sizes[0], hidden)
        else:
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        gen = [out] + [GaussianLayer(sizes[i + 1], sizes[i], hidden) for i in range(1, len(sizes) - 1)]
        rec = [GaussianLayer(sizes[i], sizes[i + 1], hidden) for i in range(len(sizes) - 1)]
        cfg = {"kind": "gaussian", "sizes": list(sizes), "hidden": list(hidden), "likelihood": likelihood, "learn_prior": learn_prior}
        return cls(GaussianPrior(sizes[-1], learn=learn_prior), gen, rec, cfg)

    @classmethod
    def factor_analysis(cls, data_dim: int, latent_dim: int, learn_prior: bool = False) -> HelmholtzMachine:
        """Factor analysis: z ~ N(μ₀, diag s²), x | z ~ N(W z + b, diag σ²), with a linear Gaussian proposal.

        μ₀ = 0, s = 1 unless ``learn_prior`` (then they are parameters, e.g. to test prior-parameter
        gradients).  The marginal p(x) = N(W μ₀ + b, W diag(s²) Wᵀ + diag σ²) is closed-form
        (:func:`wakesleep.evaluate.exact_log_marginal`).
        """
        gen = [GaussianLayer(latent_dim, data_dim, (), scale="learned")]
        rec = [GaussianLayer(data_dim, latent_dim, ())]
        cfg = {"kind": "factor_analysis", "data_dim": data_dim, "latent_dim": latent_dim}
        if learn_prior:
            cfg["learn_prior"] = True
        return cls(GaussianPrior(latent_dim, learn=learn_prior), gen, rec, cfg)

    @classmethod
    def mixture(
        cls,
        data_dim: int,
        latent_dim: int,
        components: int,
        hidden: Sequence[int] = (50, 50),
        q_hidden: Sequence[int] = (50, 50),
    ) -> HelmholtzMachine:
        """Hierarchical mixture (the ALWS paper's pinwheel model, §5.6; ALGORITHMS.md §7.6):
        c ~ Cat(π) (one-hot, learned π), y | c ~ N(μ_c, diag σ_c²), x | y ~ N(MLP(y), diag σ²)
        with learned σ; proposal q(y | x) Gaussian, q(c | y) categorical, both MLPs.

        Latents zs = [y [.., latent_dim], c [.., components]].
        """
        gen = [
            GaussianLayer(latent_dim, data_dim, hidden, scale="learned"),
            GaussianLayer(components, latent_dim, ()),  # affine in one-hot c: one (μ_c, log σ_c) each
        ]
        rec = [GaussianLayer(data_dim, latent_dim, q_hidden), CategoricalLayer(latent_dim, components, q_hidden)]
        cfg = {
            "kind": "mixture",
            "data_dim": data_dim,
            "latent_dim": latent_dim,
            "components": components,
            "hidden": list(hidden),
            "q_hidden": list(q_hidden),
        }
        return cls(CategoricalPrior(components), gen, rec, cfg)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> HelmholtzMachine:
        """Rebuild an (untrained) model from :attr:`config`.

        Raises:
            ValueError: if the config names no known model kind.
        """
        cfg = dict(config)
        kind = cfg.pop("kind", None)
        builders = {"sbn": cls.sbn, "gaussian": cls.gaussian, "factor_analysis": cls.factor_analysis, "mixture": cls.mixture}
        if kind not in builders:
            raise ValueError(f"model config has kind {kind!r}; expected one of {sorted(builders)}")
        return builders[kind](**cfg)

    # ------------------------------------------------------------- properties
    @property
    def num_layers(self) -> int:
        return len(self.latent_sizes)

    @property
    def discrete_latents(self) -> bool:
        return self.prior.discrete or any(g.discrete for g in self.generative[1:])

    @property
    def reparameterizable(self) -> bool:
        """True when every latent can be drawn by a reparameterised sample (VAE/IWAE apply)."""
        return not any(r.discrete for r in self.recognition)

    @property
    def binary_data(self) -> bool:
        """True when p(x | z_1) is Bernoulli (data must be in {0, 1})."""
        return bool(getattr(self.generative[0], "binary", self.generative[0].discrete))

    def p_parameters(self) -> list[nn.Parameter]:
        """θ: the generative model's parameters (prior and generative layers)."""
        return list(self.prior.parameters()) + list(self.generative.parameters())

    def q_parameters(self) -> list[nn.Parameter]:
        """φ: the recognition model's (proposal's) parameters."""
        return list(self.recognition.parameters())

    # ---------------------------------------------------------- generative side
    def sample(self, n: int) -> tuple[list[Tensor], Tensor]:
        """Ancestral samples (z, x) ~ p_θ, drawn without gradient.

        Returns:
            ``(zs, x)``: zs = [z_1 [n, d_1], …, z_L [n, d_L]], x [n, D].
        """
        with torch.no_grad():
            z = self.prior.sample((n,))
            zs = [z]
            for layer in reversed(self.generative[1:]):
                z = layer.sample(z)
                zs.append(z)
            x = self.generative[0].sample(z)
        return zs[::-1], x

    def sample_mean(self, n: int) -> Tensor:
        """E[x | z_1] for n ancestral samples of z: the usual picture of 'model samples' [n, D]."""
        with torch.no_grad():
            zs, _ = self.sample(n)
            return self.generative[0].mean(zs[0])

    def log_joint(self, x: Tensor, zs: Sequence[Tensor]) -> Tensor:
        """log p_θ(x, z) in nats.

        Args:
            x: [B, D] (or [K, B, D]); broadcast against the latents' leading dimensions.
            zs: [z_1, …, z_L], each [K, B, d_l] (or any shape broadcastable with x's batch).

        Returns:
            [K, B].
        """
        lp = self.prior.log_prob(zs[-1])
        for i, layer in enumerate(self.generative):
            target = x if i == 0 else zs[i - 1]
            lp = lp + layer.log_prob(target, zs[i])
        return lp

    def log_prior(self, zs: Sequence[Tensor]) -> Tensor:
        """log p_θ(z) = log p(z_L) + Σ_{l<L} log p(z_l | z_{l+1}), [K, B], nats."""
        lp = self.prior.log_prob(zs[-1])
        for i in range(1, len(self.generative)):
            lp = lp + self.generative[i].log_prob(zs[i - 1], zs[i])
        return lp

    # ------------------------------------- exponential-family view (for ALWS)
    @property
    def has_exponential_family(self) -> bool:
        """True when p(x | z_1) offers the exponential-family view (Bernoulli, Gaussian, Poisson)."""
        return hasattr(self.generative[0], "exponential_family")

    def exponential_family(self, zs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Natural parameters η_θ(z_1) [.., S] and log-normaliser Ψ_θ(z_1) [..] (nats) of p(x | z_1),
        so that log p(x | z_1) = η·S(x) − Ψ + log h(x).  Raises ``ValueError`` if the likelihood has no such view."""
        if not self.has_exponential_family:
            raise ValueError(f"{type(self.generative[0]).__name__} has no exponential-family view; use ALWS(target='generic')")
        return self.generative[0].exponential_family(zs[0])

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        """S(x) [.., S] of p(x | z_1) (see :meth:`exponential_family`)."""
        if not self.has_exponential_family:
            raise ValueError(f"{type(self.generative[0]).__name__} has no exponential-family view; use ALWS(target='generic')")
        return self.generative[0].sufficient_statistics(x)

    # ---------------------------------------------------------- proposal side
    @property
    def has_proposal(self) -> bool:
        """False for a model built with ``recognition=None``."""
        return len(self.recognition) > 0

    def _check_proposal(self) -> None:
        if not self.has_proposal:
            raise ValueError(
                "this model has no proposal q(z | x) (built with recognition=None): "
                "train it with ALWS, or build it with recognition layers to use RWS/WS/VAE or importance sampling"
            )

    def propose(self, x: Tensor, k: int, reparameterize: bool = False) -> tuple[list[Tensor], Tensor]:
        """Draw K particles z ~ q_φ(z | x) and their log-density.

        Args:
            x: [B, D].
            k: number of particles, ≥ 1.
            reparameterize: draw z = g_φ(ε, x) with gradient (Gaussian latents only, for VAE/IWAE);
                otherwise z is detached and log q still carries ∇φ (for RWS's wake-φ update).

        Returns:
            ``(zs, log_q)``: zs = [z_1 [K, B, d_1], …], log_q [K, B] in nats.

        Raises:
            ValueError: if k < 1, reparameterize with discrete latents, or the model has no
                proposal (built with ``recognition=None``).
        """
        if k < 1:
            raise ValueError(f"the number of particles k must be >= 1, got {k}")
        self._check_proposal()
        z, log_q = self.recognition[0].sample_and_log_prob(x, (k,), reparameterize)
        zs = [z]
        for layer in self.recognition[1:]:
            z, lq = layer.sample_and_log_prob(z, (), reparameterize)
            log_q = log_q + lq
            zs.append(z)
        return zs, log_q

    def log_proposal(self, x: Tensor, zs: Sequence[Tensor]) -> Tensor:
        """log q_φ(z | x) in nats, [K, B] (x [B, D] broadcast against zs [K, B, d_l]).

        Raises:
            ValueError: the model has no proposal (built with ``recognition=None``).
        """
        self._check_proposal()
        lq = self.recognition[0].log_prob(zs[0], x)
        for i in range(1, len(self.recognition)):
            lq = lq + self.recognition[i].log_prob(zs[i], zs[i - 1])
        return lq

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        """Importance log-weights log w_k = log p(x, z_k) − log q(z_k | x), z_k ~ q, [K, B] in nats, for
        x [B, D]; no gradient.

        Raises:
            ValueError: k < 1, or the model has no proposal (built with ``recognition=None``).
        """
        with torch.no_grad():
            zs, log_q = self.propose(x, k)
            return self.log_joint(x, zs) - log_q

    # ------------------------------------------- relaxation (Concrete, RELAX)
    @property
    def has_relaxation(self) -> bool:
        """True for one latent layer of factorial binary (SBN) or one-hot categorical units, in both
        the prior and the proposal: what :mod:`wakesleep.estimators.concrete` relaxes."""
        if self.num_layers != 1 or not self.has_proposal:
            return False
        pairs = ((BernoulliPrior, BernoulliLayer), (CategoricalPrior, CategoricalLayer))
        return any(type(self.prior) is p and type(self.recognition[0]) is q for p, q in pairs)

    def _check_relaxation(self) -> None:
        if not self.has_relaxation:
            raise ValueError(
                "Concrete and RELAX relax one layer of factorial binary or categorical latents; this model has "
                f"{self.num_layers} latent layer(s) with {type(self.prior).__name__} and "
                f"{[type(r).__name__ for r in self.recognition]}: use --layers with one size and factorial (sbn) layers"
            )

    def proposal_distribution(self, x: Tensor):
        """q_φ(z_1 | x) as ``Independent(Bernoulli(logits [B, d]), 1)`` or ``OneHotCategorical(logits [B, C])``
        (one latent layer only, :attr:`has_relaxation`)."""
        self._check_relaxation()
        return self.recognition[0].dist(x)

    def prior_distribution(self):
        """p_θ(z_1) as ``Independent(Bernoulli(logits [d]), 1)`` or ``OneHotCategorical(logits [C])``."""
        self._check_relaxation()
        return self.prior.dist()

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x | z_1) [*S, B], nats, for z_1 [*S, B, d] binary or one-hot, or relaxed (the
        layer's network takes any real input)."""
        return self.generative[0].log_prob(x, z)

    # ---------------------------------------------------------------- exact
    def _latent_layers(self) -> list[StochasticLayer]:
        """The layers that give z_1, …, z_L their distributions, bottom first: p(z_l | z_{l+1}) for
        l < L, then the prior p(z_L)."""
        return list(self.generative[1:]) + [self.prior]

    def _latent_support_sizes(self) -> list[int]:
        """How many states each latent layer has, bottom first: 2^d for d binary units (factorial or autoregressive), C for a
        categorical layer.

        Raises:
            ValueError: naming the first layer whose support is not finite (Gaussian, Poisson, angle).
        """
        out = []
        for i, layer in enumerate(self._latent_layers()):
            if _one_hot(layer):
                out.append(layer.out_features)
            elif isinstance(layer, (BernoulliLayer, BernoulliPrior, AutoregressiveBernoulliLayer)):
                out.append(2**layer.out_features)
            else:
                raise ValueError(f"latent layer {i + 1} ({type(layer).__name__}) has no finite support to enumerate: use importance sampling")
        return out

    @property
    def latent_states(self) -> int | None:
        """How many joint states the latents have (what :meth:`enumerate_latents` would list), or
        None for latents without finite support; the pre-training checks skip the exact marginal
        above :data:`wakesleep.models.probes.PROBE_STATES` of them."""
        try:
            return math.prod(self._latent_support_sizes())
        except ValueError:
            return None

    @property
    def has_exact_log_marginal(self) -> bool:
        """True for factor analysis and for latents with finite support of at most 2^24 joint states."""
        if self.config.get("kind") == "factor_analysis":
            return True
        try:
            return math.prod(self._latent_support_sizes()) <= 2**MAX_ENUMERATED_LATENTS
        except ValueError:
            return False

    def enumerate_latents(self) -> list[Tensor]:
        """Every joint state of the latents once, as zs = [z_1 [S, d_1], …]: the product of each
        layer's support (2^d binary vectors for Bernoulli units, C one-hot vectors for a categorical
        layer), S = Π_l |support_l|.

        Raises:
            ValueError: a latent layer without finite support (Gaussian, Poisson, angle), or more
                than 2^24 states.
        """
        total = math.prod(self._latent_support_sizes())
        if total > 2**MAX_ENUMERATED_LATENTS:
            raise ValueError(f"the latents have {total} joint states; enumeration is limited to 2^{MAX_ENUMERATED_LATENTS}: use importance sampling")
        p = next(self.parameters())
        supports = [
            torch.eye(layer.out_features, dtype=p.dtype, device=p.device) if _one_hot(layer) else binary_states(layer.out_features, p.dtype, p.device)
            for layer in self._latent_layers()
        ]
        grids = torch.meshgrid(*[torch.arange(s.shape[0], device=s.device) for s in supports], indexing="ij")
        return [s[g.reshape(-1)] for s, g in zip(supports, grids)]

    def sample_uniform(self, x: Tensor, k: int) -> tuple[list[Tensor], Tensor]:
        """K draws per datapoint from the uniform distribution over the latents' finite support
        (for defensive importance sampling, ``RWS(defensive=δ)``): each Bernoulli unit a fair coin,
        each categorical layer a uniform one-hot category; no enumeration, so any number of units.

        Returns:
            ``(zs, log_u)``: zs = [z_1 [K, B, d_1], …] (detached), log_u = −log Π_l |support_l|, [K, B].

        Raises:
            ValueError: a latent layer without finite support (Gaussian, Poisson, angle).
        """
        sizes = self._latent_support_sizes()
        p = next(self.parameters())
        b = x.shape[0]
        zs = []
        for layer in self._latent_layers():
            d = layer.out_features
            if _one_hot(layer):
                c = torch.randint(d, (k, b), device=p.device)
                zs.append(torch.nn.functional.one_hot(c, d).to(p.dtype))
            else:
                zs.append(torch.randint(2, (k, b, d), device=p.device).to(p.dtype))
        log_u = -sum(math.log(s) for s in sizes)
        return zs, torch.full((k, b), log_u, dtype=p.dtype, device=p.device)

    def exact_log_marginal(self, x: Tensor) -> Tensor:
        """Exact log p_θ(x) per datapoint, [B], nats, with gradient with respect to θ.

        - Factor analysis (:meth:`factor_analysis`): log N(x; W μ₀ + b, W diag(s²) Wᵀ + diag σ²) for
          the prior N(μ₀, diag s²) (μ₀ = 0, s = 1 unless learned).
        - Latents with finite support (binary and categorical, ≤ 2^24 joint states): log Σ_z p(x, z)
          over :meth:`enumerate_latents`.

        Raises:
            ValueError: for a model with neither form.
        """
        if self.config.get("kind") == "factor_analysis":
            layer = self.generative[0]
            weight, bias = layer.output_affine()
            w = weight * torch.exp(self.prior.log_scale)  # W diag(s)
            cov = w @ w.T + torch.diag(torch.exp(2 * layer.log_scale))
            mean = torch.nn.functional.linear(self.prior.loc, weight, bias)
            return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)
        return enumerated_log_marginal(self, x)


def _layer_kinds(kinds: str | Sequence[str], n: int, name: str) -> list[str]:
    """``kinds`` as a list of n layer kinds (one string stands for every layer).

    Raises:
        ValueError: an unknown kind, or a list whose length is not n.
    """
    out = [kinds] * n if isinstance(kinds, str) else [str(k) for k in kinds]
    bad = [k for k in out if k not in LAYER_KINDS]
    if bad:
        raise ValueError(f"{name}: unknown layer kind {bad[0]!r}; choose from {list(LAYER_KINDS)}")
    if len(out) != n:
        raise ValueError(f"{name} names {len(out)} layer kinds for {n} latent layers: give one kind, or one per latent layer")
    return out


def _binary_layer(kind: str, in_features: int, out_features: int, hidden: Sequence[int], nade_hidden: int) -> StochasticLayer:
    """A conditional layer of binary units of ``kind`` (:data:`LAYER_KINDS`), ``hidden`` the sizes
    inside its network of the parent."""
    if kind == "nade":
        return NADELayer(in_features, out_features, nade_hidden, hidden)
    if kind == "darn":
        return DARNLayer(in_features, out_features, hidden)
    return BernoulliLayer(in_features, out_features, hidden)


def _one_hot(layer: StochasticLayer) -> bool:
    """True for a one-hot categorical latent layer (its states are the C unit vectors)."""
    return isinstance(layer, (CategoricalLayer, CategoricalPrior))


def binary_states(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """Every binary vector of length n, [2^n, n] of 0.0/1.0, in counting order: row i is i in binary,
    most significant bit first (``itertools.product([0, 1], repeat=n)``'s order)."""
    idx = torch.int32 if n < 31 else torch.int64  # half the memory of int64 for the 2^24 states of 24 latents
    bits = torch.arange(2**n, dtype=idx, device=device)[:, None] >> torch.arange(n - 1, -1, -1, dtype=idx, device=device)
    return (bits & 1).to(dtype)


def _check_sizes(sizes: Sequence[int]) -> list[int]:
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"sizes must be [data_dim, latent_1, ...] with every size >= 1, got {sizes}")
    return sizes
