"""Shared helpers for tests against exact answers: small models and repeated-estimate statistics."""

from __future__ import annotations

import math

import torch

from wakesleep.models import HelmholtzMachine
from wakesleep.models.exact import flat_grad as grads  # noqa: F401 - re-exported for the tests
from wakesleep.models.exact import sbn_reference


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
