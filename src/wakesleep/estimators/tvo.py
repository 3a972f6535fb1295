"""The thermodynamic variational objective (Masrani, Le & Wood, NeurIPS 2019, arXiv 1907.00031)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from wakesleep.estimators.base import EstimatorOutput, ParticleEstimator, check_positive_int
from wakesleep.importance import normalised_weights


def beta_schedule(partitions: int, beta_min: float) -> list[float]:
    """0, then ``partitions`` log-spaced points from β_1 = ``beta_min`` to 1: [β_0 = 0, β_1, …, β_J = 1]."""
    if partitions == 1:
        return [0.0, 1.0]
    return [0.0] + [beta_min ** (1 - j / (partitions - 1)) for j in range(partitions)]


class TVO(ParticleEstimator):
    r"""TVO: ascend the left Riemann sum of the thermodynamic integral of log p(x), in θ and φ jointly.

    For a partition 0 = β_0 < β_1 < … < β_J = 1 and π_β(z) ∝ π̃_β(z) = q_φ(z | x)^{1−β} p_θ(x, z)^β,

        TVO(x) = Σ_{j<J} (β_{j+1} − β_j) E_{π_βj}[log w(z)],   log w = log p_θ(x, z) − log q_φ(z | x),

    a lower bound on log p(x) = ∫_0^1 E_{π_β}[log w] dβ (the integrand rises with β); β_0 = 0 alone is the ELBO.

    Each expectation is estimated by self-normalised importance sampling from the same K samples
    z_k ~ q_φ(z | x) with weights ω^β_k = softmax_k(β log w_k) (q^{1−β} p^β / q = w^β), and its
    gradient by the paper's covariance estimator (Masrani et al. 2019, §4, eq. 12–13):

        ∇ E_{π_β}[f] = E_{π_β}[∇f] + Cov_{π_β}[∇ log π̃_β(z), f(z)],  f = log w,
        ∇ log π̃_β = (1 − β) ∇ log q_φ(z | x) + β ∇ log p_θ(x, z),

    implemented as the surrogate Σ_k ω_k f_k + Σ_k ω_k (sg(f_k) − f̄) log π̃_β(z_k), f̄ = Σ_k ω_k sg(f_k),
    with ω detached: its gradient is the SNIS estimate Σ_k ω_k ∇f_k + Σ_k ω_k (f_k − f̄) ∇ log π̃_β(z_k)
    of both terms (biased for finite K, consistent as K → ∞).  The loss is −mean_b Σ_j Δβ_j surrogate_j.
    Source: ``../shared/reference/ALGORITHMS.md`` §8.

    Args:
        k: samples per datapoint (≥ 1; the covariance needs ≥ 2 to be non-zero).
        betas: the whole partition [β_0 = 0, …, β_J ≤ 1], strictly increasing; default
            :func:`beta_schedule` (``partitions``, ``beta_min``): 0 then log-spaced from β_1 to 1.
        partitions: J, when ``betas`` is not given.
        beta_min: β_1, when ``betas`` is not given.

    Raises:
        ValueError: for k < 1, a partition that does not start at 0, is not increasing or passes 1.

    Metrics: ``objective`` (the TVO estimate, nats per datapoint), ``elbo`` (the β = 0 term alone).
    """

    name = "tvo"

    def __init__(self, k: int = 10, betas: Sequence[float] | None = None, partitions: int = 5, beta_min: float = 0.1):
        super().__init__(k)
        self.partitions = check_positive_int("partitions", partitions)
        if not 0.0 < beta_min < 1.0:
            raise ValueError(f"beta_min must be in (0, 1), got {beta_min!r}")
        self.beta_min = float(beta_min)
        betas = beta_schedule(self.partitions, self.beta_min) if betas is None else [float(b) for b in betas]
        if len(betas) < 2 or betas[0] != 0.0 or betas[-1] > 1.0 or any(b >= c for b, c in zip(betas, betas[1:])):
            raise ValueError(f"betas must be a strictly increasing partition from 0 to at most 1 with at least 2 points, got {betas}")
        self.betas = betas
        self._schedules: dict = {}  # (dtype, device) -> (β, widths) tensors

    def _schedule(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """β_0 … β_{J−1} [J, 1, 1] and the widths β_{j+1} − β_j [J], built once per dtype and device
        (not on every step)."""
        key = (dtype, device)
        if key not in self._schedules:
            beta = torch.tensor(self.betas[:-1], dtype=dtype, device=device)[:, None, None]
            width = torch.tensor([c - b for b, c in zip(self.betas, self.betas[1:])], dtype=dtype, device=device)
            self._schedules[key] = (beta, width)
        return self._schedules[key]

    def settings(self) -> dict:
        return {**super().settings(), "betas": list(self.betas), "partitions": self.partitions, "beta_min": self.beta_min}

    def forward(self, model, x: Tensor) -> EstimatorOutput:
        zs, log_q = model.propose(x, self.k)
        log_p = model.log_joint(x, zs)
        f = log_p - log_q  # [K, B], ∇θ and ∇φ
        fd = f.detach()
        beta, width = self._schedule(f.dtype, f.device)  # [J, 1, 1], [J]
        omega = normalised_weights(beta * fd, dim=1)  # [J, K, B]
        f_bar = (omega * fd).sum(1, keepdim=True)  # [J, 1, B]
        log_tilde = (1 - beta) * log_q + beta * log_p  # log π̃_β [J, K, B]
        surrogate = (omega * f).sum(1) + (omega * (fd - f_bar) * log_tilde).sum(1)  # [J, B]
        loss = -(width[:, None] * surrogate).sum(0).mean()
        objective = (width[:, None] * f_bar[:, 0]).sum(0).mean()
        return EstimatorOutput(loss, {"objective": objective, "elbo": fd.mean()})
