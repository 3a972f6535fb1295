"""Reweighted wake-sleep (Bornschein & Bengio, ICLR 2015, arXiv 1406.2751)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from wakesleep.estimators.base import Estimator, EstimatorOutput, check_positive_int
from wakesleep.estimators.ws import sleep_phase_loss
from wakesleep.models.contract import PROPOSAL

Q_UPDATES = ("wake", "sleep", "both")


class RWS(Estimator):
    r"""Reweighted wake-sleep with K particles and importance weights normalised per datapoint.

    For each datapoint x draw z_1..z_K ~ q_φ(z | x) (detached),
    log w_k = log p_θ(x, z_k) − log q_φ(z_k | x),  w̃ = softmax_k(log w) (detached, per datapoint):

    - wake-θ:  ascend Σ_k w̃_k ∇θ log p_θ(x, z_k)  (self-normalised IS estimate of ∇θ log p_θ(x),
      biased for finite K, consistent as K → ∞; equal to ∇θ of the IWAE bound with q fixed);
    - wake-φ:  ascend Σ_k w̃_k ∇φ log q_φ(z_k | x)  (estimate of −∇φ KL(p_θ(z|x) ‖ q_φ(z|x)));
    - sleep-φ: ascend ∇φ log q_φ(z̃ | x̃), (z̃, x̃) ~ p_θ (the wake-sleep sleep phase).

    ``q_update="both"`` averages the two φ updates (the paper's best results).  Losses are means
    over the batch.  Source: Bornschein & Bengio (2015), ``../shared/reference/ALGORITHMS.md`` §2.
    Unlike Pyro's ``ReweightedWakeSleep``, weights are normalised over K separately for every
    datapoint, not once per batch.

    Args:
        k: particles per datapoint (≥ 1; the paper's default is 5).
        q_update: ``"wake"``, ``"sleep"`` or ``"both"``.
        sleep_batch: sleep samples per step (default: the data batch size).

    Raises:
        ValueError: for k < 1 or an unknown q_update.

    Metrics: ``objective`` = mean_b log (1/K) Σ_k w_k (the IWAE bound, nats per datapoint),
    ``ess`` = mean effective sample size of the K particles over live datapoints, and
    ``dead_datapoints``: how many datapoints had all K log-weights −inf (they contribute no gradient).
    """

    name = "rws"

    def __init__(self, k: int = 5, q_update: str = "both", sleep_batch: int | None = None):
        super().__init__()
        self.k = check_positive_int("k (particles)", k)
        if q_update not in Q_UPDATES:
            raise ValueError(f"q_update must be one of {Q_UPDATES}, got {q_update!r}")
        self.q_update = q_update
        self.sleep_batch = None if sleep_batch is None else check_positive_int("sleep_batch", sleep_batch)

    def settings(self) -> dict:
        return {"k": self.k, "q_update": self.q_update, "sleep_batch": self.sleep_batch}

    def requires(self, model) -> tuple[str, ...]:
        """``propose``, ``log_joint``, both parameter groups; ``sample`` and ``log_proposal`` unless q_update="wake"."""
        return PROPOSAL + ("p_parameters",) + (() if self.q_update == "wake" else ("sample", "log_proposal"))

    def forward(self, model, x: Tensor) -> EstimatorOutput:
        zs, log_q = model.propose(x, self.k)  # zs detached; log_q carries ∇φ
        log_p = model.log_joint(x, zs)  # carries ∇θ only
        log_w = (log_p - log_q).detach()
        # A datapoint whose K log-weights are all −inf carries no information: weight it 0 rather
        # than let softmax return NaN (0·(−inf) is guarded by the where below).
        dead = torch.isneginf(log_w).all(0)
        w = torch.softmax(log_w.masked_fill(dead, 0.0), dim=0).masked_fill(dead, 0.0)  # per datapoint, over K
        live = w != 0  # zero weight: no term, even where log p = −inf; NaN weights stay, for the trainer to see
        loss = -torch.where(live, w * log_p, 0.0).sum(0).mean()
        if self.q_update != "sleep":
            wake_phi = -torch.where(live, w * log_q, 0.0).sum(0).mean()
        if self.q_update != "wake":
            sleep_phi = sleep_phase_loss(model, self.sleep_batch or x.shape[0])
        if self.q_update == "wake":
            loss = loss + wake_phi
        elif self.q_update == "sleep":
            loss = loss + sleep_phi
        else:
            loss = loss + 0.5 * (wake_phi + sleep_phi)
        objective = (torch.logsumexp(log_w, 0) - math.log(self.k)).mean()
        # Mean ESS over the live datapoints (NaN if none), and the count of dead ones: written
        # without boolean indexing or a branch on data, so that no step waits on the device.
        n_dead = dead.sum().to(log_w.dtype)
        ess = torch.where(dead, 0.0, 1.0 / (w * w).sum(0)).sum() / (dead.numel() - n_dead)
        metrics = {"objective": objective, "ess": ess, "dead_datapoints": n_dead}
        return EstimatorOutput(loss, metrics)
