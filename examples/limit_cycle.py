"""A noisy 2-D limit cycle seen through a 20-pixel Gaussian bump, learned as a state-space model with
neural-network transition and emission, as a user's own model without a proposal, trained by
amortised learning by wake-sleep (ALWS; Wenliang, Moskovitz, Kanagawa & Sahani 2020, "Amortised
learning by wake-sleep", ICML, §5.3; ALGORITHMS.md §7.3(a): "samples must keep oscillating well past T").

**The truth** (:func:`simulate_truth`): the polar oscillator r' = r(1 − r²), θ' = ω with
ω = 2π/``PERIOD`` (``PERIOD`` = 10 observation steps), written in Cartesian coordinates s = (s₁, s₂),
ds = (s (1 − ‖s‖²) + ω (−s₂, s₁)) dt + ``PROCESS`` dW, integrated by Euler–Maruyama with dt = 0.1,
observed every 10 substeps (one observation step = one time unit), T = 30 observations, started at
radius 1 + 0.1·N(0, 1) and a uniform phase.  **The observation** at each step is a Gaussian bump of
the state's angle θ_t = atan2(s₂, s₁) on 20 pixels at the angles c_i = 2π i/20 (i = 0..19):
y_{t,i} = exp(−wrap(θ_t − c_i)²/(2 w²)) + ``OBS_NOISE``·N(0, 1), w = 1.5 pixel spacings = 1.5·2π/20
rad, wrap to [−π, π).  The radius is not observed.  Three training sequences, each x = y_{1:T}
flattened to [T·20] = [600] (row-major: time, then pixel).

**The model** (:class:`LimitCycleModel`): z_{1:T} ∈ R^{T×2},
z_1 ~ N(0, I), z_{t+1} ~ N(z_t + f_θ(z_t), diag σ_z²), y_t ~ N(g_θ(z_t), σ_y² I_20), with f an MLP
2 → 64 → 64 → 2 (tanh) and g an MLP 2 → 64 → 64 → 20 (tanh), σ_z [2] and σ_y learned as logs.  The
latent is the whole sequence, a float tensor [*S, B, T, 2]; a sleep sample simulates it.  The
Gaussian emission is an exponential family in x, S(x) = (x, ‖x‖²), η = (g(z)/σ_y², −1/(2σ_y²)),
Ψ = ‖g(z)‖²/(2σ_y²) + D log σ_y + (D/2) log 2π (h = 1), and the transition's parameters learn
through ``log_prior``: ALWS's exponential-family target (``target="auto"``).

**The period** (:func:`acf_period`): the lag of the first peak of the autocorrelation (mean over
pixels of the per-pixel autocorrelation, each pixel's series centred), after its first negative
value, refined by a parabola through the peak and its neighbours; with the peak's height, a measure
of how much oscillation there is (≈ 1 for a clean periodic signal, ≈ 0 for noise).

Run ``python examples/limit_cycle.py --out DIR`` to train, roll the learned model out to 5T, write
``limit_cycle.png`` and print ``key: value`` lines.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn

import wakesleep as ws
from wakesleep.io import atomic_save_figure
from wakesleep.lab.tables import key_lines
from wakesleep.models.distributions import isotropic_normal_exponential_family, isotropic_normal_statistics

T = 30
PIXELS = 20
PERIOD = 10.0
PROCESS = 0.1
OBS_NOISE = 0.1
WIDTH = 1.5 * 2 * math.pi / PIXELS


def wrap(d: Tensor) -> Tensor:
    """Angles wrapped to [−π, π)."""
    return torch.remainder(d + math.pi, 2 * math.pi) - math.pi


def bump(theta: Tensor) -> Tensor:
    """The noiseless 20-pixel bump of angles θ [*S]: [*S, 20] (module docstring)."""
    c = torch.arange(PIXELS, dtype=theta.dtype, device=theta.device) * (2 * math.pi / PIXELS)
    return torch.exp(-wrap(theta[..., None] - c).square() / (2 * WIDTH**2))


def simulate_truth(n: int, steps: int = T, seed: int = 0, substeps: int = 10) -> tuple[Tensor, Tensor]:
    """n true sequences: (states s [n, steps, 2], observations y [n, steps, 20]) (module docstring).
    Seeded, independent of the global generator."""
    g = torch.Generator().manual_seed(seed)
    dt = 1.0 / substeps
    omega = 2 * math.pi / PERIOD
    phase = (torch.rand(n, generator=g) * 2 - 1) * math.pi
    r = 1 + 0.1 * torch.randn(n, generator=g)
    s = torch.stack([r * torch.cos(phase), r * torch.sin(phase)], -1)
    states = []
    for _ in range(steps):
        states.append(s)
        for _ in range(substeps):
            rr = s.square().sum(-1, keepdim=True)
            drift = s * (1 - rr) + omega * torch.stack([-s[:, 1], s[:, 0]], -1)
            s = s + drift * dt + PROCESS * math.sqrt(dt) * torch.randn(n, 2, generator=g)
    states = torch.stack(states, 1)
    y = bump(torch.atan2(states[..., 1], states[..., 0])) + OBS_NOISE * torch.randn(n, steps, PIXELS, generator=g)
    return states, y


def acf_period(y: Tensor, max_lag: int | None = None, min_peak: float = 0.1) -> tuple[float, float]:
    """(period in steps, peak height) of series y [..., T, C] from their pooled autocorrelation
    (module docstring: each series and channel centred and normalised over its T steps, the
    autocorrelations then averaged over everything but the lag); the period is nan when there is no
    peak or it is lower than ``min_peak`` (no oscillation worth the name: white noise gives ≈ 0).

    Raises:
        ValueError: y without a time axis of at least 4 steps.
    """
    if y.ndim < 2 or y.shape[-2] < 4:
        raise ValueError(f"y must be [..., T, C] with T >= 4, got shape {list(y.shape)}")
    y = y.detach().double().reshape(-1, *y.shape[-2:])  # [M, T, C]
    n = y.shape[1]
    max_lag = n // 2 if max_lag is None else min(max_lag, n - 1)
    yc = y - y.mean(1, keepdim=True)
    var = yc.square().sum(1).clamp_min(1e-12)  # [M, C]
    acf = torch.stack([((yc[:, : n - k] * yc[:, k:]).sum(1) / var).mean() for k in range(max_lag + 1)])  # [lags]
    neg = (acf < 0).nonzero()
    if len(neg) == 0:
        return float("nan"), 0.0
    start = int(neg[0])
    k = start + int(acf[start:].argmax())
    if k <= start or k >= max_lag:
        return float("nan"), acf[k].item()
    a0, a1, a2 = acf[k - 1].item(), acf[k].item(), acf[k + 1].item()
    denom = a0 - 2 * a1 + a2
    shift = 0.5 * (a0 - a2) / denom if denom < 0 else 0.0
    return (k + shift if a1 >= min_peak else float("nan")), a1


def mlp(inp: int, out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, out))


class LimitCycleModel(nn.Module):
    """z_1 ~ N(0, I), z_{t+1} ~ N(z_t + f(z_t), diag σ_z²), y_t ~ N(g(z_t), σ_y² I) (module docstring).

    Args:
        steps: T, the sequence length of the data x [B, T·20]; hidden: MLP width.

    Raises:
        ValueError: steps < 2.
    """

    def __init__(self, steps: int = T, hidden: int = 64):
        super().__init__()
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps!r}")
        self.steps = steps
        self.data_dim = steps * PIXELS
        self.transition = mlp(2, 2, hidden)
        self.emission = mlp(2, PIXELS, hidden)
        self.log_sz = nn.Parameter(torch.full((2,), math.log(0.3)))
        self.log_sy = nn.Parameter(torch.tensor(math.log(0.3)))

    def p_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def q_parameters(self) -> list[nn.Parameter]:
        """None: there is no proposal."""
        return []

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z_{1:T}) [*S] for z [*S, T, 2], nats."""
        init = torch.distributions.Normal(0.0, 1.0).log_prob(z[..., 0, :]).sum(-1)
        mean = z[..., :-1, :] + self.transition(z[..., :-1, :])
        sz = self.log_sz.exp()
        trans = (-0.5 * ((z[..., 1:, :] - mean) / sz).square() - self.log_sz - 0.5 * math.log(2 * math.pi)).sum((-1, -2))
        return init + trans

    def mean(self, z: Tensor) -> Tensor:
        """g(z_t) flattened: [*S, T·20] for z [*S, T, 2]."""
        m = self.emission(z)
        return m.reshape(*m.shape[:-2], -1)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x, z) [*S, B] for x [B, T·20] and z [*S, B, T, 2], nats."""
        d = x.shape[-1]
        s2 = torch.exp(2 * self.log_sy)
        log_lik = -0.5 * (x - self.mean(z)).square().sum(-1) / s2 - d * self.log_sy - 0.5 * d * math.log(2 * math.pi)
        return self.log_prior(z) + log_lik

    def rollout(self, n: int, steps: int) -> Tensor:
        """n latent sequences z [n, steps, 2] from the prior (no gradient)."""
        p = self.log_sz
        with torch.no_grad():
            z = torch.randn(n, 2, dtype=p.dtype, device=p.device)
            out = [z]
            for _ in range(steps - 1):
                z = z + self.transition(z) + self.log_sz.exp() * torch.randn_like(z)
                out.append(z)
            return torch.stack(out, 1)

    def sample(self, n: int, steps: int | None = None) -> tuple[Tensor, Tensor]:
        """n draws: z [n, steps, 2], x [n, steps·20] (default steps = T); no gradient."""
        z = self.rollout(n, steps or self.steps)
        with torch.no_grad():
            m = self.mean(z)
            return z, m + self.log_sy.exp() * torch.randn_like(m)

    def exponential_family(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """η(z) = (g(z)/σ_y², −1/(2σ_y²)) [n, D + 1] and Ψ(z) [n] (module docstring)."""
        return isotropic_normal_exponential_family(self.mean(z), self.log_sy)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        """S(x) = (x, ‖x‖²) [n, D + 1]."""
        return isotropic_normal_statistics(x)


def limit_cycle(data_dim: int = T * PIXELS) -> LimitCycleModel:
    """The factory of ``--model examples/limit_cycle.py:limit_cycle``.

    Raises:
        ValueError: data_dim not a multiple of 20.
    """
    if data_dim % PIXELS:
        raise ValueError(f"the data are T steps of {PIXELS} pixels: a width divisible by {PIXELS}, got {data_dim}")
    return LimitCycleModel(steps=data_dim // PIXELS)


def window_periods(y: Tensor, lo: int, hi: int, groups: int = 10) -> dict:
    """Pooled-autocorrelation period and peak height (:func:`acf_period`) of the sequences
    y [n, steps, 20] in the window [lo, hi): in ``groups`` disjoint groups of sequences, their mean and
    standard error over groups, and the number of groups with a peak."""
    res = [acf_period(part[:, lo:hi]) for part in torch.chunk(y, groups)]
    per = torch.tensor([r[0] for r in res])
    peak = torch.tensor([r[1] for r in res])
    ok = per[torch.isfinite(per)]
    g = len(res)
    return {
        "period": ok.mean().item() if len(ok) else float("nan"),
        "period_stderr": (ok.std() / math.sqrt(len(ok))).item() if len(ok) > 1 else float("nan"),
        "groups_with_peak": f"{len(ok)}/{g}",
        "acf_peak": peak.mean().item(),
        "acf_peak_stderr": (peak.std() / math.sqrt(g)).item() if g > 1 else float("nan"),
    }


def plot(y_data: Tensor, y_model: Tensor, y_true_long: Tensor, path: Path) -> Path:
    """Data sequences, model samples to 5T and true samples to 5T as pixel × time images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 5.5))
    axes[0].imshow(torch.cat(list(y_data), 0).T.numpy(), aspect="auto", cmap="viridis")
    axes[0].set_title(f"the 3 training sequences (T = {y_data.shape[1]} each, concatenated)", fontsize=8)
    axes[1].imshow(y_model[0].T.numpy(), aspect="auto", cmap="viridis")
    axes[1].axvline(y_data.shape[1] - 0.5, color="w", lw=1)
    axes[1].set_title(f"a sample of the learned model to {y_model.shape[1]} steps (line: T)", fontsize=8)
    axes[2].imshow(y_true_long[0].T.numpy(), aspect="auto", cmap="viridis")
    axes[2].set_title("a sample of the true process, same length", fontsize=8)
    for ax in axes:
        ax.set_ylabel("pixel")
    axes[2].set_xlabel("time step")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=80)  # whole or not at all: an interrupted run leaves no half-written PNG
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    """Train by ALWS on three true sequences; roll 100 samples out to 5T and measure their period
    (autocorrelation) in the windows [0, T) and [4T, 5T), against the same for the true process."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=3)
    p.add_argument("--steps", type=int, default=1500, help="ALWS steps (each uses all training sequences)")
    p.add_argument("--sleep-samples", type=int, default=2000)
    p.add_argument("--krr", default="exact", choices=["exact", "rff", "nystrom"])
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lr-kernel", type=float, default=1e-2)
    p.add_argument("--max-seconds", type=float, default=None, help="CPU-time budget of training (process clock)")
    p.add_argument("--rollouts", type=int, default=100, help="sampled sequences for the period")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/limit_cycle")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    t0 = time.process_time()
    torch.manual_seed(a.seed)
    _, y = simulate_truth(a.sequences, T, seed=a.seed)
    x = y.reshape(a.sequences, -1)
    model = LimitCycleModel()
    est = ws.ALWS(sleep_samples=a.sleep_samples, target="auto", krr=a.krr, num_features=1000, lam=1e-3, valid_samples=500, seed=a.seed)
    result = ws.train(
        model,
        est,
        x,
        None,
        epochs=a.steps,
        batch_size=a.sequences,
        lr_p=a.lr,
        lr_estimator=a.lr_kernel,
        patience=None,
        progress=not a.no_progress,
        seed=a.seed,
        max_seconds=a.max_seconds,
        clock="process",
    )
    long = 5 * T
    _, xm = model.sample(a.rollouts, long)
    ym = xm.reshape(a.rollouts, long, PIXELS)
    _, yt = simulate_truth(a.rollouts, long, seed=a.seed + 1)
    out = {"steps_done": len(result.history), "stopped": result.stopped, "period_true": PERIOD}
    for name, seqs in (("model", ym), ("truth", yt)):
        for lo, tag in ((0, "first"), (4 * T, "last")):
            out.update({f"{k}_{name}_{tag}T": v for k, v in window_periods(seqs, lo, lo + T).items()})
    out.update({f"{k}_data": v for k, v in window_periods(y, 0, T, groups=1).items()})
    out["noise_y_learned"] = model.log_sy.exp().item()
    out["noise_y_true"] = OBS_NOISE
    out["cpu_seconds"] = time.process_time() - t0
    figure = plot(y, ym, yt, Path(a.out) / "limit_cycle.png")
    print(f"figure: {figure}")
    print(key_lines(out))
    return out


if __name__ == "__main__":
    main()
