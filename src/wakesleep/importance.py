"""Log-weights statistics, defined once: log-mean-exp, self-normalised weights, effective sample size.

Every importance-sampling estimator and evaluation in the package reads its K particles'
log-weights log w_k = log p_θ(x, z_k) − log q_φ(z_k | x), [K, B] (particles first), through these
functions, in the spirit of Pyro's ``LogWeightsMixin`` (``pyro/infer/importance.py``):

- :func:`log_mean_exp`: log (1/K) Σ_k w_k per datapoint, the K-sample bound (Burda et al. 2016),
  and :func:`log_mean_exp_chunks`, the same over particles drawn in chunks (evaluation);
- :func:`normalised_weights`: w̃ = softmax_k(log w) per datapoint (not once per batch);
- :func:`live_normalised_weights`: the same, with datapoints whose K log-weights are all −inf
  given zero weight instead of NaN;
- :func:`effective_sample_size`: ESS = (Σ_k w_k)² / Σ_k w_k² = 1 / Σ_k w̃_k², in [1, K].

All in log space and nats; none of them detaches (callers decide where gradients flow).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


def log_mean_exp(log_w: Tensor, dim: int = 0) -> Tensor:
    """log (1/K) Σ_k exp(log_w_k) along ``dim`` (K = ``log_w.shape[dim]``): from [K, B] to [B], nats.

    With log-weights this is the K-sample importance-weighted bound L̂_K (IWAE), computed as
    ``logsumexp - log K`` without exponentiating an unnormalised value.
    """
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def log_mean_exp_chunks(chunks: Iterable[Tensor], k: int) -> Tensor:
    """:func:`log_mean_exp` over K particles that arrive in chunks of log-weights [K_c, B] (Σ K_c = K),
    so that only one chunk is held at a time: [B], nats.  The running log Σ starts at −inf and
    takes each chunk's logsumexp by ``logaddexp``; log K is subtracted once at the end.

    Raises:
        ValueError: no chunks.
    """
    acc = None
    for log_w in chunks:
        if acc is None:
            acc = torch.full(log_w.shape[1:], -math.inf, dtype=log_w.dtype, device=log_w.device)
        acc = torch.logaddexp(acc, torch.logsumexp(log_w, 0))
    if acc is None:
        raise ValueError("log_mean_exp_chunks got no chunks of log-weights")
    return acc - math.log(k)


def normalised_weights(log_w: Tensor, dim: int = 0) -> Tensor:
    """Self-normalised importance weights w̃ = softmax(log w) along ``dim`` (the particles), per datapoint:
    the shape of ``log_w`` (e.g. [K, B]), summing to 1 along ``dim``.

    A datapoint whose log-weights are all −inf gets NaN weights (see :func:`live_normalised_weights`).
    """
    return torch.softmax(log_w, dim)


def live_normalised_weights(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """Self-normalised weights over K for log-weights [K, B] that may be all −inf for a datapoint.

    Returns:
        ``(w, dead)``: w [K, B] = softmax_k(log w) for every live datapoint and 0 for a dead one
        (all K log-weights −inf: it carries no information, and softmax would return NaN);
        ``dead`` [B] bool.  NaN log-weights still give NaN weights, for the caller to see.
    """
    dead = torch.isneginf(log_w).all(0)
    w = torch.softmax(log_w.masked_fill(dead, 0.0), dim=0).masked_fill(dead, 0.0)  # per datapoint, over K
    return w, dead


def weights_effective_sample_size(w: Tensor) -> Tensor:
    """ESS = 1 / Σ_k w̃_k² per datapoint from normalised weights w̃ [K, B]: [B] in [1, K]
    (inf for a datapoint whose weights are all 0)."""
    return 1.0 / (w * w).sum(0)


def effective_sample_size(log_w: Tensor) -> Tensor:
    """ESS = (Σ_k w_k)² / Σ_k w_k² = 1 / Σ_k w̃_k² per datapoint, from log-weights [K, B]; returns [B] in [1, K].

    Computed from the normalised weights w̃ = softmax(log w), so it is exact however large the
    log-weights are (no exp of an unnormalised value).
    """
    return weights_effective_sample_size(normalised_weights(log_w))


def mean_live_effective_sample_size(w: Tensor, dead: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ESS over the live datapoints (NaN if none) and the count of dead ones, from
    :func:`live_normalised_weights`'s ``(w, dead)``: ``(ess, n_dead)``, scalars in w's dtype.

    Written without boolean indexing or a branch on data, so that no step waits on the device.
    """
    n_dead = dead.sum().to(w.dtype)
    ess = torch.where(dead, 0.0, weights_effective_sample_size(w)).sum() / (dead.numel() - n_dead)
    return ess, n_dead
