"""The Concrete (Gumbel-softmax) relaxation of discrete latents and its estimator.

Maddison, Mnih & Teh (ICLR 2017), "The Concrete distribution: a continuous relaxation of discrete
random variables"; Jang, Gu & Poole (ICLR 2017), "Categorical reparameterization with
Gumbel-softmax".  The helpers here (noise, relaxed points, Concrete densities, the conditional
noise given the discrete state) are shared with RELAX (:mod:`wakesleep.estimators.relax`).

The model offers one factorial discrete latent layer through the contract's optional members
``proposal_distribution(x)``, ``prior_distribution()`` and ``log_likelihood(x, z)``
(:mod:`wakesleep.models.contract`).  Two kinds, in the model's own one-hot/binary form:

- ``"binary"``: logits l [B, d], z ∈ {0, 1}^d; noise s = l + L, L ~ Logistic(0, 1) per unit;
  b = H(s) = 1[s > 0] ~ Bernoulli(σ(l)); relaxed point z̃ = σ(s / τ), whose log-odds y = s / τ
  have the density log τ − τ y + l − 2 softplus(l − τ y) (Maddison et al. 2017, §3.3 and App. C).
- ``"categorical"``: logits l [B, n, C]; s = log_softmax(l) + G, G ~ Gumbel(0, 1) per category;
  b = one_hot(argmax s) ~ Cat(softmax(l)); z̃ = softmax(s / τ), whose logs y = log_softmax(s / τ)
  have the ExpConcrete density log Γ(C) + (C − 1) log τ + Σ_c (l_c − τ y_c) − C logsumexp_c(l_c − τ y_c).

Densities and log-likelihoods are summed over the latent's elements: [K, B] for K particles.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, Independent, OneHotCategorical

from wakesleep.estimators.base import EstimatorOutput, ParticleEstimator, check_positive_float
from wakesleep.importance import log_mean_exp
from wakesleep.models.contract import RELAXATION

DENSITIES = ("concrete", "discrete")
#: What a model without the relaxation's members can do (``member_hints`` of Concrete and RELAX).
HINTS = {
    "proposal_distribution": "Concrete and RELAX relax one layer of factorial binary or categorical latents: a Helmholtz machine "
    "has these members with one latent layer (--layers with one size) of factorial (sbn) units; use rws, vimco or nvil otherwise"
}
_TINY = 1e-12


def discrete_latent(model, x: Tensor) -> tuple[str, Tensor, Tensor]:
    """``(kind, proposal logits [B, *E], prior logits broadcast to [B, *E])`` from the model's
    ``proposal_distribution(x)`` and ``prior_distribution()``; the logits keep their gradients (φ, θ).

    Raises:
        ValueError: distributions other than (Independent) Bernoulli / OneHotCategorical, of two kinds.
    """
    kinds = []
    for d in (model.proposal_distribution(x), model.prior_distribution()):
        base = d.base_dist if isinstance(d, Independent) else d
        if isinstance(base, Bernoulli):
            kinds.append(("binary", base.logits))
        elif isinstance(base, OneHotCategorical):
            kinds.append(("categorical", base.logits))
        else:
            raise ValueError(
                f"{type(model).__name__}.proposal_distribution/prior_distribution must return torch.distributions "
                f"Bernoulli or OneHotCategorical (optionally Independent), got {type(d).__name__}"
            )
    (kind, q), (prior_kind, p) = kinds
    if kind != prior_kind:
        raise ValueError(f"{type(model).__name__}: the proposal is {kind} but the prior is {prior_kind}; they must be of one kind")
    return kind, q, p.expand_as(q)


def event_sum(t: Tensor) -> Tensor:
    """Sum a per-element tensor [K, B, …] over its element dimensions: [K, B]."""
    return t.flatten(2).sum(-1) if t.dim() > 2 else t


def probs(kind: str, logits: Tensor) -> Tensor:
    """P(b_i = 1) per element: σ(l) (binary) or softmax(l) over the last dimension (categorical)."""
    return torch.sigmoid(logits) if kind == "binary" else torch.softmax(logits, -1)


def log_mass(kind: str, logits: Tensor, value: Tensor) -> Tensor:
    """Σ value·log π of the discrete mass function, [K, B]: log Bernoulli / Cat(value) at binary or
    one-hot ``value``, and its multilinear extension at a relaxed one (Tucker et al. 2017's relaxed f)."""
    if kind == "binary":
        return event_sum(-F.binary_cross_entropy_with_logits(logits.expand_as(value), value, reduction="none"))
    return event_sum((value * torch.log_softmax(logits, -1)).sum(-1))


def sample_noise(kind: str, logits: Tensor, k: int) -> Tensor:
    """s [K, *logits.shape]: l + Logistic (binary) or log_softmax(l) + Gumbel (categorical), with ∇ in l."""
    u = torch.rand((k, *logits.shape), dtype=logits.dtype, device=logits.device).clamp(_TINY, 1 - _TINY)
    if kind == "binary":
        return logits + (torch.log(u) - torch.log1p(-u))
    return torch.log_softmax(logits, -1) - torch.log(-torch.log(u))


def hard(kind: str, s: Tensor) -> Tensor:
    """b = H(s): 1[s > 0] (binary) or one_hot(argmax s) (categorical), detached."""
    s = s.detach()
    if kind == "binary":
        return (s > 0).to(s.dtype)
    return F.one_hot(s.argmax(-1), s.shape[-1]).to(s.dtype)


def conditional_noise(kind: str, logits: Tensor, b: Tensor) -> Tensor:
    """s̃ ~ p(s | H(s) = b) with ∇ in l (Tucker et al. 2017, App. C; Grathwohl et al. 2018, App. B).

    Binary: u | b uniform on (1 − σ(l), 1) for b = 1, on (0, 1 − σ(l)) for b = 0, s̃ = l + log u − log(1 − u),
    in log space.  Categorical (E = −log v, v ~ U): s̃_b = −log E_b, s̃_i = −log(E_i / π_i + E_b) for i ≠ b.
    """
    v = torch.rand(b.shape, dtype=logits.dtype, device=logits.device).clamp(_TINY, 1 - _TINY)
    if kind == "binary":
        log_p1, log_p0 = F.logsigmoid(logits), F.logsigmoid(-logits)
        on = logits + torch.log1p(-torch.exp(log_p1) * (1 - v)) - log_p1 - torch.log1p(-v)
        off = logits + torch.log(v) + log_p0 - torch.log1p(-torch.exp(log_p0) * v)
        return torch.where(b > 0, on, off)
    log_e = torch.log(-torch.log(v))
    log_e_b = (log_e * b).sum(-1, keepdim=True)
    return torch.where(b > 0, -log_e_b, -torch.logaddexp(log_e - torch.log_softmax(logits, -1), log_e_b))


def relax(kind: str, s: Tensor, temperature: Tensor | float) -> tuple[Tensor, Tensor]:
    """``(y, z̃)``: the relaxed point z̃ = σ(s/τ) or softmax(s/τ) and its log-space coordinates
    y (log-odds s/τ, or log z̃ = log_softmax(s/τ)), both with ∇ in s and τ."""
    if kind == "binary":
        y = s / temperature
        return y, torch.sigmoid(y)
    y = torch.log_softmax(s / temperature, -1)
    return y, y.exp()


def concrete_log_density(kind: str, logits: Tensor, y: Tensor, temperature: float) -> Tensor:
    """log density [K, B] of the relaxed sample's log-space coordinates y (see :func:`relax`) under the
    Concrete distribution of ``logits`` at ``temperature`` (Maddison et al. 2017, eqs. 7 and 26)."""
    t = math.log(temperature)
    if kind == "binary":
        diff = logits - temperature * y
        return event_sum(t + diff - 2 * F.softplus(diff))
    c = y.shape[-1]
    score = logits - temperature * y
    return event_sum(math.lgamma(c) + (c - 1) * t + score.sum(-1) - c * torch.logsumexp(score, -1))


class Concrete(ParticleEstimator):
    r"""The Concrete (Gumbel-softmax) relaxation: reparameterised gradients through relaxed latents.

    Draw s_k = l + noise (Logistic per binary unit, Gumbel per category), z̃_k = σ(s_k/τ) or
    softmax(s_k/τ), with l = q_φ's logits, and ascend the relaxed bound in θ and φ jointly:

        L̃_K = E[log (1/K) Σ_k w̃_k],   log w̃_k = log p_θ(x | z̃_k) + log p̃_θ(z̃_k) − log q̃_φ(z̃_k | x)

    (K = 1: the relaxed ELBO), differentiating through z̃_k (∇φ pathwise, ∇θ through the likelihood at
    the relaxed input and the relaxed prior).  ``density`` says what p̃ and q̃ are:

    - ``"concrete"`` (Maddison et al. 2017, §3.3 and App. C): the Concrete densities of the prior's and
      the proposal's logits at temperature τ, scored in log-space coordinates (log-odds, or logs of the
      simplex point) for stability.  With one τ for both, their ratio does not depend on τ: the
      relaxed KL is KL(Logistic(l) ‖ Logistic(a)) (binary), at least the discrete KL, so the
      gradient's bias for ∇ ELBO does *not* vanish as τ → 0.
    - ``"discrete"``: the discrete mass functions at the relaxed point, Σ z̃·log π (their multilinear
      extension; Jang et al. 2017 pair the relaxed input with the discrete KL, and Tucker et al. 2017
      call this the relaxed f).
      log w̃ → log w of the discrete state as τ → 0, and the bias for ∇ ELBO shrinks with τ while the
      variance grows as τ falls.

    Either way the estimator is biased for the gradient of the discrete model's bound; its bias is
    measured in ``tests/test_relaxations.py`` and ``wakesleep diagnose``.

    Args:
        k: relaxed particles per datapoint (≥ 1; K > 1 gives the relaxed IWAE bound).
        temperature: τ > 0.
        density: ``"concrete"`` or ``"discrete"``.

    Raises:
        ValueError: for k < 1, τ ≤ 0 or an unknown density; on use, a model without one factorial
            discrete latent layer.

    Metrics: ``objective`` = mean_b log (1/K) Σ_k w(b_k), the discrete model's bound at the hard states
    b_k = H(s_k) (nats per datapoint), and ``relaxed_objective`` = L̃_K's estimate.
    """

    name = "concrete"

    def __init__(self, k: int = 1, temperature: float = 0.5, density: str = "concrete"):
        super().__init__(k)
        check_positive_float("temperature", temperature)
        if density not in DENSITIES:
            raise ValueError(f"density must be one of {DENSITIES}, got {density!r}")
        self.temperature, self.density = float(temperature), density

    @property
    def q_update(self) -> str | None:
        """What the φ-update estimates, biased (read by :mod:`wakesleep.lab.diagnostics`): ∇φ ELBO at K = 1."""
        return "elbo" if self.k == 1 else None

    def settings(self) -> dict:
        return {**super().settings(), "temperature": self.temperature, "density": self.density}

    def requires(self, model) -> tuple[str, ...]:
        """``proposal_distribution``, ``prior_distribution``, ``log_likelihood`` and both parameter groups."""
        return RELAXATION

    def member_hints(self) -> dict[str, str]:
        return HINTS

    def forward(self, model, x: Tensor) -> EstimatorOutput:
        kind, q_logits, p_logits = discrete_latent(model, x)
        s = sample_noise(kind, q_logits, self.k)  # [K, B, *E], ∇φ
        y, z = relax(kind, s, self.temperature)
        if self.density == "concrete":
            log_ratio = concrete_log_density(kind, p_logits, y, self.temperature) - concrete_log_density(kind, q_logits, y, self.temperature)
        else:
            log_ratio = log_mass(kind, p_logits, z) - log_mass(kind, q_logits, z)
        bound = log_mean_exp(model.log_likelihood(x, z) + log_ratio)  # [B]
        with torch.no_grad():
            b = hard(kind, s)
            hard_w = model.log_likelihood(x, b) + log_mass(kind, p_logits, b) - log_mass(kind, q_logits, b)
        return EstimatorOutput(-bound.mean(), {"objective": log_mean_exp(hard_w).mean(), "relaxed_objective": bound.detach().mean()})
