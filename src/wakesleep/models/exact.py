"""Exact references: small models whose log p(x), likelihood gradient and φ-targets are known.

Three references, each a builder returning ``(model, x)`` (a float64 model and a batch x [B, D]
drawn from it) and served by the same functions:

- **factor analysis** (:func:`factor_analysis_reference`): z ~ N(0, I), x | z ~ N(W z + b, diag σ²);
  p(x) = N(b, W Wᵀ + diag σ²) and the posterior p(z | x) are Gaussian in closed form.  With a
  learned prior (``factor_analysis(learn_prior=True)``) only log p(x) and the θ-gradient are served:
  the posterior, φ-targets and χ² assume N(0, I) and raise :class:`NoExactReference`.
- **small sigmoid belief network** (:func:`sbn_reference`): ≤ 24 binary latents, summed over
  all 2^H states.
- **Gaussian latent, Bernoulli likelihood** (:func:`quadrature_reference`): a 1-D or 2-D
  z ~ N(0, I) with an MLP decoder; integrals over z by tensor-product Gauss–Hermite quadrature
  (``numpy.polynomial.hermite_e.hermegauss``), exact to quadrature error (checked by
  ``tests/test_diagnostics.py`` against a doubled order and a large-K importance estimate).

Functions (all log-densities in nats; gradients flattened in the order of
``model.p_parameters()`` / ``model.q_parameters()``, and for the batch *mean*, matching the
estimators' losses, which are means over the batch):

- :func:`reference_log_marginal` — log p_θ(x) [B], with gradient (closed form, enumeration or quadrature).
- :func:`exact_theta_grad` — ∇θ mean_b log p_θ(x_b) [P_θ]: what every θ-estimator aims at.
- :func:`exact_wake_phi_target` — E_{p(z|x)}[∇φ log q_φ(z | x)] = −∇φ KL(p_θ(z|x) ‖ q_φ(z|x)),
  batch mean [P_φ]: what RWS's wake-φ update estimates (Bornschein & Bengio 2015).
- :func:`exact_sleep_phi_target` — E_{p_θ(z, x)}[∇φ log q_φ(z | x)], shape [P_φ]: what the sleep phase
  estimates (Hinton et al. 1995).
- :func:`exact_elbo_phi_target` — ∇φ ELBO [P_φ], by enumeration: what REINFORCE's and NVIL's φ-updates
  estimate (latents that can be enumerated only).

Any other model — one that is not a Helmholtz machine of the three kinds above, e.g. a user's own
model (``examples/hmm.py``, ``examples/gmm.py``) — is served generically where it can be:
log p(x) and the θ-gradient from its own ``exact_log_marginal(x)`` or, failing that, from the sum
over ``enumerate_latents()``; the wake-φ target and χ² from the enumerated states (so they need
``enumerate_latents``), each state scored as a particle, z leaves [S, B, …]
(:func:`enumerated_log_joint`).  Such a model that can do neither raises :class:`NoExactReference`.

Source of the protocol: ``../shared/reference/ALGORITHMS.md`` §5 (exact log-likelihood for
small models, used to measure the bias and variance of each gradient estimator).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from wakesleep.layers import BernoulliLayer, GaussianLayer
from wakesleep.models.contract import exact_log_marginal as _enumerated_or_closed_form
from wakesleep.models.contract import has_exact_form, has_member, states_against_batch
from wakesleep.models.helmholtz import MAX_ENUMERATED_LATENTS, HelmholtzMachine, binary_states
from wakesleep.models.probes import ModelCheckError

#: Largest latent dimension integrated by tensor-product quadrature (order^dim nodes).
MAX_QUADRATURE_DIM = 3
#: Default Gauss–Hermite order per latent dimension, by latent dimension.
DEFAULT_ORDER = {1: 200, 2: 80, 3: 24}
#: Largest Gauss–Hermite order (numpy's weights overflow near 400).
MAX_ORDER = 300
#: Largest data width whose binary states are enumerated for the sleep-φ target (2^D states).
MAX_ENUMERATED_DATA = 16


class NoExactReference(ValueError):
    """The model has no exact (closed-form, enumerable or quadrature) form of the requested quantity."""


# ------------------------------------------------------------------ helpers


def flat_grad(params: Sequence[Tensor], loss: Tensor) -> Tensor:
    """The gradient of scalar ``loss`` w.r.t. ``params``, flattened and concatenated [Σ numel].

    Parameters that ``loss`` does not depend on contribute zeros.
    """
    params = list(params)
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, gs)])


def kind(model) -> str:
    """Which exact form ``model`` has: ``"factor_analysis"``, ``"enumeration"`` or ``"quadrature"``.

    Raises:
        NoExactReference: for a model with none (more than 24 binary latents, a Gaussian-latent
            model with more than one layer or more than 3 latents, ...).
    """
    cfg_kind = getattr(model, "config", {}).get("kind")
    if cfg_kind == "factor_analysis":
        return "factor_analysis"
    if cfg_kind == "sbn" and sum(model.latent_sizes) <= MAX_ENUMERATED_LATENTS:
        return "enumeration"
    if cfg_kind == "gaussian" and model.num_layers == 1 and model.latent_sizes[0] <= MAX_QUADRATURE_DIM:
        return "quadrature"
    raise NoExactReference(
        f"no exact reference for this model (kind {cfg_kind!r}, latents {getattr(model, 'latent_sizes', None)}): "
        "use factor analysis, an SBN with <= 24 latents, or a one-layer Gaussian-latent model with "
        f"<= {MAX_QUADRATURE_DIM} latents"
    )


def is_generic(model) -> bool:
    """Whether ``model`` is served by the generic branch: :func:`kind` finds no Helmholtz-machine
    form for it, but it has ``exact_log_marginal`` or ``enumerate_latents``.

    Raises:
        NoExactReference: :func:`kind`'s, for a model with neither member.
    """
    try:
        kind(model)
        return False
    except NoExactReference:
        if has_exact_form(model):
            return True
        raise


def _refuse(model, e: Exception) -> NoExactReference:
    return NoExactReference(f"no exact reference for this {type(model).__name__}: {e}")


def _check_proposal(model, what: str) -> None:
    if not (has_member(model, "log_proposal") and has_member(model, "q_parameters")):
        raise NoExactReference(f"{what} needs a proposal: this {type(model).__name__} has no log_proposal(x, z) and q_parameters()")


def enumerated_log_joint(model, x: Tensor):
    """Every latent state of ``model.enumerate_latents()`` scored against every datapoint.

    Each leaf [S, …] of the states is expanded against the batch to [S, B, …], so the model sees
    the S states as it sees S particles (:func:`wakesleep.models.contract.states_against_batch`).

    Args:
        x: [B, D].

    Returns:
        ``(zs, log_joint)``: the expanded states (the model's pytree, leaves [S, B, …]) and
        log p_θ(x_b, z_s) [S, B] in nats, with gradient w.r.t. θ.  logsumexp over s is
        log p(x), softmax over s the posterior p(z_s | x).

    Raises:
        NoExactReference: the model has no ``enumerate_latents``, or it refuses (a ``ValueError``:
            too many states, no finite support).
    """
    if not has_member(model, "enumerate_latents"):
        raise NoExactReference(
            f"no exact reference for this {type(model).__name__}: it needs enumerate_latents() (every latent state once) for posterior expectations"
        )
    try:
        z = model.enumerate_latents()
    except ValueError as e:
        raise _refuse(model, e) from e
    zs = states_against_batch(z, x.shape[0])
    return zs, model.log_joint(x, zs)


def quadrature_rule(dim: int, order: int, dtype=torch.float64) -> tuple[Tensor, Tensor]:
    """Tensor-product Gauss–Hermite rule for the standard normal N(0, I_dim).

    Σ_s exp(log_w[s]) f(ξ[s]) ≈ E_{ξ~N(0, I)} f(ξ), exact for polynomials of degree < 2·order in
    each coordinate.

    Returns:
        ``(nodes [order^dim, dim], log_weights [order^dim])``; the weights sum to 1.

    Raises:
        ValueError: dim or order < 1, or dim > MAX_QUADRATURE_DIM.
    """
    if not (1 <= dim <= MAX_QUADRATURE_DIM) or not (1 <= order <= MAX_ORDER):
        raise ValueError(f"quadrature needs 1 <= dim <= {MAX_QUADRATURE_DIM} and 1 <= order <= {MAX_ORDER}, got dim={dim}, order={order}")
    x, w = np.polynomial.hermite_e.hermegauss(order)  # weight exp(-x²/2); Σ w = sqrt(2π)
    with np.errstate(divide="ignore"):
        logw = np.log(w) - 0.5 * math.log(2 * math.pi)
    grids = np.meshgrid(*([x] * dim), indexing="ij")
    lgrids = np.meshgrid(*([logw] * dim), indexing="ij")
    nodes = np.stack([g.reshape(-1) for g in grids], -1)
    log_w = sum(g.reshape(-1) for g in lgrids)
    return torch.tensor(nodes, dtype=dtype), torch.tensor(log_w, dtype=dtype)


def latent_states(model, order: int | None = None) -> tuple[list[Tensor], Tensor]:
    """The latent grid alone: states zs = [z_1 [S, d_1], …] and their prior log-masses [S].

    SBN: all 2^H binary states with log p_θ(z) (exact).  Gaussian latent: z_s = μ + σ ξ_s on the
    Gauss–Hermite nodes ξ_s of the prior N(μ, diag σ²), with log-mass log w_s (gradients reach
    the prior parameters through the nodes).

    Raises:
        NoExactReference: factor analysis (use its closed forms) or a model with no exact form.
    """
    k = kind(model)
    if k == "enumeration":
        zs = model.enumerate_latents()
        return zs, model.log_prior(zs)
    if k == "quadrature":
        d = model.latent_sizes[0]
        p = next(model.parameters())
        nodes, log_w = quadrature_rule(d, order or DEFAULT_ORDER[d], dtype=p.dtype)
        prior = model.prior
        return [prior.loc + prior.log_scale.exp() * nodes.to(p.device)], log_w.to(p.device)
    raise NoExactReference("factor analysis has closed forms; latent grids are for SBNs and quadrature models")


def latent_grid(model, x: Tensor, order: int | None = None) -> tuple[list[Tensor], Tensor]:
    """A discrete stand-in for the latent space with the log-masses of (z_s, x).

    log_joint[s, b] = log m_s + log p_θ(x_b | z_s), with m_s the prior mass of
    :func:`latent_states`: log p_θ(x_b, z_s) for an SBN (exact); for a Gaussian latent,
    Σ_s exp(log_joint[s, b]) = p_θ(x_b) to quadrature error.  Either way logsumexp over s is
    log p(x), and softmax over s the posterior p(z_s | x).  Gradients flow to θ.

    Args:
        x: [B, D].
        order: Gauss–Hermite order per latent dimension (quadrature only; default
            :data:`DEFAULT_ORDER`).

    Returns:
        ``(zs, log_joint)``: zs = [z_l [S, 1, d_l]] (broadcasts against x), log_joint [S, B].

    Raises:
        NoExactReference: factor analysis (use its closed forms) or a model with no exact form.
    """
    zs, log_mass = latent_states(model, order)
    zs = [z[:, None, :] for z in zs]
    return zs, log_mass[:, None] + model.generative[0].log_prob(x, zs[0])


# ------------------------------------------------------------------ exact quantities


def reference_log_marginal(model, x: Tensor, order: int | None = None) -> Tensor:
    """Exact log p_θ(x) per datapoint [B], nats, with gradient w.r.t. θ.

    Factor analysis and SBNs: :func:`wakesleep.evaluate.exact_log_marginal` (closed form,
    enumeration); one-layer Gaussian-latent models with ≤ 3 latents: Gauss–Hermite quadrature
    of ``order`` nodes per dimension.

    Any other model (:func:`is_generic`): its own ``exact_log_marginal(x)``, else log Σ_s p_θ(x, z_s)
    over ``enumerate_latents()``; ``order`` is not used.

    Raises:
        NoExactReference: a model with no exact form (or whose own exact forms refuse, with a
            ``ValueError``: too many states, no finite support).
        wakesleep.models.probes.ModelCheckError: (with gradient enabled) a generic model's exact
            log p(x) that does not depend on θ (computed under ``torch.no_grad``, detached).
    """
    if is_generic(model):
        try:
            out = _enumerated_or_closed_form(model, x)
        except NoExactReference:
            raise
        except ValueError as e:
            raise _refuse(model, e) from e
        theta = [p for p in model.p_parameters() if p.requires_grad]
        if torch.is_grad_enabled() and theta and not out.requires_grad:  # the references take its gradient
            member = "exact_log_marginal" if callable(getattr(model, "exact_log_marginal", None)) else "log_joint"
            raise ModelCheckError(
                f"{type(model).__name__}.{member} returned a tensor that does not depend on the generative parameters θ "
                "(p_parameters()): is it detached or computed under torch.no_grad? The exact references take its gradient"
            )
        return out
    if kind(model) == "quadrature":
        return torch.logsumexp(latent_grid(model, x, order)[1], 0)
    return _enumerated_or_closed_form(model, x)


def exact_theta_grad(model, x: Tensor, order: int | None = None) -> Tensor:
    """∇θ (1/B) Σ_b log p_θ(x_b), flattened over ``model.p_parameters()`` [P_θ].

    Raises:
        NoExactReference: a model with no exact form.
    """
    return flat_grad(model.p_parameters(), reference_log_marginal(model, x, order).mean())


def _check_fixed_prior(model, what: str) -> None:
    """Raise NoExactReference for a factor-analysis model whose prior is learned: ``what`` assumes z ~ N(0, I)."""
    if getattr(model, "config", {}).get("learn_prior"):
        raise NoExactReference(
            f"{what} assumes factor analysis's fixed prior z ~ N(0, I), but this model learns its prior "
            "(factor_analysis(learn_prior=True)); build it with learn_prior=False"
        )


def _fa_posterior_cov(layer) -> tuple[Tensor, Tensor]:
    """Ψ⁻¹ = diag σ⁻² as [D] and the posterior covariance S = (I + Wᵀ Ψ⁻¹ W)⁻¹ [d, d] of a
    factor-analysis generative layer (prior N(0, I))."""
    w = layer.output_affine()[0]  # [D, d]
    psi_inv = torch.exp(-2 * layer.log_scale)
    eye = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
    return psi_inv, torch.linalg.inv(eye + w.T @ (psi_inv[:, None] * w))


def fa_posterior(model, x: Tensor) -> tuple[Tensor, Tensor]:
    """Factor-analysis posterior p(z | x) = N(m(x), S): means [B, d] and the shared covariance [d, d].

    S = (I + Wᵀ Ψ⁻¹ W)⁻¹, m = S Wᵀ Ψ⁻¹ (x − b), Ψ = diag σ² (Bishop, PRML §12.2.4).  Differentiable in θ.

    Raises:
        NoExactReference: not a factor-analysis model, or one with a learned prior (these forms
            assume N(0, I)).
    """
    if kind(model) != "factor_analysis":
        raise NoExactReference("fa_posterior needs a HelmholtzMachine.factor_analysis model")
    _check_fixed_prior(model, "the closed-form factor-analysis posterior")
    layer = model.generative[0]
    w, b = layer.output_affine()  # [D, d], [D]
    psi_inv, cov = _fa_posterior_cov(layer)
    mean = (x - b) @ (psi_inv[:, None] * w) @ cov  # cov symmetric
    return mean, cov


def _expected_gaussian_log_q(model, x: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    """E_{z~N(mean_b, cov)}[log q_φ(z | x_b)] [B] for a diagonal-Gaussian one-layer proposal, closed form."""
    q_mean, q_log_scale = model.recognition[0].params(x)
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    quad = ((mean - q_mean) ** 2 + var) * torch.exp(-2 * q_log_scale)
    return (-0.5 * quad - q_log_scale).sum(-1) - 0.5 * mean.shape[-1] * math.log(2 * math.pi)


def exact_wake_phi_target(model, x: Tensor, order: int | None = None) -> Tensor:
    """E_{p_θ(z|x)}[∇φ log q_φ(z | x)] = −∇φ KL(p_θ(z|x) ‖ q_φ(z|x)), batch mean, over ``model.q_parameters()`` [P_φ].

    The quantity RWS's wake-φ update Σ_k w̃_k ∇φ log q(z_k | x) estimates (consistently in K).
    Factor analysis: closed form (Gaussian posterior, Gaussian q); SBN: enumeration;
    Gaussian latent: quadrature; any other model (:func:`is_generic`): Σ_s p(z_s | x) ∇φ log q(z_s | x)
    over its ``enumerate_latents()`` (:func:`enumerated_log_joint`).

    Raises:
        NoExactReference: a model with no exact form (a generic model without ``enumerate_latents``
            or without a proposal).
    """
    if is_generic(model):
        _check_proposal(model, "the wake-φ target")
        with torch.no_grad():
            zs, log_joint = enumerated_log_joint(model, x)
            post = torch.softmax(log_joint, 0)  # [S, B]
        return flat_grad(model.q_parameters(), (post * model.log_proposal(x, zs)).sum(0).mean())
    if kind(model) == "factor_analysis":
        with torch.no_grad():
            mean, cov = fa_posterior(model, x)
        return flat_grad(model.q_parameters(), _expected_gaussian_log_q(model, x, mean, cov).mean())
    with torch.no_grad():
        zs, log_joint = latent_grid(model, x, order)
        post = torch.softmax(log_joint, 0)  # [S, B]
    return flat_grad(model.q_parameters(), (post * model.log_proposal(x, zs)).sum(0).mean())


def exact_elbo(model, x: Tensor) -> Tensor:
    """The evidence lower bound, batch mean, by enumeration: mean_b Σ_z q_φ(z | x_b) [log p_θ(x_b, z) − log q_φ(z | x_b)]
    (nats, a scalar with gradient w.r.t. θ and φ).

    Its φ-gradient is what REINFORCE's φ-update estimates (Williams 1992), and NVIL's up to the
    scale 1/max(1, σ̂) of its variance normalisation (Mnih & Gregor 2014).

    Raises:
        NoExactReference: a model whose latents cannot be enumerated (Gaussian latents: factor
            analysis, quadrature), or without a proposal.
    """
    _check_proposal(model, "the ELBO")
    zs, log_joint = enumerated_log_joint(model, x)  # [S, B]
    log_q = model.log_proposal(x, zs)  # [S, B]
    return (log_q.exp() * (log_joint - log_q)).sum(0).mean()


def exact_elbo_phi_target(model, x: Tensor) -> Tensor:
    """∇φ of :func:`exact_elbo` over ``model.q_parameters()`` [P_φ]: the score-function estimators' target.

    Raises:
        NoExactReference: as :func:`exact_elbo`.
    """
    return flat_grad(model.q_parameters(), exact_elbo(model, x))


def chi_square(model, x: Tensor, order: int | None = None) -> Tensor:
    """χ²(p_θ(z|x) ‖ q_φ(z|x)) = E_q[(p/q)²] − 1 per datapoint [B]: the variance of the normalised importance weight.

    It sets the scale of importance sampling with the proposal: the effective sample size of K
    particles tends to K / (1 + χ²), the log-likelihood estimate's bias is ≈ −χ²/(2K), and the
    self-normalised gradients (RWS, IWAE) have O(1/K) bias only once K ≫ χ²; below that
    their bias falls more slowly.  ``inf`` where the weights have infinite variance.

    Factor analysis: closed form for Gaussians (finite iff 2Σ_p⁻¹ − Σ_q⁻¹ is positive definite);
    SBN: enumeration; Gaussian latent: quadrature; any other model (:func:`is_generic`):
    Σ_s p(z_s | x)² / q(z_s | x) − 1 over its ``enumerate_latents()``.

    Raises:
        NoExactReference: a model with no exact form (a generic model without ``enumerate_latents``
            or without a proposal).
    """
    with torch.no_grad():
        if is_generic(model):
            _check_proposal(model, "χ² of the proposal")
            zs, log_joint = enumerated_log_joint(model, x)
            log_post = torch.log_softmax(log_joint, 0)
            return torch.expm1(torch.logsumexp(2 * log_post - model.log_proposal(x, zs), 0))
        if kind(model) == "factor_analysis":
            mu_p, cov_p = fa_posterior(model, x)
            mu_q, log_s = model.recognition[0].params(x)
            prec_p = torch.linalg.inv(cov_p)
            prec_q = torch.diag_embed(torch.exp(-2 * log_s))  # [B, d, d]
            a = 2 * prec_p - prec_q
            b = (2 * mu_p @ prec_p)[..., None] - prec_q @ mu_q[..., None]  # [B, d, 1]
            c = 2 * (mu_p @ prec_p * mu_p).sum(-1) - (mu_q**2 * torch.exp(-2 * log_s)).sum(-1)
            ok = torch.linalg.eigvalsh(a).min(-1).values > 0
            a_safe = torch.where(ok[:, None, None], a, torch.eye(a.shape[-1], dtype=a.dtype, device=a.device))
            quad = (b.transpose(-1, -2) @ torch.linalg.solve(a_safe, b))[..., 0, 0]
            log_ratio = -torch.logdet(cov_p) + log_s.sum(-1) - 0.5 * torch.logdet(a_safe) + 0.5 * quad - 0.5 * c
            return torch.where(ok, torch.expm1(log_ratio), torch.full_like(log_ratio, math.inf))
        zs, log_joint = latent_grid(model, x, order)
        log_post = torch.log_softmax(log_joint, 0)  # posterior mass of each grid point
        log_density = log_post
        if kind(model) == "quadrature":  # mass → density: divide by the weight, multiply by the prior
            _, log_w = latent_states(model, order)
            log_density = log_post - log_w[:, None] + model.prior.log_prob(zs[0])
        return torch.expm1(torch.logsumexp(log_post + log_density - model.log_proposal(x, zs), 0))


def exact_sleep_phi_target(model, order: int | None = None, chunk: int = 4096) -> Tensor:
    """E_{(z, x)~p_θ}[∇φ log q_φ(z | x)] over ``model.q_parameters()`` [P_φ]: what the sleep phase estimates.

    - Factor analysis with a linear Gaussian proposal: closed form.  With y = z_j − m_j(x) and
      u = −2 log s_j(x) jointly Gaussian (linear in (z, x)),
      E[y² eᵘ] = exp(μ_u + σ_u²/2) ((μ_y + Cov(y, u))² + σ_y²).
    - Bernoulli likelihood with D ≤ 16: sum over all 2^D binary x and over the latent grid
      (enumeration or quadrature), in chunks of ``chunk`` data states.

    Raises:
        NoExactReference: any other model.
    """
    k = kind(model)
    params = model.q_parameters()
    if k == "factor_analysis":
        return flat_grad(params, _fa_expected_sleep_log_q(model))
    if not model.binary_data or model.data_dim > MAX_ENUMERATED_DATA:
        raise NoExactReference(
            f"the sleep-φ target needs a factor-analysis model or binary data of width <= {MAX_ENUMERATED_DATA} "
            f"(got width {model.data_dim}, binary={model.binary_data})"
        )
    p = next(model.parameters())
    xs = binary_states(model.data_dim, p.dtype, p.device)
    gen = model.generative[0]
    factorial = isinstance(gen, BernoulliLayer)
    with torch.no_grad():
        zs, log_mass = latent_states(model, order)
        if factorial:
            logits = gen.logits(zs[0])  # [S, D]; log p(x | z) for all pairs as one product
            log_norm = log_mass - torch.nn.functional.softplus(logits).sum(-1)
    if not factorial:  # its log_prob holds [S, chunk, D, H] (NADE's hidden units H): keep that near 2^24 numbers
        chunk = max(1, min(chunk, 2**24 // (zs[0].shape[0] * model.data_dim * getattr(gen, "hidden", 1))))
    total = torch.zeros(sum(q.numel() for q in params), dtype=p.dtype, device=p.device)
    for xc in xs.split(chunk):
        with torch.no_grad():
            if factorial:
                log_joint = log_norm[:, None] + logits @ xc.T
            else:  # an autoregressive p(x | z) (NADE, DARN): its log-density of every pair
                log_joint = log_mass[:, None] + gen.log_prob(xc, zs[0][:, None, :])
            mass = torch.exp(log_joint)  # p(z_s, x) [S, chunk]; sums to 1 overall
        total += flat_grad(params, _weighted_log_q(model, xc, zs, mass))
    return total


def _weighted_log_q(model, x: Tensor, zs: list[Tensor], mass: Tensor) -> Tensor:
    """Σ_{s,n} mass[s, n] log q_φ(z_s | x_n), through the proposal's sufficient statistics where it can.

    A one-layer Bernoulli or Gaussian q is an exponential family in z, so only Σ_s mass and
    Σ_s mass·z (and Σ_s mass·z²) per x_n are needed: [S, N] @ [S, d] products instead of an
    [S, N, d] broadcast.
    """
    layer = model.recognition[0]
    if model.num_layers == 1 and isinstance(layer, (BernoulliLayer, GaussianLayer)):
        z = zs[0]
        m0, m1 = mass.sum(0), mass.T @ z  # [N], [N, d]
        if isinstance(layer, BernoulliLayer):
            logits = layer.logits(x)
            return (m1 * logits).sum() - (m0 * torch.nn.functional.softplus(logits).sum(-1)).sum()
        mean, log_scale = layer.params(x)
        m2 = mass.T @ (z * z)
        quad = (m2 - 2 * m1 * mean + m0[:, None] * mean**2) * torch.exp(-2 * log_scale)
        return (-0.5 * quad - m0[:, None] * log_scale).sum() - 0.5 * z.shape[-1] * math.log(2 * math.pi) * m0.sum()
    return (mass * model.log_proposal(x, [z[:, None, :] for z in zs])).sum()


def _fa_expected_sleep_log_q(model) -> Tensor:
    _check_fixed_prior(model, "the closed-form sleep-φ target")
    rec = model.recognition[0]
    if not rec.affine:
        raise NoExactReference("the closed-form sleep-φ target needs a linear proposal (HelmholtzMachine.factor_analysis builds one)")
    layer = model.generative[0]
    with torch.no_grad():
        w, b = layer.output_affine()
        dim_x, dim_z = w.shape
        eye = torch.eye(dim_z, dtype=w.dtype, device=w.device)
        # v = (z, x) ~ N(μ_v, C)
        mu_v = torch.cat([torch.zeros(dim_z, dtype=w.dtype, device=w.device), b])
        c = torch.cat([torch.cat([eye, w.T], 1), torch.cat([w, w @ w.T + torch.diag(torch.exp(2 * layer.log_scale))], 1)], 0)
    rec_w, rec_b = rec.output_affine()
    a, c_m = rec_w[:dim_z], rec_b[:dim_z]  # mean of q: a x + c_m
    bl, e = rec_w[dim_z:], rec_b[dim_z:]  # log-scale of q: bl x + e
    zeros = torch.zeros_like(eye)
    a_y = torch.cat([eye, -a], 1)  # y = a_y v − c_m
    a_u = torch.cat([zeros, -2 * bl], 1)  # u = a_u v − 2 e
    mu_y, mu_u = a_y @ mu_v - c_m, a_u @ mu_v - 2 * e
    var_y = ((a_y @ c) * a_y).sum(1)
    var_u = ((a_u @ c) * a_u).sum(1)
    cov_yu = ((a_y @ c) * a_u).sum(1)
    e_y2_eu = torch.exp(mu_u + 0.5 * var_u) * ((mu_y + cov_yu) ** 2 + var_y)
    e_log_s = bl @ mu_v[dim_z:] + e
    return (-0.5 * e_y2_eu - e_log_s).sum() - 0.5 * dim_z * math.log(2 * math.pi)


# ------------------------------------------------------------------ builders


def _sample_batch(model, batch: int, seed: int) -> Tensor:
    torch.manual_seed(seed + 1)
    return model.sample(batch)[1]


def factor_analysis_reference(
    data_dim: int = 6, latent_dim: int = 2, batch: int = 16, seed: int = 0, mismatch: float = 1.0
) -> tuple[HelmholtzMachine, Tensor]:
    """A float64 factor-analysis model and a batch x [batch, data_dim] drawn from it.

    W ~ N(0, 1), b ~ N(0, 1), σ = 0.5·e^{N(0, 0.1²)}.  The proposal is a *partly trained* one: the
    exact posterior mean map with (10·mismatch)% multiplicative noise on its weights and an offset
    of N(0, (mismatch·s/2)²), and scale (1 + mismatch/2)·s on every coordinate, s = √λ_max(S)
    with S the posterior covariance; so q is at least as broad as the posterior and importance
    weights have finite variance (a Gaussian q narrower than half the posterior would not).
    """
    torch.manual_seed(seed)
    model = HelmholtzMachine.factor_analysis(data_dim, latent_dim).double()
    gen = model.generative[0]
    (w, b), (rec_w, rec_b) = gen.output_affine(), model.recognition[0].output_affine()
    with torch.no_grad():
        w.normal_()
        b.normal_()
        gen.log_scale.copy_(math.log(0.5) + 0.1 * torch.randn(data_dim, dtype=torch.float64))
        psi_inv, cov = _fa_posterior_cov(gen)
        a = cov @ w.T * psi_inv  # posterior mean = a (x − b)
        sd = torch.linalg.eigvalsh(cov).max().sqrt()
        rec_w[:latent_dim] = a * (1 + 0.1 * mismatch * torch.randn_like(a))
        rec_b[:latent_dim] = -(a @ b) + 0.5 * mismatch * sd * torch.randn(latent_dim, dtype=w.dtype)
        rec_w[latent_dim:] = 0.0
        rec_b[latent_dim:] = torch.log((1 + 0.5 * mismatch) * sd)
    return model, _sample_batch(model, batch, seed)


def sbn_reference(
    data_dim: int = 16, latents: int = 8, batch: int = 16, seed: int = 0, scale: float = 1.5, q_scale: float = 0.3
) -> tuple[HelmholtzMachine, Tensor]:
    """A float64 one-layer SBN with random weights and a batch x [batch, data_dim] drawn from it.

    p weights ~ N(0, scale²) give a peaked posterior; q weights ~ N(0, q_scale²) a broad
    proposal far from it, so importance weights have a moderate, bounded variance.
    """
    torch.manual_seed(seed)
    model = HelmholtzMachine.sbn([data_dim, latents]).double()
    with torch.no_grad():
        for p in model.p_parameters():
            p.copy_(torch.randn_like(p) * scale)
        for p in model.q_parameters():
            p.copy_(torch.randn_like(p) * q_scale)
    return model, _sample_batch(model, batch, seed)


def quadrature_reference(
    data_dim: int = 12, latent_dim: int = 2, hidden: Sequence[int] = (8,), batch: int = 16, seed: int = 0, scale: float = 1.0
) -> tuple[HelmholtzMachine, Tensor]:
    """A float64 Gaussian-latent model (``HelmholtzMachine.gaussian``) with a 1-D or 2-D latent and a
    Bernoulli likelihood, and a batch x [batch, data_dim] drawn from it.

    Decoder weights ~ N(0, scale²) (a tanh MLP with ``hidden`` units); the proposal's mean is
    PyTorch's default initialisation of its MLP and its scale is 1 for every x.  Since
    p(z | x) ≤ N(z; 0, I) / p(x), a q of unit scale keeps importance weights of finite variance
    (a narrower q, as random initialisation can give, may not: χ² of 10²⁵ was seen).

    Raises:
        ValueError: latent_dim outside 1..3.
    """
    if not 1 <= latent_dim <= MAX_QUADRATURE_DIM:
        raise ValueError(f"latent_dim must be 1..{MAX_QUADRATURE_DIM} for quadrature, got {latent_dim}")
    torch.manual_seed(seed)
    model = HelmholtzMachine.gaussian([data_dim, latent_dim], hidden=tuple(hidden), likelihood="bernoulli").double()
    with torch.no_grad():
        for p in model.p_parameters():
            p.copy_(torch.randn_like(p) * scale)
        last_w, last_b = model.recognition[0].output_affine()
        last_w[latent_dim:] = 0.0  # log-scale head: σ_q = 1 for every x
        last_b[latent_dim:] = 0.0
    return model, _sample_batch(model, batch, seed)


#: name -> builder ``(batch=..., seed=...) -> (model, x)``.
REFERENCES: dict[str, Callable[..., tuple[HelmholtzMachine, Tensor]]] = {
    "factor-analysis": factor_analysis_reference,
    "sbn": sbn_reference,
    "gaussian-quadrature": quadrature_reference,
}


def build_reference(name: str, **kwargs) -> tuple[HelmholtzMachine, Tensor]:
    """Build a reference by name (see :data:`REFERENCES`).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in REFERENCES:
        raise ValueError(f"unknown reference {name!r}; choose one of {sorted(REFERENCES)}")
    return REFERENCES[name](**kwargs)
