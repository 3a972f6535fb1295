"""Shared helpers for tests against exact answers: small models and repeated-estimate statistics."""

from __future__ import annotations

import math

import torch

from wakesleep.models import HelmholtzMachine


def small_sbn(data_dim: int = 16, latents: int = 8, seed: int = 0, scale: float = 1.5, q_scale: float = 0.3) -> HelmholtzMachine:
    """A float64 one-layer SBN with random weights: a peaked posterior (p weights × ``scale``) and a
    broad proposal (q weights × ``q_scale``), so that importance weights have a bounded, moderate
    variance (heavy-tailed weights would make Monte Carlo standard errors unreliable) while the
    proposal is still far from the posterior."""
    torch.manual_seed(seed)
    model = HelmholtzMachine.sbn([data_dim, latents]).double()
    with torch.no_grad():
        for p in model.p_parameters():
            p.copy_(torch.randn_like(p) * scale)
        for p in model.q_parameters():
            p.copy_(torch.randn_like(p) * q_scale)
    return model


def grads(params, loss) -> torch.Tensor:
    """The flattened gradient of ``loss`` w.r.t. ``params`` (zeros where unused)."""
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, gs)])


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
