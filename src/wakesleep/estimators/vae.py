"""Baselines for reparameterisable latents: the VAE (ELBO) and the IWAE bound."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from wakesleep.estimators.base import Estimator, EstimatorOutput, check_positive_int
from wakesleep.models.contract import TRAINING_WITH_PROPOSAL


def _check_reparameterizable(model, name: str) -> None:
    if not getattr(model, "reparameterizable", False):
        raise ValueError(
            f"{name} needs reparameterisable latents (propose(x, k, reparameterize=True) and the attribute "
            f"reparameterizable = True); {type(model).__name__} has none (discrete latents?): use --algorithm rws or ws instead"
        )


class IWAE(Estimator):
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
        super().__init__()
        self.k = check_positive_int("k (particles)", k)

    def settings(self) -> dict:
        return {"k": self.k}

    def requires(self, model) -> tuple[str, ...]:
        """``propose`` (called with ``reparameterize=True``), ``log_joint``, both parameter groups."""
        return TRAINING_WITH_PROPOSAL

    def check_model(self, model) -> None:
        _check_reparameterizable(model, type(self).__name__)

    def log_weights(self, model, x: Tensor) -> Tensor:
        zs, log_q = model.propose(x, self.k, reparameterize=True)
        return model.log_joint(x, zs) - log_q

    def forward(self, model, x: Tensor) -> EstimatorOutput:
        self.check_model(model)
        log_w = self.log_weights(model, x)
        bound = (torch.logsumexp(log_w, 0) - math.log(self.k)).mean()
        with torch.no_grad():
            w = torch.softmax(log_w, 0)
            ess = (1.0 / (w * w).sum(0)).mean()
        return EstimatorOutput(-bound, {"objective": bound.detach(), "ess": ess})


class VAE(IWAE):
    r"""Variational autoencoder: ascend the ELBO E_q[log p_θ(x, z) − log q_φ(z | x)], averaged over k samples.

    The loss is −mean_b (1/k) Σ_k log w_k (k = 1 is the usual VAE; the IWAE paper's "VAE, k"
    averages k single-sample ELBOs).  Source: Kingma & Welling, "Auto-Encoding Variational Bayes",
    ICLR 2014; Burda et al. 2016 for the k-sample form.

    Raises:
        ValueError: for k < 1, or (on use) a model with discrete latents.
    """

    name = "vae"

    def __init__(self, k: int = 1):
        super().__init__(k)

    def forward(self, model, x: Tensor) -> EstimatorOutput:
        self.check_model(model)
        log_w = self.log_weights(model, x)
        elbo = log_w.mean(0).mean()
        return EstimatorOutput(-elbo, {"objective": elbo.detach()})
