"""The sheep blowfly population model with a *discrete* delay, as a user's own model without a
proposal, trained by amortised learning by wake-sleep with the generic target (ALWS; Wenliang,
Moskovitz, Kanagawa & Sahani 2020, "Amortised learning by wake-sleep", ICML, §5.3; ALGORITHMS.md
§7.3(b); the model is Wood 2010, "Statistical inference for noisy nonlinear ecological dynamic
systems", Nature 466, with the delay τ made a latent category).

Data: Nicholson's (1954) 180 adult counts (``blowfly.txt`` in ``WAKESLEEP_DATA_DIR``; README there),
divided by their maximum, c_t = count_t / max ∈ (0, 1].  The model, for t = 1..T (T = 180):

    τ ~ Categorical(softmax(ℓ)) on {1, …, 20}                  (ℓ [20] learned logits)
    e_t ~ Gamma(1/σ_p², rate 1/σ_p²),  ε_t ~ Gamma(1/σ_d², rate 1/σ_d²)   (mean 1, s.d. σ_p, σ_d)
    N_t = P N_{t−τ} exp(−N_{t−τ}/N₀) e_t + N_{t−1} exp(−δ ε_t),   N_t = c_1 for t ≤ 0
    c_t | N_t ~ LogNormal(log N_t, σ_o²)

Learned: ℓ and, as logs, P, N₀ (in scaled units), δ, σ_p, σ_d, σ_o.  The history before t = 1 is
fixed at the first scaled count c_1 (a constant of the data, not a parameter).  The process noise
is the two Gamma noises (Wood's); the observation noise is log-normal.  The model's data are
x_t = log c_t, x [B, 180], so the observation density is N(x_t; log N_t, σ_o²), the log-normal
density of c_t up to the Jacobian Π_t 1/c_t, which does not depend on θ (and so changes no
gradient); working in logs also gives the kernel an input on a sensible scale.

The latent is the tuple z = (τ [*S, B] long in 1..20, e [*S, B, T], ε [*S, B, T]); a sleep sample
simulates the whole series.  There is no proposal; the Gamma and categorical priors put the model
outside the exponential-family target, so ALWS runs with ``target="generic"`` (it regresses
log p(x, z) itself on x over sleep samples) and a random-feature kernel.

What the plotted distribution over τ is: (1) the learned categorical softmax(ℓ) — the model's prior
over the delay, which ALWS learns by maximum likelihood of the data, and (2) an ABC rejection
posterior under the learned model: τ drawn *uniformly* on 1..20 with every other parameter at its
learned value, series simulated, and the ``--abc-keep`` fraction closest to the data kept, distance
the Euclidean one between standardised summaries (mean and s.d. of x, and its autocorrelations at
lags 1..20) (:func:`abc_tau_posterior`).

Run ``python examples/blowfly.py --out DIR`` to train, write ``blowfly.png`` and print ``key: value``
lines.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Gamma

import wakesleep as ws
from wakesleep.io import atomic_save_figure
from wakesleep.lab.tables import key_lines

MAX_DELAY = 20
START = {"P": 2.0, "N0": 0.5, "delta": 0.3, "sigma_p": 0.5, "sigma_d": 0.5, "sigma_o": 0.3}


def load_blowfly(path: str | Path | None = None) -> np.ndarray:
    """The 180 counts (float64) from ``path`` or ``$WAKESLEEP_DATA_DIR/blowfly.txt`` (``#`` lines skipped).

    Raises:
        FileNotFoundError: no file; set WAKESLEEP_DATA_DIR or pass --data.
    """
    if path is None:
        root = os.environ.get("WAKESLEEP_DATA_DIR")
        if not root:
            raise FileNotFoundError("blowfly.txt: pass --data PATH or set WAKESLEEP_DATA_DIR to the folder that holds it")
        path = Path(root) / "blowfly.txt"
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: pass --data PATH or set WAKESLEEP_DATA_DIR to the folder that holds blowfly.txt")
    return np.loadtxt(path, comments="#", dtype=np.float64)


class BlowflyModel(nn.Module):
    """The blowfly model with a discrete delay (module docstring).

    Args:
        steps: T, the series length; init: the history value N_t for t ≤ 0 (scaled units, > 0);
        max_delay: the delays are 1..max_delay; other keywords: starting values of the parameters
        (``START``).

    Raises:
        ValueError: steps < 2, max_delay < 1, or a non-positive init or parameter.
    """

    def __init__(self, steps: int, init: float, max_delay: int = MAX_DELAY, **start):
        super().__init__()
        vals = {**START, **start}
        if steps < 2 or max_delay < 1 or not init > 0 or any(not v > 0 for v in vals.values()):
            raise ValueError(f"need steps >= 2, max_delay >= 1 and positive init and parameters, got {steps}, {max_delay}, {init}, {vals}")
        self.steps, self.max_delay, self.init, self.data_dim = steps, max_delay, float(init), steps
        self.logits = nn.Parameter(torch.zeros(max_delay))
        for k, v in vals.items():
            setattr(self, f"log_{k}", nn.Parameter(torch.tensor(math.log(v))))

    def parameters_dict(self) -> dict[str, float]:
        return {k: getattr(self, f"log_{k}").exp().item() for k in START}

    def tau_probs(self) -> Tensor:
        """softmax(ℓ) [max_delay]: the learned distribution of τ = 1..max_delay."""
        return torch.softmax(self.logits.detach(), 0)

    def p_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def q_parameters(self) -> list[nn.Parameter]:
        """None: there is no proposal."""
        return []

    def trajectory(self, tau: Tensor, e: Tensor, eps: Tensor) -> Tensor:
        """N_{1:T} [M, T] for τ [M] (1..max_delay), e, ε [M, T] (differentiable in θ)."""
        m = tau.shape[0]
        p, n0, delta = self.log_P.exp(), self.log_N0.exp(), self.log_delta.exp()
        hist = [e.new_full((m,), self.init)] * self.max_delay  # N_{t-max_delay} … N_{t-1}
        idx = (self.max_delay - tau)[:, None]
        out = []
        for t in range(e.shape[1]):
            lagged = torch.stack(hist[-self.max_delay :], 1).gather(1, idx)[:, 0]  # N_{t−τ}
            n = p * lagged * torch.exp(-lagged / n0) * e[:, t] + hist[-1] * torch.exp(-delta * eps[:, t])
            hist.append(n)
            out.append(n)
        return torch.stack(out, 1)

    def log_prior(self, z) -> Tensor:
        """log p(τ) + Σ_t log Gamma(e_t) + Σ_t log Gamma(ε_t), [*S] for z = (τ [*S], e, ε [*S, T]), nats."""
        tau, e, eps = z
        kp, kd = torch.exp(-2 * self.log_sigma_p), torch.exp(-2 * self.log_sigma_d)
        return Categorical(logits=self.logits).log_prob(tau - 1) + Gamma(kp, kp).log_prob(e).sum(-1) + Gamma(kd, kd).log_prob(eps).sum(-1)

    def log_joint(self, x: Tensor, z) -> Tensor:
        """log p(x, z) [*S, B] for x [B, T] (log scaled counts) and z = (τ [*S, B], e, ε [*S, B, T]), nats."""
        tau, e, eps = z
        lead = tau.shape
        n = self.trajectory(tau.reshape(-1), e.reshape(-1, e.shape[-1]), eps.reshape(-1, eps.shape[-1])).reshape(*lead, -1)
        so = self.log_sigma_o.exp()
        log_obs = (-0.5 * ((x - torch.log(n)) / so).square() - self.log_sigma_o - 0.5 * math.log(2 * math.pi)).sum(-1)
        return self.log_prior(z) + log_obs

    def sample_latents(self, n: int, tau: Tensor | None = None):
        """n draws of z = (τ [n], e [n, T], ε [n, T]) from the prior (τ given: that τ [n] instead)."""
        with torch.no_grad():
            kp, kd = torch.exp(-2 * self.log_sigma_p), torch.exp(-2 * self.log_sigma_d)
            if tau is None:
                tau = Categorical(logits=self.logits).sample((n,)) + 1
            e = Gamma(kp, kp).sample((n, self.steps))
            eps = Gamma(kd, kd).sample((n, self.steps))
            return tau, e, eps

    def simulate(self, z) -> Tensor:
        """x [n, T] (log scaled counts) for latents z, with observation noise; no gradient."""
        with torch.no_grad():
            n = self.trajectory(*z)
            return torch.log(n) + self.log_sigma_o.exp() * torch.randn_like(n)

    def sample(self, n: int):
        """n draws: z = (τ [n], e [n, T], ε [n, T]), x [n, T]; no gradient."""
        z = self.sample_latents(n)
        return z, self.simulate(z)


def blowfly(data_dim: int = 180) -> BlowflyModel:
    """The factory of ``--model examples/blowfly.py:blowfly``: history fixed at 0.05 (scaled units)."""
    return BlowflyModel(steps=data_dim, init=0.05)


def summaries(x: Tensor) -> Tensor:
    """ABC summaries of series x [n, T]: mean, s.d., autocorrelations at lags 1..20: [n, 22]."""
    xc = x - x.mean(1, keepdim=True)
    var = xc.square().sum(1).clamp_min(1e-12)
    acf = [(xc[:, :-k] * xc[:, k:]).sum(1) / var for k in range(1, MAX_DELAY + 1)]
    return torch.stack([x.mean(1), x.std(1), *acf], 1)


def abc_tau_posterior(model: BlowflyModel, x: Tensor, sims: int = 20000, keep: float = 0.01, seed: int = 0) -> tuple[Tensor, int]:
    """ABC rejection posterior of τ given x [1, T] under the learned model with τ uniform on
    1..max_delay (module docstring): (probabilities [max_delay], number kept)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tau = torch.randint(1, model.max_delay + 1, (sims,))
        xs = model.simulate(model.sample_latents(sims, tau))
    s, s0 = summaries(xs), summaries(x)
    ok = torch.isfinite(s).all(1)
    s, tau = s[ok], tau[ok]
    sd = s.std(0).clamp_min(1e-12)  # each summary standardised by its spread over the simulations
    d = ((s - s0) / sd).square().sum(1)
    k = max(1, int(keep * len(d)))
    kept = tau[d.topk(k, largest=False).indices]
    return torch.bincount(kept - 1, minlength=model.max_delay).double() / k, k


def plot(counts: np.ndarray, scale: float, sims_start: Tensor, sims: Tensor, probs: Tensor, abc: Tensor, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [2.2, 1]})
    ax = axes[0]
    ax.plot(counts, "k", lw=1.5, label="data (Nicholson 1954)")
    for i in range(sims.shape[0]):
        ax.plot(sims[i].exp().numpy() * scale, lw=0.8, alpha=0.8, label="ALWS model" if i == 0 else None)
    ax.plot(sims_start[0].exp().numpy() * scale, ":", color="grey", lw=0.8, label="model at start")
    ax.set_xlabel("time step (2 days)")
    ax.set_ylabel("adult count")
    ax.legend(fontsize=7)
    ax = axes[1]
    taus = np.arange(1, len(probs) + 1)
    ax.bar(taus - 0.2, probs.numpy(), width=0.4, label="learned softmax(ℓ)")
    ax.bar(taus + 0.2, abc.numpy(), width=0.4, label="ABC posterior, learned θ")
    ax.set_xlabel("delay τ (steps)")
    ax.set_ylabel("probability")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=80)  # whole or not at all: an interrupted run leaves no half-written PNG
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    """Train by ALWS (generic target, random-feature kernel) on the blowfly series; print the learned
    parameters, the learned distribution of τ and its ABC posterior, and write the figure."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="blowfly.txt (default: $WAKESLEEP_DATA_DIR/blowfly.txt)")
    p.add_argument("--steps", type=int, default=500, help="ALWS steps")
    p.add_argument("--sleep-samples", type=int, default=3000)
    p.add_argument("--features", type=int, default=300, help="random Fourier features of the kernel")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--lr-kernel", type=float, default=1e-2)
    p.add_argument("--max-seconds", type=float, default=None, help="CPU-time budget of training (process clock)")
    p.add_argument("--abc-sims", type=int, default=20000)
    p.add_argument("--abc-keep", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/blowfly")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    t0 = time.process_time()
    torch.manual_seed(a.seed)
    counts = load_blowfly(a.data)
    scale = float(counts.max())
    x = torch.log(torch.tensor(counts / scale, dtype=torch.float32))[None]
    model = BlowflyModel(steps=x.shape[1], init=float(counts[0] / scale))
    sims_start = model.sample(1)[1]
    est = ws.ALWS(sleep_samples=a.sleep_samples, target="generic", krr="rff", num_features=a.features, lam=1e-3, valid_samples=500, seed=a.seed)
    result = ws.train(
        model,
        est,
        x,
        None,
        epochs=a.steps,
        batch_size=1,
        lr_p=a.lr,
        lr_estimator=a.lr_kernel,
        patience=None,
        progress=not a.no_progress,
        seed=a.seed,
        max_seconds=a.max_seconds,
        clock="process",
    )
    probs = model.tau_probs()
    abc, kept = abc_tau_posterior(model, x, a.abc_sims, a.abc_keep, a.seed + 1)
    taus = torch.arange(1, MAX_DELAY + 1, dtype=torch.float64)
    sims = model.sample(3)[1]
    out = {"steps_done": len(result.history), "stopped": result.stopped, "scale_max_count": scale}
    for k, v in model.parameters_dict().items():
        out[k] = v
    out["N0_counts"] = out["N0"] * scale
    out["tau_learned_mode"] = int(probs.argmax()) + 1
    out["tau_learned_mean"] = float((probs.double() * taus).sum())
    out["tau_learned_mode_prob"] = float(probs.max())
    out["tau_abc_mode"] = int(abc.argmax()) + 1
    out["tau_abc_mean"] = float((abc * taus).sum())
    out["abc_kept"] = kept
    out["cpu_seconds"] = time.process_time() - t0
    figure = plot(counts, scale, sims_start, sims, probs, abc, Path(a.out) / "blowfly.png")
    print(f"figure: {figure}")
    print(key_lines(out))
    return out


if __name__ == "__main__":
    main()
