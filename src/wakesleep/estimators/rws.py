"""Reweighted wake-sleep (Bornschein & Bengio, ICLR 2015, arXiv 1406.2751)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from wakesleep.estimators.base import Estimator, EstimatorOutput, check_positive_int
from wakesleep.estimators.ws import sleep_phase_loss
from wakesleep.importance import live_normalised_weights, log_mean_exp, mean_live_effective_sample_size
from wakesleep.models.contract import TRAINING_WITH_PROPOSAL, has_member, leaves, tree_map

Q_UPDATES = ("wake", "sleep", "both")


def phi_loss(q_update: str, wake=None, sleep=None):
    """φ's surrogate loss for ``q_update``: the wake-φ loss, the sleep-φ loss, or their mean
    (``"both"``, Bornschein & Bengio 2015's best setting); scalars, the unused one may be None."""
    if q_update == "wake":
        return wake
    if q_update == "sleep":
        return sleep
    return 0.5 * (wake + sleep)


class RWS(Estimator):
    r"""Reweighted wake-sleep with K particles and importance weights normalised per datapoint.

    For each datapoint x draw z_1..z_K ~ q_φ(z | x) (detached),
    log w_k = log p_θ(x, z_k) − log q_φ(z_k | x),  w̃ = softmax_k(log w) (detached, per datapoint):

    - wake-θ:  ascend Σ_k w̃_k ∇θ log p_θ(x, z_k)  (self-normalised IS estimate of ∇θ log p_θ(x),
      biased for finite K, consistent as K → ∞; equal to ∇θ of the IWAE bound with q fixed);
    - wake-φ:  ascend Σ_k w̃_k ∇φ log q_φ(z_k | x)  (estimate of −∇φ KL(p_θ(z|x) ‖ q_φ(z|x)));
    - sleep-φ: ascend ∇φ log q_φ(z̃ | x̃), (z̃, x̃) ~ p_θ (the wake-sleep sleep phase).

    ``q_update="both"`` averages the two φ updates (the paper's best results).

    Defensive importance sampling (``defensive=δ`` > 0; proposed for wake-φ by Le et al. 2019): the
    K particles come from q_δ = (1 − δ) q_φ(z | x) + δ u(z), u uniform over the latents' finite
    support, and log w_k = log p_θ(x, z_k) − log q_δ(z_k | x); the wake-θ and wake-φ updates above
    use those weights (wake-φ still ascends Σ_k w̃_k ∇φ log q_φ(z_k | x), the same target
    −∇φ KL(p ‖ q_φ), now estimated from a proposal whose weights are bounded by 1/(δ u)).  Each
    particle picks its component by its own Bernoulli(δ) draw: K draws from q and K from u, one
    kept per (k, b).  u comes from the model's ``sample_uniform(x, k)`` where it has one, else
    uniformly from ``enumerate_latents()`` (log u = −log S); a u whose density is not constant (a
    program's prior: ``wakesleep.pyro``'s per-particle path) gives it at every kept particle by
    ``log_uniform(x, z)``; log q_φ of every particle from ``log_proposal``.  Le et al.'s own code
    (rrws ``gmm/``, ``dww``) does otherwise, and is not this: its wake-θ uses plain q_φ particles,
    and its wake-φ weights divide p_θ(x, z_k) of the mixed particle z_k by (1 − δ) q_φ(z'_k | x) + δ u,
    q_φ scored at the particle z'_k drawn from q_φ before the mix, not at z_k
    (``experiments/rrws_gmm.py`` runs it beside this).  Losses are means
    over the batch.  Source: Bornschein & Bengio (2015), ``../shared/reference/ALGORITHMS.md`` §2.
    Unlike Pyro's ``ReweightedWakeSleep``, weights are normalised over K separately for every
    datapoint, not once per batch.

    Args:
        k: particles per datapoint (≥ 1; the paper's default is 5).
        q_update: ``"wake"``, ``"sleep"`` or ``"both"``.
        sleep_batch: sleep samples per step (default: the data batch size).
        defensive: δ in [0, 1), the uniform component's share of the proposal (0: plain RWS;
            Le et al. use 0.2).

    Raises:
        ValueError: for k < 1, an unknown q_update or δ outside [0, 1).

    Metrics: ``objective`` = mean_b log (1/K) Σ_k w_k (the IWAE bound, nats per datapoint),
    ``ess`` = mean effective sample size of the K particles over live datapoints, and
    ``dead_datapoints``: how many datapoints had all K log-weights −inf (they contribute no gradient).
    """

    name = "rws"

    def __init__(self, k: int = 5, q_update: str = "both", sleep_batch: int | None = None, defensive: float = 0.0):
        super().__init__()
        self.k = check_positive_int("k (particles)", k)
        if q_update not in Q_UPDATES:
            raise ValueError(f"q_update must be one of {Q_UPDATES}, got {q_update!r}")
        self.q_update = q_update
        self.sleep_batch = None if sleep_batch is None else check_positive_int("sleep_batch", sleep_batch)
        if isinstance(defensive, bool) or not isinstance(defensive, (int, float)) or not 0.0 <= defensive < 1.0:
            raise ValueError(f"defensive (δ, the uniform share of the proposal) must be in [0, 1), got {defensive!r}")
        self.defensive = float(defensive)

    def settings(self) -> dict:
        return {"k": self.k, "q_update": self.q_update, "sleep_batch": self.sleep_batch, "defensive": self.defensive}

    def requires(self, model) -> tuple[str, ...]:
        """``propose``, ``log_joint``, both parameter groups; ``sample`` and ``log_proposal`` unless
        q_update="wake"; with ``defensive`` > 0 also ``log_proposal`` and ``sample_uniform`` (or,
        for a model without it, ``enumerate_latents``)."""
        out = TRAINING_WITH_PROPOSAL + (() if self.q_update == "wake" else ("sample", "log_proposal"))
        if self.defensive > 0:
            out += ("log_proposal", "sample_uniform" if has_member(model, "sample_uniform") else "enumerate_latents")
        return out  # repeats are harmless: the check lists each missing member once

    def member_hints(self) -> dict[str, str]:
        """``log_proposal`` is the sleep phase's alone (and defensive sampling's): wake-φ needs none."""
        if self.q_update == "wake" or self.defensive > 0:
            return {}
        return {
            "log_proposal": "RWS(q_update='wake') (--q-update wake) would not need log_proposal: "
            "its wake-φ update uses the log q that propose returns"
        }

    def defensive_proposal(self, model, x: Tensor):
        """K particles from q_δ = (1 − δ) q_φ + δ u: ``(zs, log_q, log_q_delta)``, log_q = log q_φ(z_k | x)
        with ∇φ, log q_δ(z_k | x) detached, both [K, B], nats.  z is opaque, so log q_φ of the mixed
        particles comes from one ``log_proposal`` call (the proposal network runs twice a step)."""
        zq, _ = model.propose(x, self.k)
        if has_member(model, "sample_uniform"):
            zu, log_u = model.sample_uniform(x, self.k)
        else:
            states = model.enumerate_latents()
            n = leaves(states)[0].shape[0]
            idx = torch.randint(n, (self.k, x.shape[0]), device=x.device)
            zu = tree_map(lambda v: v[idx], states)
            log_u = torch.full((self.k, x.shape[0]), -math.log(n), dtype=x.dtype, device=x.device)
        pick_u = torch.rand(self.k, x.shape[0], device=x.device) < self.defensive  # [K, B]
        zs = tree_map(lambda u, v: torch.where(pick_u.view(*pick_u.shape, *[1] * (u.dim() - 2)), u, v), zu, zq)
        if has_member(model, "log_uniform"):  # u's density varies (a program's prior): take it at every kept particle
            with torch.no_grad():
                log_u = model.log_uniform(x, zs)
        log_q = model.log_proposal(x, zs)
        log_q_delta = torch.logaddexp(math.log1p(-self.defensive) + log_q.detach(), math.log(self.defensive) + log_u.to(log_q.dtype))
        return zs, log_q, log_q_delta

    def forward(self, model, x: Tensor) -> EstimatorOutput:
        if self.defensive > 0:
            zs, log_q, log_q_delta = self.defensive_proposal(model, x)
        else:
            zs, log_q = model.propose(x, self.k)  # zs detached; log_q carries ∇φ
            log_q_delta = log_q.detach()
        log_p = model.log_joint(x, zs)  # carries ∇θ only
        log_w = log_p.detach() - log_q_delta
        # A datapoint whose K log-weights are all −inf carries no information: weight it 0 rather
        # than let softmax return NaN (0·(−inf) is guarded by the where below).
        w, dead = live_normalised_weights(log_w)
        live = w != 0  # zero weight: no term, even where log p = −inf; NaN weights stay, for the trainer to see
        loss = -torch.where(live, w * log_p, 0.0).sum(0).mean()
        wake_phi = -torch.where(live, w * log_q, 0.0).sum(0).mean() if self.q_update != "sleep" else None
        sleep_phi = sleep_phase_loss(model, self.sleep_batch or x.shape[0]) if self.q_update != "wake" else None
        loss = loss + phi_loss(self.q_update, wake_phi, sleep_phi)
        objective = log_mean_exp(log_w).mean()
        ess, n_dead = mean_live_effective_sample_size(w, dead)
        metrics = {"objective": objective, "ess": ess, "dead_datapoints": n_dead}
        return EstimatorOutput(loss, metrics)
