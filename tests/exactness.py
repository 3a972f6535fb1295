"""Shared helpers for tests against exact answers: small models and repeated-estimate statistics."""

from __future__ import annotations

import math

import torch
from scipy.stats import t as student_t

from wakesleep.models import HelmholtzMachine
from wakesleep.models.exact import enumerated_log_joint, exact_elbo, sbn_reference  # noqa: F401 - exact_elbo re-exported for the tests
from wakesleep.models.exact import flat_grad as grads  # noqa: F401 - re-exported for the tests


def small_sbn(data_dim: int = 16, latents: int = 8, seed: int = 0, scale: float = 1.5, q_scale: float = 0.3) -> HelmholtzMachine:
    """The float64 one-layer SBN of :func:`wakesleep.models.exact.sbn_reference` (peaked posterior, broad proposal)."""
    return sbn_reference(data_dim, latents, seed=seed, scale=scale, q_scale=q_scale)[0]


def z_scores(samples: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-coordinate (mean − target) / standard error for R repeated estimates [R, P]."""
    r = samples.shape[0]
    se = samples.std(0, unbiased=True) / math.sqrt(r)
    return (samples.mean(0) - target) / se.clamp_min(1e-300)


def bias_norm_band(samples: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """‖mean − target‖ and the noise floor sqrt(Σ_j se_j²) of that norm from R repeats [R, P]."""
    r = samples.shape[0]
    bias = (samples.mean(0) - target).norm().item()
    noise = math.sqrt((samples.var(0, unbiased=True) / r).sum().item())
    return bias, noise


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


# ------------------------------------------------------------------ repeated estimates against exact targets

ALPHA = 1e-3


def z_bound(coordinates: int, repeats: int) -> float:
    """Bonferroni bound on max |z| over ``coordinates`` z-scores of means of ``repeats`` estimates."""
    return float(student_t.ppf(1 - ALPHA / (2 * coordinates), repeats - 1))


def max_z(samples: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """max |mean − target| / se over coordinates (se floored at float64 rounding of the target), and its bound."""
    se = samples.std(0, unbiased=True) / math.sqrt(samples.shape[0])
    floor = 1e-12 * target.abs().max().clamp_min(1.0)
    z = (samples.mean(0) - target) / torch.maximum(se, floor)
    return z.abs().max().item(), z_bound(len(z), samples.shape[0])


def assert_unbiased(samples, target, what=""):
    z, bound = max_z(samples, target)
    assert z < bound, (what, z, bound)


def split(model, g):
    n = sum(p.numel() for p in model.p_parameters())
    return g[:n], g[n:]


def estimates(model, x, est, groups, replicas=1, scale_metric=None):
    """``groups`` independent estimates of (θ-gradient, φ-gradient) of the estimator's ascent
    direction, [G, P_θ], [G, P_φ]; each the mean of ``replicas`` estimates, got in one call on x
    repeated ``replicas`` times (every estimator here treats datapoints independently, and its loss is
    a batch mean), so that a few calls give the statistics of thousands of estimates."""
    params = model.p_parameters() + model.q_parameters()
    xr = x.repeat(replicas, 1)
    out = []
    for _ in range(groups):
        o = est(model, xr)
        g = grads(params, -o.loss)
        if scale_metric is not None:
            t, p = split(model, g)
            g = torch.cat([t, p * o.metrics[scale_metric]])
        out.append(g)
    t, p = split(model, torch.stack(out).T)
    return t.T, p.T


def exact_states(model, x):
    zs, log_p = enumerated_log_joint(model, x)
    return log_p, model.log_proposal(x, zs)  # [S, B] each, with gradient


def exact_k_bound(model, x, k):
    """L_K = E_{q^K}[log (1/K) Σ_k w_k], batch mean, summed over all S^K tuples of states."""
    log_p, log_q = exact_states(model, x)
    log_w = log_p - log_q
    s = log_w.shape[0]
    idx = torch.cartesian_prod(*[torch.arange(s)] * k) if k > 1 else torch.arange(s)[:, None]
    bound = torch.logsumexp(log_w[idx], 1) - math.log(k)  # [S^K, B]
    return (log_q[idx].sum(1).exp() * bound).sum(0).mean()


def exact_tvo(model, x, betas):
    """Σ_j (β_{j+1} − β_j) E_{π_βj}[log w], π_β ∝ q^{1−β} p^β by enumeration, batch mean."""
    log_p, log_q = exact_states(model, x)
    log_w = log_p - log_q
    total = 0.0
    for b, c in zip(betas, betas[1:]):
        pi = torch.softmax(log_q + b * log_w, 0)
        total = total + (c - b) * (pi * log_w).sum(0)
    return total.mean()


def exact_grads(model, x, objective):
    return split(model, grads(model.p_parameters() + model.q_parameters(), objective))
