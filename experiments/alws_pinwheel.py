"""ALWS on the hierarchical pinwheel mixture (Wenliang et al. 2020, §5.6; ALGORITHMS.md §7.6).

Data: 5 arms of 500 points each, radial s.d. 0.3, tangential s.d. 0.1, rate 0.2 (the pinwheel of
Johnson et al. 2016). Model (``HelmholtzMachine.mixture``): c ~ Cat(π) over 10 components,
y | c ~ N(μ_c, diag σ_c²) in 2-D, x | y ~ N(MLP(y), diag σ²) with learned σ and one tanh hidden
layer of 20 (``--hidden``; with two layers of 50 the decoder folds one component over several
arms and fewer components survive).  θ is learned by
ALWS (exponential-family target, Gaussian kernel on x, learned bandwidth and λ); a sparsity prior
on π, Dirichlet(α) with α < 1, is added to the objective (MAP for π: −log Dir(π; α) / N_data per
datapoint).  The proposal q(y | x) q(c | y) is trained alongside by sleep-phase updates, only to
report an importance-sampled log-likelihood.

    python experiments/alws_pinwheel.py                  # about 10 CPU-minutes on one core
    python experiments/alws_pinwheel.py --hidden 50 50 --figure docs/figures/alws_pinwheel_h50.png
    python experiments/alws_pinwheel.py --steps 300      # a quick look

Writes docs/figures/alws_pinwheel.png (data, model samples coloured by component, sorted mixture
weights) and a JSON summary (--summary).  Budgeted by steps and by process CPU time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from wakesleep.estimators import ALWS
from wakesleep.evaluate import log_likelihood
from wakesleep.io import atomic_save_figure, atomic_write_text
from wakesleep.models import HelmholtzMachine


def pinwheel(num_classes=5, num_per_class=500, radial_std=0.3, tangential_std=0.1, rate=0.2, seed=0):
    """Pinwheel data [num_classes · num_per_class, 2] and arm labels (Johnson et al. 2016, SVAE code)."""
    rng = np.random.default_rng(seed)
    rads = np.linspace(0, 2 * np.pi, num_classes, endpoint=False)
    feats = rng.standard_normal((num_classes * num_per_class, 2)) * np.array([radial_std, tangential_std])
    feats[:, 0] += 1.0
    labels = np.repeat(np.arange(num_classes), num_per_class)
    angles = rads[labels] + rate * np.exp(feats[:, 0])
    rot = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)]).T.reshape(-1, 2, 2)
    x = np.einsum("ti,tij->tj", feats, rot)
    perm = rng.permutation(len(x))
    return torch.tensor(x[perm], dtype=torch.float32), labels[perm]


def log_dirichlet(probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """log Dir(π; α, …, α), nats."""
    k = probs.shape[-1]
    return (alpha - 1) * torch.log(probs).sum(-1) + math.lgamma(k * alpha) - k * math.lgamma(alpha)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--cpu-seconds", type=float, default=1500, help="process CPU-time budget for training")
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--sleep-samples", type=int, default=3000)
    ap.add_argument("--krr", choices=["exact", "nystrom", "rff"], default="nystrom")
    ap.add_argument("--num-inducing", type=int, default=300)
    ap.add_argument("--lam", type=float, default=1e-2)
    ap.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration of the sparsity prior on π")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lr-kernel", type=float, default=1e-2)
    ap.add_argument("--components", type=int, default=10)
    ap.add_argument("--hidden", type=int, nargs="*", default=[20], help="hidden widths of the decoder MLP(y)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--figure", default="docs/figures/alws_pinwheel.png")
    ap.add_argument("--summary", default="runs/alws_pinwheel/summary.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    x, labels = pinwheel(seed=a.seed)
    n_data = x.shape[0]
    model = HelmholtzMachine.mixture(2, 2, a.components, hidden=tuple(a.hidden), q_hidden=(50, 50))
    with torch.no_grad():  # spread the initial component means over the data's range
        model.generative[1].net.bias[:2].zero_()
        model.generative[1].net.weight[:2].copy_(torch.randn(2, a.components))
    est = ALWS(
        sleep_samples=a.sleep_samples,
        valid_samples=500,
        target="exp_family",
        krr=a.krr,
        num_inducing=a.num_inducing,
        lam=a.lam,
        q_update="sleep",
        q_batch=a.batch_size,
        seed=a.seed,
    )
    opt = torch.optim.Adam(
        [
            {"params": model.p_parameters(), "lr": a.lr},
            {"params": model.q_parameters(), "lr": a.lr},
            {"params": list(est.parameters()), "lr": a.lr_kernel},
        ]
    )
    history = []
    t0 = time.process_time()
    bar = tqdm(range(a.steps), desc="ALWS pinwheel", unit="step")
    for step in bar:
        batch = x[torch.randint(n_data, (a.batch_size,))]
        out = est(model, batch)
        penalty = -log_dirichlet(model.prior.probs, a.alpha) / n_data  # MAP for π, per datapoint
        loss = out.loss + penalty
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == a.steps - 1:
            rec = {"step": step, "cpu_seconds": time.process_time() - t0, **{k: float(v) for k, v in out.metrics.items()}}
            rec["weights"] = model.prior.probs.detach().tolist()
            history.append(rec)
            bar.set_postfix(J=f"{rec['wake_log_joint']:.2f}", bw=f"{rec['bandwidth']:.2f}")
        if time.process_time() - t0 > a.cpu_seconds:
            print(f"CPU budget of {a.cpu_seconds:.0f} s reached at step {step}", file=sys.stderr)
            break
    steps_done = step + 1
    cpu = time.process_time() - t0

    model.eval()
    ll = log_likelihood(model, x, k=1000, seed=a.seed)
    weights = model.prior.probs.detach()
    order = torch.argsort(weights, descending=True)
    kept = int((weights > 0.02).sum())

    torch.manual_seed(a.seed + 1)
    with torch.no_grad():
        (y, c), xs = model.sample(n_data)
    comp = c.argmax(-1).numpy()
    fig = Figure(figsize=(13, 4.2))
    ax = fig.subplots(1, 3)
    ax[0].scatter(x[:, 0], x[:, 1], s=2, c=labels, cmap="tab10")
    ax[0].set_title(f"pinwheel data ({n_data} points, 5 arms)")
    rank = {int(k): r for r, k in enumerate(order)}
    ax[1].scatter(xs[:, 0], xs[:, 1], s=2, c=[rank[int(k)] for k in comp], cmap="tab10", vmin=0, vmax=9)
    ax[1].set_title("ALWS model samples (colour: component)")
    lim = (min(ax[0].get_xlim()[0], ax[1].get_xlim()[0]), max(ax[0].get_xlim()[1], ax[1].get_xlim()[1]))
    for axis in ax[:2]:
        axis.set_xlim(lim)
        axis.set_ylim(lim)
        axis.set_aspect("equal")
    ax[2].bar(range(a.components), weights[order].numpy(), color=[f"C{r}" for r in range(a.components)])
    ax[2].axhline(0.02, color="grey", lw=0.8, ls="--")
    ax[2].set_xlabel("component (sorted)")
    ax[2].set_ylabel("mixture weight π")
    ax[2].set_title(f"{kept} of {a.components} components with π > 0.02")
    fig.suptitle(
        f"ALWS, {steps_done} steps, N = {a.sleep_samples} sleep samples ({a.krr}), "
        f"Dir(α = {a.alpha}) prior on π; log p(x) ≈ {ll.mean:.3f} ± {ll.stderr:.3f} nats (K = 1000)"
    )
    fig.tight_layout()
    atomic_save_figure(fig, a.figure)

    summary = {
        "steps": steps_done,
        "cpu_seconds": cpu,
        "log_likelihood": ll.as_dict(),
        "weights_sorted": weights[order].tolist(),
        "components_above_0.02": kept,
        "bandwidth": est.krr.kernel.bandwidth.item(),
        "lam": est.krr.lam.item(),
        "settings": vars(a),
        "history": history,
    }
    atomic_write_text(Path(a.summary), json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("steps", "cpu_seconds", "log_likelihood", "weights_sorted", "components_above_0.02")}, indent=1))
    print(f"figure: {a.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
