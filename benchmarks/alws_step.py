"""Time of one ALWS iteration (kernel step + model step, forward and backward) against the number of
sleep samples N, for exact, Nyström and random-feature KRR, and for the original research code's
formulation, all in one process on the same draws; with each gradient's cosine similarity to
exact KRR's.

The original formulation (Wenliang et al. 2020's published code, re-expressed; ALGORITHMS.md §4):
kernel step ``A_v = torch.linalg.solve(K_ss + λI, K_sv)`` with autograd through it, loss
mean_v (A_vᵀ t_s − t_v)²; model step ``A_w = torch.linalg.solve(K_ss + λI, K_sw)`` again with
autograd through it (the kernel parameters require grad), loss −mean_m (A_wᵀ t_θ)_m.  Ours
(``wakesleep.estimators.ALWS``): one Cholesky factor of K_ss + λI shared by both steps, an O(N²)
backward that reuses it, and the model step contracted against 1/M without forming A.

Problems (``--problem``), each with a Gaussian kernel on x, median-heuristic bandwidth, the
generic target t = log p(x, z) (the original's formulation is written for it), V = 500 validation
samples:

- ``mixture2d`` (default): the hierarchical mixture of ALGORITHMS.md §7.6 (``HelmholtzMachine.mixture``,
  10 components, 2-D y and x), wake batch of 200 model samples, λ = 1e-2 (the paper's value for
  small 2-D problems);
- ``digits64``: a Gaussian-latent Helmholtz machine 64-64-8 with a Bernoulli likelihood, wake batch
  of 100 binarised 8×8 digits (scikit-learn), λ = 1e-3; the kernel acts on 64-D x, where low-rank
  approximations need far more than m = 500 / F = 1000 to match exact KRR.

    python benchmarks/alws_step.py                      # N = 500 … 8000 on mixture2d
    python benchmarks/alws_step.py --problem digits64
    python benchmarks/alws_step.py --quick              # N = 500, 1000 (smoke test)

Prints a table (the fastest of ``--repeats`` timed iterations after one warm-up, ratios
original/ours, cosines of the θ-gradient and of the kernel-parameter gradient with exact KRR's)
and, with ``--json PATH``, writes the rows as JSON.

``--problem mnist`` (issue #15 item 7) is another comparison: the whole training step
(:func:`wakesleep.training.train_step`: loss, backward, finiteness check, the trainer's Adam) of
ALWS against RWS's step on the *same generator* — the one of ``experiments/alws_binarized_mnist.py``,
``HelmholtzMachine.gaussian([784, 16], hidden=(200,))``, wake batch of 100 binarised MNIST
training images — with that experiment's ALWS settings (its ``estimators()``: exponential-family
target, Gaussian kernel on learned MLP features 784 → 256 → 32, λ = 1e-3, V = 250 validation sleep
samples, q by sleep-phase updates) and its RWS (K = 5, q by wake and sleep), for exact, Nyström
(``--num-inducing``) and random-feature (``--num-features``, default 2000 as the paper's image
experiments) KRR at N = ``--sizes`` (default 1000 2000 5000).  The steps are interleaved in
``--rounds`` rounds (one step of each ALWS variant and 10 RWS steps a round), timed by this
thread's CPU time (one intra-op thread); a ratio is the median over rounds of (ALWS step) /
(median RWS step of the same round).  The θ-gradient cosine with exact KRR is taken on one shared
draw of sleep and validation samples per N, every variant with the same feature network.  Ends
with ``alws_theta_cosine_vs_exact`` and, last, ``alws_step_vs_rws`` for ``--headline`` (default
``rff``) at the largest N:

    python benchmarks/alws_step.py --problem mnist                                 # N = 1000, 2000, 5000
    python benchmarks/alws_step.py --problem mnist --sizes 200 --rounds 1 --num-features 200 --num-inducing 100   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from wakesleep.data import digits
from wakesleep.estimators import ALWS
from wakesleep.io import atomic_write_text
from wakesleep.models import HelmholtzMachine


def flat_grad(params) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params])


def zero(params) -> None:
    for p in params:
        p.grad = None


def ours_step(est: ALWS, model, x, draws):
    """One ALWS iteration with the library estimator; returns (θ-grad, kernel-grad)."""
    theta, kern = model.p_parameters(), list(est.parameters())
    zero(theta + kern)
    est.loss_from_samples(model, x, *draws).loss.backward()
    return flat_grad(theta), flat_grad(kern)


def original_step(est: ALWS, model, x, draws):
    """The original code's formulation with the same kernel module and draws; returns
    (θ-grad, kernel-grad of the kernel step alone)."""
    zs, xs, zv, xv = draws
    theta, kern = model.p_parameters(), list(est.parameters())
    k = est.krr.kernel
    eye = torch.eye(xs.shape[0], dtype=xs.dtype)
    zero(theta + kern)
    # kernel step
    t_s = model.log_joint(xs, zs).detach()
    with torch.no_grad():
        t_v = model.log_joint(xv, zv)
    a_v = torch.linalg.solve(k(xs) + est.krr.lam * eye, k(xs, xv))
    ((a_v.mT @ t_s - t_v) ** 2).mean().backward()
    g_kern = flat_grad(kern)
    # model step: A with autograd through the solve, as in the original
    a_w = torch.linalg.solve(k(xs) + est.krr.lam * eye, k(xs, x))
    (-(a_w.mT @ model.log_joint(xs, zs)).mean()).backward()
    return flat_grad(theta), g_kern


def timed(fn, repeats: int):
    out = fn()  # warm-up (and the gradients reported)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), out  # the least-disturbed run: other jobs share the machine


def cos(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0).item()


# ------------------------------------------------------------------ --problem mnist

MNIST_METHODS = ("exact", "nystrom", "rff")


def mnist_estimators(n: int, a) -> tuple[dict, object]:
    """experiments/alws_binarized_mnist.py's ALWS settings with each KRR method at N = n (the same
    feature network in all), and its RWS."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from alws_binarized_mnist import estimators

    base = estimators(n)
    settings = base["alws"].settings()
    out = {}
    for method in MNIST_METHODS:
        torch.manual_seed(0)
        est = ALWS(**{**settings, "krr": method, "num_features": a.num_features, "num_inducing": a.num_inducing})
        if out:
            est.krr.kernel.features.load_state_dict(out["exact"].krr.kernel.features.state_dict())
        out[method] = est
    return out, base["rws"]


def mnist_main(a) -> int:
    from wakesleep.data import binarized_mnist
    from wakesleep.lab.compare import subset
    from wakesleep.training import TrainConfig, build_optimizer, train_step

    sizes = a.sizes if a.sizes_given else [1000, 2000, 5000]
    if a.headline not in MNIST_METHODS:
        raise SystemExit(f"--headline must be one of {MNIST_METHODS}")
    torch.manual_seed(0)
    model = HelmholtzMachine.gaussian([784, 16], hidden=(200,))
    x = subset(binarized_mnist(download=False).train, 100)
    print(
        f"# ALWS step against RWS step, same generator (experiments/alws_binarized_mnist.py: Gaussian 16-latent, 784-200 MLP, Bernoulli), "
        f"wake batch {x.shape[0]}: torch {torch.__version__}, {platform.processor() or platform.machine()}, {a.threads} thread(s), "
        f"thread CPU time, {a.rounds} rounds; Nystrom m = {a.num_inducing}, RFF F = {a.num_features}"
    )
    print(f"| N | RWS step, ms | {' | '.join(f'{m} step, ms | {m} / RWS' for m in MNIST_METHODS)} | cos θ nystrom | cos θ rff |")
    print("|---|---|" + "---|---|" * len(MNIST_METHODS) + "---|---|")
    rows = []
    for n in sizes:
        ests, rws = mnist_estimators(n, a)
        # θ-gradients on one shared draw (this also sets each kernel's bandwidth from the same samples)
        torch.manual_seed(n)
        with torch.no_grad():
            zs, xs = model.sample(n)
            zv, xv = model.sample(ests["exact"].valid_samples)
        grads = {m: ours_step(est, model, x, (zs, xs, zv, xv))[0] for m, est in ests.items()}
        row = {"N": n, **{f"cos_theta_{m}": cos(grads[m], grads["exact"]) for m in ("nystrom", "rff")}}
        steps = {}
        for name, est in {"rws": rws, **ests}.items():
            m_copy, e_copy = copy.deepcopy(model), copy.deepcopy(est)
            opt = build_optimizer(m_copy, e_copy, TrainConfig(lr_p=1e-3, lr_q=1e-3, lr_estimator=3e-3))
            steps[name] = lambda m_copy=m_copy, e_copy=e_copy, opt=opt: train_step(m_copy, e_copy, opt, x)
        for fn in steps.values():
            fn()  # warm-up
        times = {k: [] for k in steps}
        ratios = {m: [] for m in MNIST_METHODS}
        for _ in range(a.rounds):
            rws_round = []
            for _ in range(10):
                t0 = time.thread_time()
                steps["rws"]()
                rws_round.append(time.thread_time() - t0)
            times["rws"] += rws_round
            for m in MNIST_METHODS:
                t0 = time.thread_time()
                steps[m]()
                times[m].append(time.thread_time() - t0)
                ratios[m].append(times[m][-1] / statistics.median(rws_round))
        row["rws_s"] = statistics.median(times["rws"])
        for m in MNIST_METHODS:
            row[f"{m}_s"] = statistics.median(times[m])
            row[f"{m}_vs_rws"] = statistics.median(ratios[m])
        rows.append(row)
        cells = " | ".join(f"{row[f'{m}_s'] * 1e3:.1f} | {row[f'{m}_vs_rws']:.1f}" for m in MNIST_METHODS)
        print(f"| {n} | {row['rws_s'] * 1e3:.2f} | {cells} | {row['cos_theta_nystrom']:.4f} | {row['cos_theta_rff']:.4f} |", flush=True)
    if a.json:
        atomic_write_text(Path(a.json), json.dumps({"settings": vars(a), "rows": rows}, indent=2))
    head = rows[-1]
    print()
    print(
        f"# key lines: {a.headline} KRR at N = {head['N']} (the largest run), ALWS step / RWS step of the same generator, and its θ-gradient cosine with exact KRR"
    )
    if a.headline != "exact":
        print(f"alws_theta_cosine_vs_exact: {head[f'cos_theta_{a.headline}']:.4f}")
    print(f"alws_step_vs_rws: {head[f'{a.headline}_vs_rws']:.3f}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="sleep-sample sizes N (default 500 ... 8000; mnist: 1000 2000 5000)")
    ap.add_argument("--quick", action="store_true", help="N = 500, 1000 only, 1 repeat")
    ap.add_argument("--repeats", type=int, default=3, help="timed iterations per method and N (the fastest is reported)")
    ap.add_argument("--problem", choices=["mixture2d", "digits64", "mnist"], default="mixture2d")
    ap.add_argument("--num-inducing", type=int, default=500, help="Nyström m")
    ap.add_argument("--num-features", type=int, default=None, help="random Fourier features F (default 1000; mnist: 2000)")
    ap.add_argument("--rounds", type=int, default=5, help="mnist: interleaved rounds of steps (default 5)")
    ap.add_argument("--headline", default="rff", help="mnist: the KRR method of the key lines, exact|nystrom|rff (default rff)")
    ap.add_argument("--lam", type=float, default=None, help="ridge λ (default: 1e-2 mixture2d, 1e-3 digits64)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids contention on a shared machine)")
    ap.add_argument("--skip-original-above", type=int, default=None, help="skip the original formulation for larger N")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = ap.parse_args(argv)
    a.sizes_given = a.sizes is not None
    if a.sizes is None:
        a.sizes = [500, 1000, 2000, 4000, 5000, 8000]
    if a.num_features is None:
        a.num_features = 2000 if a.problem == "mnist" else 1000
    if a.problem == "mnist":
        torch.set_num_threads(a.threads)
        return mnist_main(a)
    if a.quick:
        a.sizes, a.repeats = [500, 1000], 1
    torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(0)
    if a.problem == "digits64":
        model = HelmholtzMachine.gaussian([64, 8], hidden=(64,)).to(dtype)
        x = digits().train[:100].to(dtype)
        a.lam = 1e-3 if a.lam is None else a.lam
    else:
        model = HelmholtzMachine.mixture(2, 2, 10).to(dtype)
        with torch.no_grad():
            model.generative[1].net.weight.mul_(3.0)  # spread the component means
            x = model.sample(200)[1]
        a.lam = 1e-2 if a.lam is None else a.lam
    methods = {
        "exact": dict(krr="exact"),
        "nystrom": dict(krr="nystrom", num_inducing=a.num_inducing),
        "rff": dict(krr="rff", num_features=a.num_features),
    }
    print(
        f"# ALWS step benchmark ({a.problem}, generic target): torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, "
        f"{a.threads} thread(s), {a.dtype}, M = {x.shape[0]}, V = 500, lam = {a.lam}, "
        f"Nystrom m = {a.num_inducing}, RFF F = {a.num_features}"
    )
    header = (
        f"{'N':>6} {'original s':>10} {'exact s':>8} {'nystrom s':>9} {'rff s':>7} "
        f"{'orig/exact':>10} {'orig/nys':>8} {'orig/rff':>8} "
        f"{'cos θ orig':>10} {'cos θ nys':>9} {'cos θ rff':>9} {'cos k orig':>10} {'cos k nys':>9} {'cos k rff':>9}"
    )
    print(header)
    rows = []
    for n in a.sizes:
        torch.manual_seed(n)
        with torch.no_grad():
            zs, xs = model.sample(n)
            zv, xv = model.sample(500)
        draws = (zs, xs, zv, xv)
        row = {"N": n}
        grads, ests = {}, {}
        for name, kw in methods.items():
            # the first (warm-up) call sets the bandwidth by the median heuristic on xs
            est = ests[name] = ALWS(sleep_samples=n, valid_samples=500, lam=a.lam, target="generic", **kw).to(dtype)
            row[name], grads[name] = timed(lambda: ours_step(est, model, x, draws), a.repeats)
        if a.skip_original_above is None or n <= a.skip_original_above:
            row["original"], grads["original"] = timed(lambda: original_step(ests["exact"], model, x, draws), a.repeats)
        ref_theta, ref_kern = grads["exact"]
        for name in ("original", "nystrom", "rff"):
            if name in grads:
                row[f"cos_theta_{name}"] = cos(grads[name][0], ref_theta)
                row[f"cos_kernel_{name}"] = cos(grads[name][1], ref_kern)
        for name in ("exact", "nystrom", "rff"):
            if "original" in row:
                row[f"original_over_{name}"] = row["original"] / row[name]
        rows.append(row)

        def f(key, fmt):
            v = row.get(key)
            return format(v, fmt) if v is not None else "-"

        print(
            f"{n:>6} {f('original', '10.3f')} {f('exact', '8.3f')} {f('nystrom', '9.3f')} {f('rff', '7.3f')} "
            f"{f('original_over_exact', '10.2f')} {f('original_over_nystrom', '8.1f')} {f('original_over_rff', '8.1f')} "
            f"{f('cos_theta_original', '10.5f')} {f('cos_theta_nystrom', '9.4f')} {f('cos_theta_rff', '9.4f')} "
            f"{f('cos_kernel_original', '10.5f')} {f('cos_kernel_nystrom', '9.4f')} {f('cos_kernel_rff', '9.4f')}",
            flush=True,
        )
    if a.json:
        atomic_write_text(Path(a.json), json.dumps({"settings": vars(a), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
