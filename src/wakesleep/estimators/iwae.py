"""The importance-weighted autoencoder (Burda, Grosse & Salakhutdinov, ICLR 2016, arXiv 1509.00519)."""

from __future__ import annotations

import torch
from torch import Tensor

from wakesleep.estimators.base import EstimatorOutput, ReparameterisedEstimator
from wakesleep.importance import effective_sample_size, log_mean_exp


class IWAE(ReparameterisedEstimator):
    r"""Importance-weighted autoencoder: ascend L_K(x) = E[log (1/K) Σ_k w_k] in θ and φ jointly.

    z_k = g_φ(ε_k, x) reparameterised, log w_k = log p_θ(x, z_k) − log q_φ(z_k | x);
    the loss is −mean_b [logsumexp_k log w_k − log K].  L_K ≤ log p(x), tightening as K grows.

    Source: Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016;
    ``../shared/reference/ALGORITHMS.md`` §3.

    Args:
        k: particles per datapoint (≥ 1).

    Raises:
        ValueError: for k < 1, or (on use) a model with discrete latents.

    Metrics: ``objective`` (the bound, nats per datapoint), ``ess``.
    """

    name = "iwae"

    def __init__(self, k: int = 5):
        super().__init__(k)

    def loss_from_log_weights(self, log_w: Tensor) -> EstimatorOutput:
        bound = log_mean_exp(log_w).mean()
        with torch.no_grad():
            ess = effective_sample_size(log_w).mean()
        return EstimatorOutput(-bound, {"objective": bound.detach(), "ess": ess})
