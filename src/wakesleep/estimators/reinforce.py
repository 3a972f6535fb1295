"""Score-function estimators of the ELBO's gradient: plain REINFORCE (Williams 1992) and NVIL
(Mnih & Gregor, ICML 2014, "Neural variational inference and learning in belief networks")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wakesleep.estimators.base import EstimatorOutput, ParticleEstimator, check_positive_int


class Reinforce(ParticleEstimator):
    r"""Plain REINFORCE for the ELBO, no baseline: the reference that the others' variance is measured against.

    z_1..z_K ~ q_φ(z | x) detached, learning signal l_k = log p_θ(x, z_k) − log q_φ(z_k | x) (detached):

    - θ ascends (1/K) Σ_k ∇θ log p_θ(x, z_k);
    - φ ascends (1/K) Σ_k l_k ∇φ log q_φ(z_k | x).

    Both are unbiased for the gradient of the ELBO E_q[log p_θ(x, z) − log q_φ(z | x)].  The direct
    term −∇φ log q_φ(z | x) of the ELBO's φ-gradient has zero mean under q and is *dropped* (as in
    Mnih & Gregor 2014, eq. 5).  Surrogate: −mean_b (1/K) Σ_k [log p_θ(x, z_k) + sg(l_k) log q_φ(z_k | x)].
    Source: ``../shared/reference/ALGORITHMS.md`` §8.

    Args:
        k: samples per datapoint (≥ 1), averaged (no sample is used as another's baseline).

    Raises:
        ValueError: for k < 1.

    Metrics: ``objective`` (the ELBO estimate, nats per datapoint).
    """

    name = "reinforce"
    #: What the φ-update estimates (read by :mod:`wakesleep.lab.diagnostics`): ∇φ ELBO.
    q_update = "elbo"
    k_label = "k (samples)"

    def __init__(self, k: int = 1):
        super().__init__(k)

    def forward(self, model, x: Tensor) -> EstimatorOutput:
        zs, log_q = model.propose(x, self.k)
        log_p = model.log_joint(x, zs)
        signal = (log_p - log_q).detach()
        loss = -(log_p + signal * log_q).mean(0).mean()
        return EstimatorOutput(loss, {"objective": signal.mean()})


class NVIL(ParticleEstimator):
    r"""NVIL: REINFORCE for the ELBO with centring, an input-dependent baseline and variance normalisation.

    l_k = log p_θ(x, z_k) − log q_φ(z_k | x) (detached), z_k ~ q_φ(z | x); residual r_k = l_k − c − b_ψ(x):

    - θ ascends (1/K) Σ_k ∇θ log p_θ(x, z_k);
    - φ ascends (1/K) Σ_k r_k / max(1, σ̂) · ∇φ log q_φ(z_k | x);
    - ψ (the baseline network b_ψ: data_dim → hidden (tanh) → 1, the estimator's own parameters,
      stepped by the trainer's ``lr_estimator``) descends mean_b (1/K) Σ_k (l_k − c − b_ψ(x))².

    c is a running mean of l − b_ψ(x) and σ̂² a running variance of it (batch statistics mixed in with
    rate 1 − α, α = 0.8 as in the paper, Algorithm 1), held as buffers so checkpoints keep them.  They
    are updated *after* the step's signal is formed (the paper updates before), so c and σ̂ never
    depend on the particles they centre: the φ-update is then exactly unbiased for
    ∇φ ELBO / max(1, σ̂), the ELBO's gradient scaled by a positive factor that is fixed given the past.
    The zero-mean direct term −∇φ log q is dropped (Mnih & Gregor 2014, eq. 5).  Updates happen only
    in training mode with gradients enabled.  Source: ``../shared/reference/ALGORITHMS.md`` §8.

    Args:
        k: samples per datapoint (≥ 1).
        data_dim: the width D of x, for the baseline network; ``None`` builds no input-dependent
            baseline (centring by c and normalisation only).
        baseline_hidden: hidden units of b_ψ (the paper: 100).
        alpha: the running statistics' decay α in [0, 1).

    Raises:
        ValueError: for k < 1, data_dim < 1, baseline_hidden < 1 or α outside [0, 1).

    Metrics: ``objective`` (the ELBO estimate), ``baseline_loss`` (mean squared residual),
    ``signal_scale`` (the max(1, σ̂) the φ-signal was divided by this step).
    """

    name = "nvil"
    #: What the φ-update estimates, up to the scale 1/max(1, σ̂): ∇φ ELBO.
    q_update = "elbo"
    k_label = "k (samples)"

    def __init__(self, k: int = 1, data_dim: int | None = None, baseline_hidden: int = 100, alpha: float = 0.8):
        super().__init__(k)
        self.data_dim = None if data_dim is None else check_positive_int("data_dim", data_dim)
        self.baseline_hidden = check_positive_int("baseline_hidden", baseline_hidden)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
        self.alpha = float(alpha)
        self.baseline = None
        if self.data_dim is not None:
            self.baseline = nn.Sequential(nn.Linear(self.data_dim, self.baseline_hidden), nn.Tanh(), nn.Linear(self.baseline_hidden, 1))
        self.register_buffer("centre", torch.zeros(()))
        self.register_buffer("variance", torch.ones(()))

    def settings(self) -> dict:
        return {**super().settings(), "data_dim": self.data_dim, "baseline_hidden": self.baseline_hidden, "alpha": self.alpha}

    def forward(self, model, x: Tensor) -> EstimatorOutput:
        zs, log_q = model.propose(x, self.k)
        log_p = model.log_joint(x, zs)
        signal = (log_p - log_q).detach()  # l [K, B]
        b = self.baseline(x.to(self.baseline[0].weight.dtype))[:, 0] if self.baseline is not None else signal.new_zeros(x.shape[0])
        residual = signal - self.centre - b  # ∇ψ through b only
        scale = self.variance.sqrt().clamp_min(1.0)
        baseline_loss = (residual**2).mean()
        loss = -(log_p + residual.detach() / scale * log_q).mean(0).mean() + baseline_loss
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                centred = signal - b.detach()
                self.centre.mul_(self.alpha).add_((1 - self.alpha) * centred.mean())
                self.variance.mul_(self.alpha).add_((1 - self.alpha) * centred.var(unbiased=False))
        metrics = {"objective": signal.mean(), "baseline_loss": baseline_loss.detach(), "signal_scale": scale}
        return EstimatorOutput(loss, metrics)
