"""ALWS against the VAE and RWS on MNIST images scored by FID and KID: the same DCGAN-style
generator with 16 latents, the same budget (Wenliang et al. 2020, §5.4; ALGORITHMS.md §7.4).

Model: ``examples/dcgan.py`` (Bernoulli likelihood on binarised MNIST, Gaussian on grey levels;
conv encoder for the VAE and RWS; ALWS does not use the encoder).  Estimators:

- ALWS: N = ``--sleep-samples`` (5000, the paper's) sleep samples per step, random-Fourier-feature
  kernel ridge regression with ``--num-features`` (2000, the paper's) features of a Gaussian kernel
  on learned MLP features of x (784 → 256 → 32; ``--alws-features identity`` for the pixels
  themselves), exponential-family target (Algorithm 1), kernel learned on 500 validation sleep
  samples per step, λ starting at 1e-3;
- VAE: K = 1 (reparameterised ELBO);
- RWS: K = 5, q by wake and sleep updates.

Data: binarised MNIST's 50,000 training images (``--dataset binary``); for grey levels only the
10,000 MNIST test images exist here: rows 0–7999 train (``wakesleep.data.mnist_gray``'s train
split), rows 8000–9999 are held out (``--dataset grey``).  Each model trains with Adam (lr
``--lr``, batches of 100) until its process CPU time passes ``--cpu-minutes`` (checked after every
step: an ALWS step at N = 5000 costs about a hundred VAE steps here; ``--epochs`` caps the epochs;
``--clock wall`` on a GPU), one thread, no validation.  Then ``wakesleep.lab.quality.score`` scores n samples (binary: draws x ~ p(x | z);
grey: means E[x | z], the pixel noise is not part of an image) against half A of the reference
images with the cached LeNet of that kind, and the floor, half B against A, at the same size:
FID (± bootstrap s.e.) and KID (± s.e. over 10 disjoint blocks); also n real training images
against A (what a perfect model of the training images would score: for grey levels the training
rows 0–7999 include the first 5000 test images, which LeCun's MNIST page calls cleaner and easier
than the last 5000, where the held-out rows lie, so it may sit above the floor).  Reference: grey rows 8000–9999
(halves of 1000); binarised MNIST's validation split (halves of 5000).

    python experiments/alws_images.py --dataset grey --cpu-minutes 4          # a short run
    python experiments/alws_images.py --cpu-minutes 0.05 --width 4 --sleep-samples 200 --num-features 100 --n-score 200   # smoke

Writes ``FIGURE-PREFIX-DATASET.png`` (64 scored samples of each model beside real images), a
JSON summary (``--out``/summary.json) and each model's weights (``--out``/DATASET-METHOD.pt), and
prints the headline figures as ``key: value`` lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure
from PIL import Image
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from dcgan import DCGANModel  # noqa: E402

from wakesleep.cli.options import resolve_device  # noqa: E402
from wakesleep.data import binarized_mnist, mnist_gray  # noqa: E402
from wakesleep.estimators import ALWS, RWS, VAE  # noqa: E402
from wakesleep.io import atomic_file, atomic_save_figure, atomic_torch_save, atomic_write_text  # noqa: E402
from wakesleep.lab import quality  # noqa: E402
from wakesleep.plots import tile_images  # noqa: E402
from wakesleep.training import TrainConfig  # noqa: E402
from wakesleep.training.step import build_optimizer, train_step  # noqa: E402

METHODS = ("alws", "vae", "rws")
DATASETS = ("binary", "grey")
#: The paper's FIDs read by eye from its figure (about 500 epochs, its own LeNet: another scale).
PAPER_FID = {"binary": {"alws": 1.5, "vae": 1.9, "rws": 1.4}, "grey": {"alws": 1.2, "vae": 10.5, "rws": 7.0}}


def estimator(name: str, a: argparse.Namespace):
    if name == "alws":
        return ALWS(
            sleep_samples=a.sleep_samples,
            valid_samples=a.valid_samples,
            target="exp_family",
            krr="rff",
            num_features=a.num_features,
            features=a.alws_features,
            data_dim=784,
            feature_dim=32,
            feature_hidden=(256,),
            lam=1e-3,
            q_update=None,
            seed=a.seed,
        )
    if name == "vae":
        return VAE(k=1)
    return RWS(k=5, q_update="both")


def training_images(dataset: str, data_dir) -> torch.Tensor:
    if dataset == "binary":
        return binarized_mnist(data_dir, download=False).train
    return mnist_gray(data_dir).train


def train_for_budget(model, est, x: torch.Tensor, a: argparse.Namespace, device: torch.device) -> dict:
    """Adam steps (the trainer's optimiser and step: ``wakesleep.training.step``) on shuffled batches
    of x until ``a.cpu_minutes`` of the clock ``a.clock`` are spent (checked after every step, so
    that an ALWS step, about a hundred VAE steps on a CPU, cannot overshoot by an epoch) or
    ``a.epochs`` epochs are done.  Returns steps, epochs (fractional), seconds, skipped
    (non-finite) steps and the last step's metrics."""
    est.to(device)
    x = x.to(device)
    opt = build_optimizer(model, est, TrainConfig(lr_p=a.lr, lr_q=a.lr, lr_estimator=a.lr_kernel))
    gen = torch.Generator().manual_seed(a.seed)
    clock = time.process_time if a.clock == "process" else time.perf_counter
    budget, start = a.cpu_minutes * 60, clock()
    steps = skipped = seen = 0
    metrics: dict = {}
    bar = tqdm(total=round(budget), unit=f"{a.clock}-s", disable=a.no_progress)
    for _ in range(a.epochs):
        for idx in torch.randperm(len(x), generator=gen).split(a.batch_size):
            out, bad = train_step(model, est, opt, x[idx.to(device)])
            steps, skipped, seen = steps + 1, skipped + (bad is not None), seen + len(idx)
            used = clock() - start
            bar.update(round(used) - bar.n)
            if used >= budget:
                break
        else:
            continue
        break
    bar.close()
    metrics = {k: float(v) for k, v in out.metrics.items()} if steps else {}
    return {"steps": steps, "epochs": seen / len(x), "seconds": clock() - start, "skipped_steps": skipped, "last_step": metrics}


def scored_samples(model: DCGANModel, n: int) -> torch.Tensor:
    """What FID scores: binary draws x ~ p(x | z), or grey-level means E[x | z]."""
    if model.likelihood == "bernoulli":
        return model.sample(n)[1].cpu()
    return model.sample_mean(n).cpu()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--method", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--cpu-minutes", type=float, default=4.0, help="training budget per model, minutes of --clock")
    ap.add_argument("--epochs", type=int, default=500, help="at most this many epochs (the paper: about 500)")
    ap.add_argument("--clock", default="process", choices=["process", "wall"], help="the budget's clock (process CPU time; wall on a GPU)")
    ap.add_argument("--train-n", type=int, default=None, help="use only the first N training images (smoke tests)")
    ap.add_argument("--width", type=int, default=32, help="generator width w (channels 2w at 7×7, w at 14×14)")
    ap.add_argument("--sleep-samples", type=int, default=5000, help="ALWS sleep samples N per step (the paper: 5000)")
    ap.add_argument("--valid-samples", type=int, default=500, help="ALWS validation sleep samples for the kernel step")
    ap.add_argument("--num-features", type=int, default=2000, help="ALWS random Fourier features (the paper: 2000)")
    ap.add_argument("--alws-features", default="mlp", choices=["mlp", "identity"], help="the kernel's input: learned MLP features or pixels")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam rate of θ and φ")
    ap.add_argument("--lr-kernel", type=float, default=3e-3, help="Adam rate of ALWS's kernel")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--n-score", type=int, default=None, help="samples scored (default: half the reference set, 1000 grey / 5000 binary)")
    ap.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamplings for FID's standard error")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda (cuda:N) or auto")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument(
        "--cache-dir", default=None, help="where the classifiers' weights are cached (default: $WAKESLEEP_CACHE_DIR or ~/.cache/wakesleep)"
    )
    ap.add_argument(
        "--classifier-epochs", type=int, default=quality.SETTINGS["epochs"], help="the LeNet's training epochs (default: 8; fewer for smoke tests)"
    )
    ap.add_argument("--out", default="runs/alws_images", help="directory for summary.json and the weights")
    ap.add_argument("--figure-prefix", default="docs/figures/alws-images")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    out = Path(a.out)
    results: dict = {}
    headline: dict[str, float] = {}
    for dataset in a.dataset:
        clf = quality.classifier(dataset, a.data_dir, a.cache_dir, progress=not a.no_progress, device=device, epochs=a.classifier_epochs)
        reference = quality.reference_images(dataset, a.data_dir)
        x = training_images(dataset, a.data_dir)
        if a.train_n is not None:
            x = x[: a.train_n]
        headline[f"{dataset}_classifier_heldout_accuracy"] = clf.accuracy
        grids, titles = {}, {}
        for method in a.method:
            torch.manual_seed(a.seed)
            model = DCGANModel("bernoulli" if dataset == "binary" else "gaussian", width=a.width, encoder="conv").to(device)
            est = estimator(method, a)
            print(f"training {method} on {dataset} MNIST for {a.cpu_minutes} CPU minutes", flush=True)
            fit = train_for_budget(model, est, x, a, device)
            model.eval()
            torch.manual_seed(a.seed + 1)
            samples = scored_samples(model, a.n_score or len(reference) // 2)
            report = quality.score(samples, clf, reference, n=a.n_score, bootstrap=a.bootstrap, seed=a.seed)
            r = report.as_dict()
            r.update(
                **fit,
                train_n=len(x),
                settings=est.settings(),
            )
            if dataset == "grey":
                r["noise_s"] = model.noise.item()
            results.setdefault(dataset, {})[method] = r
            for key in ("fid", "fid_stderr", "kid", "kid_stderr"):
                headline[f"{dataset}_{method}_{key}"] = r[key]
            headline[f"{dataset}_{method}_epochs"] = r["epochs"]
            headline[f"{dataset}_{method}_steps"] = r["steps"]
            print(
                f"{dataset} {method}: FID {report.fid}, KID {report.kid} after {r['epochs']:.3g} epochs ({r['steps']} steps) ({fit['seconds']:.0f} {a.clock} s)",
                flush=True,
            )
            grids[method] = tile_images(samples[:64], (28, 28), nrow=8)
            titles[method] = (
                f"{method.upper()}: FID {report.fid.value:.2f} ± {report.fid.stderr:.2f}\n{r['epochs']:.2g} epochs, {fit['seconds'] / 60:.1f} {a.clock} min"
            )
            out.mkdir(parents=True, exist_ok=True)
            atomic_torch_save(model.state_dict(), out / f"{dataset}-{method}.pt")
            atomic_write_text(out / "summary.json", json.dumps({"settings": vars(a), "results": results}, indent=2, default=str))
        floor = results[dataset][a.method[0]]
        for key in ("fid_floor", "fid_floor_stderr", "kid_floor", "kid_floor_stderr"):
            headline[f"{dataset}_{key}"] = floor[key]
        # what a perfect model of the training images would score: n of them at random, against half A
        n = min(a.n_score or len(reference) // 2, len(x))
        real = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(a.seed))[:n]].cpu()
        train_real = quality.score(real, clf, reference, n=n, bootstrap=a.bootstrap, seed=a.seed)
        results[dataset]["training_images"] = train_real.as_dict()
        for key in ("fid", "fid_stderr", "kid", "kid_stderr"):
            headline[f"{dataset}_training_images_{key}"] = results[dataset]["training_images"][key]
        grids["real"] = tile_images(reference[torch.randperm(len(reference), generator=torch.Generator().manual_seed(a.seed))[:64]], (28, 28), nrow=8)
        titles["real"] = f"held-out real images\nfloor FID {floor['fid_floor']:.2f} ± {floor['fid_floor_stderr']:.2f}"
        fig = Figure(figsize=(3.2 * len(grids), 3.9))
        for ax, (name, grid) in zip(fig.subplots(1, len(grids), squeeze=False)[0], grids.items()):
            ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
            ax.set_title(titles[name], fontsize=8)
            ax.axis("off")
        what = "binary draws x ~ p(x | z)" if dataset == "binary" else "means E[x | z]"
        fig.suptitle(f"{dataset} MNIST, same DCGAN generator (w = {a.width}), {a.cpu_minutes:g} CPU min each; {what}", fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.93))
        path = atomic_save_figure(fig, f"{a.figure_prefix}-{dataset}.png", dpi=80)
        grey_png = Image.open(path).convert("L")  # grey levels only: under half the RGB file
        with atomic_file(path) as fh:
            grey_png.save(fh, format="PNG", optimize=True)
        print(f"figure: {path}")
    for key, value in headline.items():
        print(f"{key}: {value:.6g}")
    return {"results": results, "headline": headline}


if __name__ == "__main__":
    main()
