"""ALWS against RWS and the VAE on binarised MNIST with the same Gaussian-latent generator and the
same process-CPU-time budget (Wenliang et al. 2020, §5.4, scaled to this machine; ALGORITHMS.md §7.4).

Generator (all three): ``HelmholtzMachine.gaussian([784, 16], hidden=(200,))``: z ~ N(0, I₁₆),
x | z ~ Bernoulli(MLP(z)) with one tanh layer of 200; proposal q(z | x) Gaussian with the same
shape.  Estimators:

- ALWS: N = 1000 sleep samples, exact KRR, Gaussian kernel on learned MLP features of x
  (784 → 256 → 32), exponential-family target (Bernoulli: S(x) = x), kernel learned on 250
  validation sleep samples per step; q trained by sleep-phase updates only (for evaluation);
- RWS: K = 5, q by wake + sleep updates;
- VAE: K = 1 (reparameterised ELBO).

Each trains with Adam (lr 1e-3, batch 100) on the 50,000 training images until its process CPU
time passes ``--cpu-minutes`` (checked at the end of each epoch, so a run may overshoot by up to one
epoch; the time actually used is reported), one thread, no validation during training.  Then the
test log-likelihood is estimated with K = 5000 importance samples from each model's own proposal
on a fixed random ``--test-n`` of the 10,000 test images (for time; the same subset as
``wakesleep compare``'s ``test_n``, ``wakesleep.lab.compare.subset``: the test file is ordered by class,
so its first images are a biased sample), in nats, with its standard error over those images.

    python experiments/alws_binarized_mnist.py                       # 3 × 6 CPU-minutes + evaluation
    python experiments/alws_binarized_mnist.py --cpu-minutes 1 --test-n 100 --test-k 500   # smoke test

Writes docs/figures/alws_mnist_samples.png (64 samples, means of p(x | z), for each model), a
JSON summary (``--summary``) and each trained model's parameters next to it (NAME.pt).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

from wakesleep.data import binarized_mnist
from wakesleep.estimators import ALWS, RWS, VAE
from wakesleep.evaluate import log_likelihood
from wakesleep.io import atomic_save_figure, atomic_torch_save, atomic_write_text
from wakesleep.lab.compare import subset
from wakesleep.models import HelmholtzMachine
from wakesleep.plots import tile_images
from wakesleep.training import TrainConfig, train


def estimators(sleep_samples: int) -> dict:
    return {
        "alws": ALWS(
            sleep_samples=sleep_samples,
            valid_samples=250,
            target="exp_family",
            krr="exact",
            features="mlp",
            data_dim=784,
            feature_dim=32,
            feature_hidden=(256,),
            lam=1e-3,
            q_update="sleep",
        ),
        "rws": RWS(k=5, q_update="both"),
        "vae": VAE(k=1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-minutes", type=float, default=6.0, help="training budget per model, process CPU minutes")
    ap.add_argument("--sleep-samples", type=int, default=1000)
    ap.add_argument("--lr-kernel", type=float, default=3e-3)
    ap.add_argument("--test-n", type=int, default=500, help="test images for the K-sample log-likelihood (a fixed random subset, seed 0)")
    ap.add_argument("--test-k", type=int, default=5000)
    ap.add_argument("--only", nargs="*", default=None, help="run only these of alws, rws, vae")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--figure", default="docs/figures/alws_mnist_samples.png")
    ap.add_argument("--summary", default="runs/alws_mnist/summary.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    data = binarized_mnist(a.data_dir, download=False)
    test = subset(data.test, a.test_n)
    results, grids = {}, {}
    summary_path = Path(a.summary)
    evaluation = {"test_n": a.test_n, "test_k": a.test_k, "seed": a.seed, "test_subset": "random (wakesleep.lab.compare.subset)"}
    if summary_path.is_file():  # keep earlier models' results when re-running some of them on the same test images
        earlier = json.loads(summary_path.read_text())
        if {k: earlier.get("settings", {}).get(k) for k in evaluation} == evaluation:
            results = earlier.get("results", {})
    for name, est in estimators(a.sleep_samples).items():
        if a.only and name not in a.only:
            continue
        torch.manual_seed(a.seed)
        model = HelmholtzMachine.gaussian([784, 16], hidden=(200,))
        cfg = TrainConfig(
            epochs=10_000,
            batch_size=100,
            lr_p=1e-3,
            lr_q=1e-3,
            lr_estimator=a.lr_kernel,
            seed=a.seed,
            patience=None,
            max_seconds=a.cpu_minutes * 60,
            clock="process",
        )
        print(f"training {name} for {a.cpu_minutes} CPU minutes", flush=True)
        fit = train(model, est, data.train, valid=None, config=cfg)
        model.eval()
        ll = log_likelihood(model, test, k=a.test_k, progress=True, seed=a.seed)
        steps = fit.history[-1]["step"] if fit.history else 0
        results[name] = {
            "test_log_likelihood": ll.as_dict(),
            "cpu_seconds": fit.seconds,
            "epochs": len(fit.history),
            "steps": steps,
            "settings": est.settings(),
            "last_epoch": {k: v for k, v in fit.history[-1].items() if k.startswith("train_")},
        }
        print(f"{name}: {ll} after {len(fit.history)} epochs ({steps} steps, {fit.seconds:.0f} CPU s)", flush=True)
        torch.manual_seed(a.seed)
        grids[name] = tile_images(model.sample_mean(64).cpu(), (28, 28), nrow=8)
        atomic_torch_save({"model": model.state_dict(), "config": model.config}, summary_path.parent / f"{name}.pt")
        atomic_write_text(summary_path, json.dumps({"settings": {**vars(a), **evaluation}, "results": results}, indent=2))

    if grids:
        fig = Figure(figsize=(4 * len(grids), 4.9))
        axes = fig.subplots(1, len(grids), squeeze=False)[0]
        for ax, (name, grid) in zip(axes, grids.items()):
            r = results[name]
            ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
            ax.set_title(
                f"{name.upper()}: {r['test_log_likelihood']['mean']:.1f} nats\n({r['epochs']} epochs, {r['cpu_seconds'] / 60:.1f} CPU min)",
                fontsize=10,
            )
            ax.axis("off")
        fig.suptitle(f"binarised MNIST, same generator, K = {a.test_k} log-likelihood on {len(test)} random test images", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        atomic_save_figure(fig, a.figure)
        print(f"figure: {a.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
