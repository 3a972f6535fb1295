"""VIMCO: variational inference for Monte Carlo objectives (Mnih & Rezende, ICML 2016, arXiv 1602.06725)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from wakesleep.estimators.base import EstimatorOutput, ParticleEstimator
from wakesleep.importance import effective_sample_size, log_mean_exp


def leave_one_out_signals(log_w: Tensor, bound: Tensor) -> Tensor:
    r"""VIMCO's per-sample learning signals L̂(z_k | z_−k) = L̂ − log (1/K)(Σ_{j≠k} w_j + ŵ_−k), [K, B], nats.

    L̂ = log (1/K) Σ_j w_j (``bound`` [B], computed once by the caller) and
    ŵ_−k = exp((1/(K−1)) Σ_{j≠k} log w_j) (the geometric mean of the others), all in log space.
    ``log_w`` [K, B] (K ≥ 2) and ``bound`` detached by the caller; finite log-weights expected
    (a −inf one makes the geometric means NaN).
    """
    k = log_w.shape[0]
    geo = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)  # log ŵ_−k, [K, B]
    # log Σ_{j≠k} w_j in O(K) and without cancellation: the sums before and after k, joined.
    pad = torch.full_like(log_w[:1], -math.inf)
    before = torch.cat([pad, torch.logcumsumexp(log_w, 0)[:-1]])
    after = torch.cat([torch.logcumsumexp(log_w.flip(0), 0).flip(0)[1:], pad])
    others = torch.logaddexp(before, after)
    return bound - (torch.logaddexp(others, geo) - math.log(k))


class VIMCO(ParticleEstimator):
    r"""VIMCO: ascend the K-sample bound L_K = E[L̂], L̂ = log (1/K) Σ_k w_k, in θ and φ jointly,
    with leave-one-out control variates for the score-function part of the φ-gradient.

    z_1..z_K ~ q_φ(z | x) detached, log w_k = log p_θ(x, z_k) − log q_φ(z_k | x), w̃ = softmax_k(log w):

    - θ ascends Σ_k w̃_k ∇θ log p_θ(x, z_k)  (= ∇θ L̂; unbiased for ∇θ L_K);
    - φ ascends Σ_k L̂(z_k | z_−k) ∇φ log q_φ(z_k | x) + Σ_k w̃_k ∇φ log w_k, with
      L̂(z_k | z_−k) = L̂ − log (1/K)(Σ_{j≠k} w_j + ŵ_−k), ŵ_−k = exp((1/(K−1)) Σ_{j≠k} log w_j)
      (the geometric-mean form, the paper's eq. 10).  The subtracted term does not depend on z_k, so
      the φ-gradient stays an unbiased estimate of ∇φ L_K (Mnih & Rezende 2016, §3).

    One surrogate, mean over the batch: −mean_b [Σ_k sg(L̂(z_k | z_−k)) log q_φ(z_k | x) + L̂], where L̂
    keeps its gradient (θ through log p, φ through −log q).  Source: ``../shared/reference/ALGORITHMS.md`` §8.

    Args:
        k: particles per datapoint (≥ 2: the leave-one-out baseline needs another sample).

    Raises:
        ValueError: for k < 2.

    Metrics: ``objective`` (L̂ averaged over the batch, nats per datapoint), ``ess``.
    """

    name = "vimco"
    k_label = "k (particles; VIMCO's leave-one-out baseline needs k >= 2)"
    k_minimum = 2

    def __init__(self, k: int = 5):
        super().__init__(k)

    def forward(self, model, x: Tensor) -> EstimatorOutput:
        zs, log_q = model.propose(x, self.k)  # zs detached; log_q carries ∇φ
        log_w = model.log_joint(x, zs) - log_q  # ∇θ through log p, ∇φ through −log q
        bound = log_mean_exp(log_w)  # L̂ [B]
        signal = leave_one_out_signals(log_w.detach(), bound.detach())  # [K, B]
        loss = -((signal * log_q).sum(0) + bound).mean()
        ess = effective_sample_size(log_w.detach()).mean()
        return EstimatorOutput(loss, {"objective": bound.detach().mean(), "ess": ess})
