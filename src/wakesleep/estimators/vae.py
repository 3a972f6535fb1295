"""The variational autoencoder (Kingma & Welling, ICLR 2014, arXiv 1312.6114): the ELBO, averaged over k samples."""

from __future__ import annotations

from torch import Tensor

from wakesleep.estimators.base import EstimatorOutput, ReparameterisedEstimator


class VAE(ReparameterisedEstimator):
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

    def loss_from_log_weights(self, log_w: Tensor) -> EstimatorOutput:
        elbo = log_w.mean(0).mean()
        return EstimatorOutput(-elbo, {"objective": elbo.detach()})
