"""Classical wake-sleep (Hinton, Dayan, Frey & Neal, Science 1995)."""

from __future__ import annotations

import torch
from torch import Tensor

from wakesleep.estimators.base import Estimator, EstimatorOutput, check_positive_int
from wakesleep.models.contract import PROPOSAL


def sleep_phase_loss(model, n: int) -> Tensor:
    """The sleep-phase surrogate for φ: −(1/n) Σ_i log q_φ(z̃_i | x̃_i), (z̃_i, x̃_i) ~ p_θ detached.

    Its gradient is −∇φ of the sleep objective, an unbiased estimate of ∇φ KL(p_θ(z, x) ‖ p_θ(x) q_φ(z | x))
    up to a constant: q is fitted where the *model* puts mass, not where the data lies.
    θ receives no gradient (the sample is drawn without gradient).

    Returns a scalar in nats; ``n`` ≥ 1 sleep samples (a model's ``sample`` decides what it refuses).
    """
    zs, x = model.sample(n)
    return -model.log_proposal(x, zs).mean()


class WakeSleep(Estimator):
    r"""Classical wake-sleep (WS).

    Wake (θ):  ascend (1/L) Σ_l ∇θ log p_θ(x, z_l),  z_l ~ q_φ(z | x) detached.
    Sleep (φ): ascend ∇φ log q_φ(z̃ | x̃),            (z̃, x̃) ~ p_θ detached.

    Source: Hinton, Dayan, Frey & Neal, "The wake-sleep algorithm for unsupervised neural
    networks", Science 268 (1995); ``../shared/reference/ALGORITHMS.md`` §1.  WS is RWS with K = 1
    and sleep-phase q updates only.

    Args:
        samples: L, wake-phase samples per datapoint (≥ 1).
        sleep_batch: number of sleep samples per step (default: the data batch size).

    Raises:
        ValueError: for L < 1 or a sleep batch < 1.

    Metrics: ``wake_log_joint`` (mean log p(x, z), nats), ``sleep_log_q``.
    """

    name = "ws"
    #: φ is updated by the sleep phase only (the attribute RWS sets per instance; read by diagnostics).
    q_update = "sleep"

    def __init__(self, samples: int = 1, sleep_batch: int | None = None):
        super().__init__()
        self.samples = check_positive_int("samples (L)", samples)
        self.sleep_batch = None if sleep_batch is None else check_positive_int("sleep_batch", sleep_batch)

    def settings(self) -> dict:
        return {"samples": self.samples, "sleep_batch": self.sleep_batch}

    def requires(self, model) -> tuple[str, ...]:
        """``propose`` and ``log_joint`` (wake), ``sample`` and ``log_proposal`` (sleep), both parameter groups."""
        return PROPOSAL + ("p_parameters", "sample", "log_proposal")

    def forward(self, model, x: Tensor) -> EstimatorOutput:
        with torch.no_grad():
            zs, _ = model.propose(x, self.samples)
        wake = -model.log_joint(x, zs).mean()
        sleep = sleep_phase_loss(model, self.sleep_batch or x.shape[0])
        return EstimatorOutput(wake + sleep, {"wake_log_joint": -wake.detach(), "sleep_log_q": -sleep.detach()})


class SleepPhase(Estimator):
    """Fits q_φ alone by the sleep phase: ascend ∇φ log q_φ(z̃ | x̃), (z̃, x̃) ~ p_θ (Hinton et al. 1995).

    θ receives no gradient.  Used after an estimator that learns θ only (ALWS: ALGORITHMS.md §4)
    so that the importance-sampled test log-likelihood has a proposal; the proposal changes the
    variance of that estimate, not its expectation.  The loss is :func:`sleep_phase_loss` with
    as many sleep samples as the data batch has datapoints.

    Metrics: ``sleep_log_q`` (mean log q_φ(z̃ | x̃), nats).
    """

    name = "sleep-proposal"

    def forward(self, model, x: Tensor) -> EstimatorOutput:
        loss = sleep_phase_loss(model, x.shape[0])
        return EstimatorOutput(loss, {"sleep_log_q": -loss.detach()})
