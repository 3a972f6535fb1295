"""Time to quality: CPU-seconds until an SBN-200 on binarised MNIST first reaches a validation log-likelihood level,
for ``wakesleep`` RWS against Pyro's ``ReweightedWakeSleep`` and a plain PyTorch RWS loop.

The number a user feels is not the time of one step but how long until the model is good.  Three
trainers fit the same model and guide from the same initial parameters, on the same minibatches
(one fixed permutation per epoch, seeded by ``--seed`` and the epoch), with the same seed for
their random numbers:

- **ours**: ``wakesleep.RWS(k=K)`` (q by wake and sleep, ``q_update="both"``) stepped by the
  trainer's own step (:func:`wakesleep.training.train_step`: loss, backward, finiteness check, the
  trainer's fused Adam); with ``--compile`` the step of ``TrainConfig(compile=True)``
  (:func:`wakesleep.training.compile_estimator` and the compiled Bernoulli kernels);
- **pyro**: the same model and guide written for Pyro (``benchmarks/pyro_counterpart.py``, also
  used by ``rws_step.py``), ``SVI`` with ``ReweightedWakeSleep(num_particles=K, insomnia=0.5,
  num_sleep_particles=1, vectorize_particles=True)`` and ``pyro.optim.Adam``.  Pyro normalises the
  importance weights once per batch, not per datapoint (a different estimator);
- **plain**: the loop a user would write with ``torch.distributions`` (:func:`plain_rws_loss`):
  K particles from q(z | x), Bernoulli log-probabilities, weights self-normalised per datapoint
  with ``logsumexp``, wake-θ, wake-φ and sleep-φ (q's two updates averaged, as ours and as
  Pyro's insomnia 0.5), ``torch.optim.Adam`` with its defaults; distributions keep torch's default
  argument validation, as a user's code would.

Model: SBN 784-200 (``HelmholtzMachine.sbn([784, 200])``: p(z) factorial Bernoulli with learned
logits, p(x | z) = Bernoulli(σ(W z + b)), q(z | x) = Bernoulli(σ(V x + c))); data: fixed-binarised
MNIST (``wakesleep.data.binarized_mnist``, ``$WAKESLEEP_DATA_DIR``), the 50,000 training images in
batches of 100; K = 5; Adam with learning rate 1e-3 for p and q; one intra-op thread.

Clock: the process's CPU time (``time.process_time``) plus that of its waited-for child processes
(``os.times``: with ``--compile`` the C++ compiler Inductor runs, so compiling is counted, as a user
pays it; Inductor compiles in this process, ``TORCHINDUCTOR_COMPILE_THREADS=1``, into a fresh
cache directory unless ``TORCHINDUCTOR_CACHE_DIR`` is set).  Only the training steps are
clocked: the clock is paused while the model is evaluated, and one throwaway step of each trainer
(on a copy of the model) runs before its clock starts, so that one-time costs of the process
(lazy imports: Pyro's first SVI step in a process takes seconds) are not counted.  Every ``--eval-every`` CPU-seconds
(and at 0 and at the end of the budget) each trainer's parameters are loaded into one
``HelmholtzMachine`` and scored by one common evaluator, :func:`wakesleep.evaluate.log_likelihood`
with K = ``--valid-k`` (100) particles on a fixed random ``--valid-n`` (1000) of the 10,000
validation images, with the same seed each time (and the trainers' random stream is restored
afterwards), eager kernels.  A trainer stops when it first reaches ``--level`` nats (default −110),
or when its budget is spent: ``--budget`` CPU-seconds for ours, ``--baseline-budget`` (default 10×
that) for the others; ``--full-curves`` runs every trainer to its budget.

Printed: each trainer's curve and its time to the level (the CPU time of the first evaluation at or
above it; the crossing lies between that evaluation and the one before), then, last,

    time_to_quality_vs_pyro: VALUE          Pyro's time to the level / ours
    time_to_quality_vs_plain_torch: VALUE   the plain loop's time / ours

``--levels L1 L2 ...`` adds a table of every trainer's time to each of those levels, read off the
same curves (a run stops at ``--level``, so levels above it are all on its curve).

A baseline that did not reach the level within its budget gives a lower bound, printed as
``>= VALUE`` (its budget / our time), with a line saying so; if ours did not reach the level the
ratios are ``nan``.  ``--plot PATH`` draws the three curves (validation log-likelihood against CPU
seconds); ``--json PATH`` writes the curves and settings, rewritten after every evaluation (a long
run stopped early keeps its curves so far).

    PYTHONPATH=src python benchmarks/time_to_quality.py --budget 1200 --plot docs/figures/time-to-quality.png
    PYTHONPATH=src python benchmarks/time_to_quality.py --budget 1200 --compile
    PYTHONPATH=src python benchmarks/time_to_quality.py --budget 5 --level -400 --eval-every 2 --valid-n 200   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

if "--compile" in sys.argv:  # before torch is imported: compile in this process (its CPU time is on our clock)
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="ttq-inductor-"))  # a first run: nothing cached

import torch
from torch import nn
from torch.distributions import Bernoulli
from tqdm.auto import tqdm

import wakesleep as ws
from wakesleep import fused
from wakesleep.data import binarized_mnist
from wakesleep.evaluate import log_likelihood
from wakesleep.io import atomic_save_figure, atomic_write_text
from wakesleep.lab.compare import subset
from wakesleep.training import TrainConfig, build_optimizer, compile_estimator, train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pyro_counterpart import pyro_svi  # noqa: E402  (benchmarks/pyro_counterpart.py, shared with rws_step.py)

TRAINERS = ("ours", "pyro", "plain")
LABELS = {"ours": "wakesleep RWS", "pyro": "Pyro ReweightedWakeSleep", "plain": "plain PyTorch RWS loop"}


def cpu_clock() -> float:
    """CPU seconds of this process and of its waited-for children (the C++ compiler under --compile)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


# ------------------------------------------------------------------ the plain loop


class PlainSBN(nn.Module):
    """The SBN 784-200 as a user writes it: prior logits, a decoder and an encoder layer."""

    def __init__(self, data_dim: int = 784, latent_dim: int = 200):
        super().__init__()
        self.prior_logits = nn.Parameter(torch.zeros(latent_dim))
        self.decoder = nn.Linear(latent_dim, data_dim)
        self.encoder = nn.Linear(data_dim, latent_dim)

    @classmethod
    def from_helmholtz(cls, model: ws.HelmholtzMachine) -> PlainSBN:
        """A copy of a one-layer ``HelmholtzMachine.sbn``'s parameters."""
        net = cls(model.generative[0].net.out_features, model.prior.out_features).to(model.prior.logits.dtype)
        net.load_state_dict(
            {
                "prior_logits": model.prior.logits.detach().clone(),
                "decoder.weight": model.generative[0].net.weight.detach().clone(),
                "decoder.bias": model.generative[0].net.bias.detach().clone(),
                "encoder.weight": model.recognition[0].net.weight.detach().clone(),
                "encoder.bias": model.recognition[0].net.bias.detach().clone(),
            }
        )
        return net

    def helmholtz_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters under ``HelmholtzMachine.sbn([784, 200])``'s names."""
        return {
            "prior.logits": self.prior_logits.detach().clone(),
            "generative.0.net.weight": self.decoder.weight.detach().clone(),
            "generative.0.net.bias": self.decoder.bias.detach().clone(),
            "recognition.0.net.weight": self.encoder.weight.detach().clone(),
            "recognition.0.net.bias": self.encoder.bias.detach().clone(),
        }


def plain_rws_loss(net: PlainSBN, x: torch.Tensor, k: int, draws=None) -> torch.Tensor:
    """Reweighted wake-sleep (Bornschein & Bengio 2015) on a minibatch x [B, D], written plainly.

    z_k ~ q(z | x), k = 1..K; log w_k = log p(z_k) + log p(x | z_k) − log q(z_k | x);
    w̃_k = exp(log w_k − logsumexp_j log w_j) per datapoint (detached).  The loss (mean over the batch)
    is wake-θ −Σ_k w̃_k log p(x, z_k) plus ½ (wake-φ −Σ_k w̃_k log q(z_k | x) + sleep-φ
    −log q(z̃ | x̃) with z̃ ~ p(z), x̃ ~ p(x | z̃)): θ gets only the first term's gradient, φ the
    other two (z is sampled without gradient).  ``draws`` = (z [K, B, H], z̃ [B, H], x̃ [B, D])
    replaces the random draws (for tests); returns the scalar loss, nats.
    """
    q = Bernoulli(logits=net.encoder(x))
    z = q.sample((k,)) if draws is None else draws[0]  # [K, B, H]
    log_q = q.log_prob(z).sum(-1)  # [K, B]
    log_p = Bernoulli(logits=net.prior_logits).log_prob(z).sum(-1) + Bernoulli(logits=net.decoder(z)).log_prob(x).sum(-1)
    log_w = (log_p - log_q).detach()
    w = torch.exp(log_w - torch.logsumexp(log_w, dim=0))  # self-normalised per datapoint
    wake_theta = -(w * log_p).sum(0).mean()
    wake_phi = -(w * log_q).sum(0).mean()
    if draws is None:
        with torch.no_grad():
            z_sleep = Bernoulli(logits=net.prior_logits).sample((x.shape[0],))
            x_sleep = Bernoulli(logits=net.decoder(z_sleep)).sample()
    else:
        z_sleep, x_sleep = draws[1], draws[2]
    sleep_phi = -Bernoulli(logits=net.encoder(x_sleep)).log_prob(z_sleep).sum(-1).mean()
    return wake_theta + 0.5 * (wake_phi + sleep_phi)


# ------------------------------------------------------------------ the three trainers


@dataclass
class Trainer:
    """A step on a minibatch and the current parameters under HelmholtzMachine's names."""

    step: object
    state_dict: object
    compiled: bool = False


def make_trainer(name: str, model: ws.HelmholtzMachine, k: int, lr: float, compiled: bool) -> Trainer:
    if name == "ours":
        model = copy.deepcopy(model)
        est = ws.RWS(k=k)
        opt = build_optimizer(model, est, TrainConfig(lr_p=lr, lr_q=lr))
        forward = compile_estimator(est) if compiled else None

        def step(x):
            if compiled:
                fused.use_compiled_kernels(True)
            try:
                train_step(model, est, opt, x, forward)
            finally:
                if compiled:
                    fused.use_compiled_kernels(False)  # the evaluator runs the eager kernels for every trainer

        return Trainer(step, lambda: {k_: v.detach().clone() for k_, v in model.state_dict().items()}, compiled)
    if name == "pyro":
        counterpart = pyro_svi(model, "rws", k, lr=lr)
        return Trainer(counterpart.step, counterpart.state_dict)
    if name == "plain":
        net = PlainSBN.from_helmholtz(model)
        opt = torch.optim.Adam(net.parameters(), lr=lr)

        def plain_step(x):
            loss = plain_rws_loss(net, x, k)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return Trainer(plain_step, net.helmholtz_state_dict)
    raise ValueError(f"unknown trainer {name!r}; choose from {TRAINERS}")


# ------------------------------------------------------------------ the common evaluator


class Evaluator:
    """The validation log-likelihood of parameters under HelmholtzMachine.sbn's names: one model,
    ``wakesleep.evaluate.log_likelihood`` with ``k`` particles on fixed images and a fixed seed,
    eager kernels; the caller's random stream is left as it was."""

    def __init__(self, valid: torch.Tensor, k: int, seed: int, dims=(784, 200)):
        self.valid, self.k, self.seed = valid, k, seed
        self.model = ws.HelmholtzMachine.sbn(list(dims))

    def __call__(self, state: dict[str, torch.Tensor]) -> float:
        self.model.load_state_dict(state)
        self.model.eval()
        with torch.random.fork_rng(devices=[]):
            return log_likelihood(self.model, self.valid, k=self.k, seed=self.seed).mean


@dataclass
class Curve:
    name: str
    budget: float
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    reached: float | None = None  # CPU time of the first evaluation at or above the level
    reached_after: float | None = None  # CPU time of the evaluation before it (the crossing lies in between)


def batches(data: torch.Tensor, batch: int, seed: int):
    """Minibatches forever: epoch e is the permutation seeded by (seed, e), cut into full batches."""
    n, epoch = data.shape[0], 0
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        for b in range(n // batch):
            yield data[order[b * batch : (b + 1) * batch]]
        epoch += 1


def run_trainer(name, trainer: Trainer, data, evaluate: Evaluator, a, budget: float, on_eval=None) -> Curve:
    """Step ``trainer`` on the common minibatches until the level is reached or ``budget`` CPU seconds are spent;
    ``on_eval(curve)`` after each evaluation (so that an interrupted long run keeps its curve so far)."""
    curve = Curve(name, budget)
    torch.manual_seed(a.seed)  # the same random stream for every trainer
    spent, next_eval, steps = 0.0, 0.0, 0
    bar = tqdm(total=round(budget), desc=name, unit="CPU s", disable=a.no_progress, dynamic_ncols=True)
    feed = batches(data, a.batch_size, a.seed)
    while True:
        if spent >= next_eval or spent >= budget:
            ll = evaluate(trainer.state_dict())  # off the clock
            curve.times.append(spent)
            curve.values.append(ll)
            curve.steps.append(steps)
            bar.set_postfix(valid=f"{ll:.1f}", steps=steps)
            if on_eval is not None:
                on_eval(curve)
            if curve.reached is None:
                curve.reached, curve.reached_after = first_reached(curve, a.level)
            if (curve.reached is not None and not a.full_curves) or spent >= budget:
                break
            while next_eval <= spent:
                next_eval += a.eval_every
        x = next(feed)
        t0 = cpu_clock()
        trainer.step(x)
        dt = cpu_clock() - t0
        spent += dt
        steps += 1
        bar.update(min(dt, max(0.0, budget - bar.n)))
    bar.close()
    return curve


def first_reached(c: Curve, level: float) -> tuple[float | None, float | None]:
    """(CPU time of c's first evaluation at or above ``level``, the evaluation time before it), or (None, None)."""
    for i, v in enumerate(c.values):
        if v >= level:
            return c.times[i], (c.times[i - 1] if i else 0.0)
    return None, None


def at_level(c: Curve, level: float) -> Curve:
    """``c`` with ``reached`` set for ``level`` instead of the run's own level (same curve)."""
    reached, after = first_reached(c, level)
    return Curve(c.name, c.budget, c.times, c.values, c.steps, reached, after)


def levels_table(curves: dict[str, Curve], levels: list[float]) -> list[str]:
    """A markdown table: for each level, each trainer's CPU seconds to reach it (or that it did not
    within its curve) and each baseline's time over ours (a lower bound, >=, where it did not)."""
    names = [n for n in TRAINERS if n in curves]
    head = "| level, nats | " + " | ".join(f"{LABELS[n]}, CPU s" for n in names)
    bases = [n for n in names if n != "ours"] if "ours" in curves else []
    head += "".join(f" | {LABELS[n]} / ours" for n in bases) + " |"
    out = [head, "|---" * (1 + len(names) + len(bases)) + "|"]
    for level in levels:
        cells = [f"{level:g}"]
        for n in names:
            reached, after = first_reached(curves[n], level)
            cells.append(f"{reached:.0f} ({after:.0f}–{reached:.0f})" if reached is not None else f"not within {curves[n].times[-1]:.0f}")
        ours = at_level(curves["ours"], level) if bases else None
        for n in bases:
            cells.append(ratio(at_level(curves[n], level), ours)[0])
        out.append("| " + " | ".join(cells) + " |")
    return out


def ratio(base: Curve | None, ours: Curve) -> tuple[str, str | None]:
    """(value, note): the baseline's time to the level over ours, or a lower bound, or nan."""
    if base is None:
        return "nan", "not run"
    if ours.reached is None or ours.reached <= 0:
        return "nan", f"ours did not reach the level within {ours.budget:g} CPU s (raise --budget)"
    if base.reached is None:
        spent = base.times[-1]
        return f">= {spent / ours.reached:.2f}", f"{base.name} did not reach the level within its budget ({spent:.0f} CPU s): a lower bound"
    low, high = base.reached_after / ours.reached, base.reached / max(ours.reached_after, 1e-9)
    bracket = f"{low:.2f} to {high:.2f}" if ours.reached_after > 0 else f"{low:.2f} or more"
    return f"{base.reached / ours.reached:.2f}", f"the crossings lie between evaluations: the ratio lies in {bracket}"


def plot(curves: list[Curve], level: float, path: str, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for c in curves:
        ax.plot(
            c.times,
            c.values,
            marker=".",
            label=LABELS[c.name] + (f" (level at {c.reached:.0f} s)" if c.reached is not None else f" (level not reached in {c.times[-1]:.0f} s)"),
        )
    ax.axhline(level, color="grey", ls="--", lw=1, label=f"level {level:g} nats")
    low = min(min(c.values) for c in curves)
    # The approach to the level is what matters: the first minutes' climb from ~-550 nats is cut off.
    ax.set_ylim(max(low, level - 40) - 2, max(max(c.values) for c in curves) + 2)
    positive = [t for c in curves for t in c.times if t > 0]
    if positive and max(positive) / min(positive) > 20:  # runs of very different lengths: log time
        ax.set_xscale("log")
        ax.set_xlim(min(positive) * 0.9, max(positive) * 1.1)
    ax.set_xlabel("CPU seconds of training (one thread; evaluation not counted)")
    ax.set_ylabel("validation log-likelihood, nats")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_save_figure(fig, path)


#: Settings that must agree between a run and the --json files whose curves it takes.
SAME = ("level", "eval_every", "valid_n", "valid_k", "k", "batch_size", "lr", "train_n", "seed", "flush_denormal")


def load_curves(paths, a, parser) -> dict[str, Curve]:
    """Curves from earlier ``--json`` files with the same settings (the first file naming a trainer wins)."""
    out = {}
    for path in paths:
        saved = json.loads(Path(path).read_text())
        differ = {key: (saved["settings"].get(key), getattr(a, key)) for key in SAME if saved["settings"].get(key) != getattr(a, key)}
        if differ:
            parser.error(f"--curves-from {path}: settings differ from this run's (saved, here): {differ}")
        for c in saved["curves"]:
            if c["name"] not in out:
                out[c["name"]] = Curve(**c)
                if c["name"] == "ours" and saved["settings"].get("compile") != a.compile:
                    parser.error(
                        f"--curves-from {path}: its 'ours' was {'compiled' if saved['settings'].get('compile') else 'eager'}; pass the same --compile"
                    )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--level", type=float, default=-110.0, help="validation log-likelihood to reach, nats (default -110)")
    p.add_argument("--budget", type=float, default=1200.0, help="ours: CPU seconds at most (default 1200)")
    p.add_argument("--baseline-budget", type=float, default=None, help="pyro and plain: CPU seconds at most (default 10 x --budget)")
    p.add_argument(
        "--trainers",
        nargs="+",
        choices=TRAINERS,
        default=None,
        help="trainers to run (default: all three; with --curves-from, none: only the files' curves are combined)",
    )
    p.add_argument("--compile", action="store_true", help="ours as TrainConfig(compile=True) runs it (compiling is on the clock)")
    p.add_argument("--eval-every", type=float, default=20.0, help="CPU seconds of training between evaluations (default 20)")
    p.add_argument("--valid-n", type=int, default=1000, help="validation images, a fixed random subset (default 1000)")
    p.add_argument("--valid-k", type=int, default=100, help="particles of the validation log-likelihood (default 100)")
    p.add_argument("--k", type=int, default=5, help="training particles (default 5)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate for p and q (default 1e-3)")
    p.add_argument("--train-n", type=int, default=None, help="use only the first N training images (smoke tests; default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full-curves", action="store_true", help="run every trainer to its budget, not only until the level")
    p.add_argument("--flush-denormal", action="store_true", help="flush subnormal floats to zero (off: as a user runs it)")
    p.add_argument("--data-dir", default=None, help="default: $WAKESLEEP_DATA_DIR")
    p.add_argument("--plot", default=None, help="write the curves to this PNG")
    p.add_argument("--json", default=None, help="write the curves and settings to this JSON file")
    p.add_argument(
        "--curves-from",
        nargs="+",
        default=[],
        metavar="JSON",
        help="take these trainers' curves from earlier --json files instead of running them (same settings required): "
        "e.g. run --trainers pyro and --trainers ours plain as two processes with --json, then combine with --curves-from A B",
    )
    p.add_argument(
        "--levels",
        nargs="+",
        type=float,
        default=[],
        metavar="NATS",
        help="also print a table of every trainer's time to each of these levels (read off the same curves) and the ratios",
    )
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.budget <= 0 or a.eval_every <= 0:
        p.error("--budget and --eval-every must be positive")
    if a.trainers is None:  # combining saved curves must not start a long run of a trainer the files lack
        a.trainers = [] if a.curves_from else list(TRAINERS)
    baseline_budget = 10 * a.budget if a.baseline_budget is None else a.baseline_budget
    torch.set_num_threads(1)
    if a.flush_denormal:
        torch.set_flush_denormal(True)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if a.compile and not fused.use_compiled_kernels(True):
        raise SystemExit("--compile: torch.compile is unavailable here (see the warning above)")
    fused.use_compiled_kernels(False)

    data = binarized_mnist(a.data_dir, download=False)
    train = data.train if a.train_n is None else data.train[: a.train_n]
    if train.shape[0] < a.batch_size:
        p.error(f"--train-n {a.train_n} is smaller than one batch of {a.batch_size}")
    evaluate = Evaluator(subset(data.valid, a.valid_n), a.valid_k, a.seed)
    torch.manual_seed(a.seed)
    model = ws.HelmholtzMachine.sbn([784, 200])  # every trainer starts from these parameters
    print(
        f"SBN 784-200 on binarised MNIST ({train.shape[0]} training images), batch {a.batch_size}, K = {a.k}, Adam lr {a.lr}, seed {a.seed}, "
        f"1 thread, torch {torch.__version__}; validation: K = {a.valid_k} on {evaluate.valid.shape[0]} images every {a.eval_every:g} CPU s; "
        f"level {a.level:g} nats; budgets: ours {a.budget:g} CPU s, others {baseline_budget:g}; ours {'compiled' if a.compile else 'eager'}; "
        f"subnormals {'flushed' if a.flush_denormal else 'kept'}",
        flush=True,
    )
    curves = load_curves(a.curves_from, a, p)  # these trainers are not run again

    def save_json(done: dict[str, Curve]) -> None:
        """The settings and the curves so far (rewritten after every evaluation: a long run stopped early keeps them)."""
        if a.json:
            settings = vars(a) | {"baseline_budget": baseline_budget}
            atomic_write_text(Path(a.json), json.dumps({"settings": settings, "curves": [vars(c) for c in done.values()]}, indent=2))

    for name, c in curves.items():
        print(
            f"{LABELS[name]}: from --curves-from; "
            + (
                f"reached {a.level:g} at {c.reached:.1f} CPU s"
                if c.reached is not None
                else f"did not reach {a.level:g} within {c.times[-1]:.1f} CPU s"
            )
            + "; curve (CPU s: nats): "
            + ", ".join(f"{t:.1f}: {v:.1f}" for t, v in zip(c.times, c.values))
        )
    for name in [t for t in a.trainers if t not in curves]:
        # One throwaway eager step first, off the clock, so that one-time costs of the process
        # (lazy imports and initialisation: Pyro's first SVI step takes seconds) are not the
        # method's; the trainer itself starts afresh (compiling, under --compile, stays on the clock).
        make_trainer(name, model, a.k, a.lr, False).step(train[: a.batch_size])
        trainer = make_trainer(name, model, a.k, a.lr, a.compile and name == "ours")
        curves[name] = run_trainer(
            name, trainer, train, evaluate, a, a.budget if name == "ours" else baseline_budget, lambda c, n=name: save_json({**curves, n: c})
        )
        c = curves[name]
        where = (
            f"reached {a.level:g} at {c.reached:.1f} CPU s (between {c.reached_after:.1f} and {c.reached:.1f})"
            if c.reached is not None
            else f"did not reach {a.level:g} within {c.times[-1]:.1f} CPU s"
        )
        print(f"{LABELS[name]}{' (compiled)' if trainer.compiled else ''}: {where}; {c.steps[-1]} steps; last {c.values[-1]:.2f} nats", flush=True)
        print("  curve (CPU s: nats): " + ", ".join(f"{t:.1f}: {v:.1f}" for t, v in zip(c.times, c.values)), flush=True)

    if a.plot and curves:
        plot(
            list(curves.values()),
            a.level,
            a.plot,
            f"SBN-200, binarised MNIST, batch {a.batch_size}, K = {a.k}; validation K = {a.valid_k} on {evaluate.valid.shape[0]} images"
            + ("; ours compiled" if a.compile else ""),
        )
        print(f"figure: {a.plot}")
    save_json(curves)

    if a.levels and curves:
        print()
        print("time to each level (CPU s of training; the crossing lies in the bracket; a ratio '>= R' is a lower bound):")
        print("\n".join(levels_table(curves, a.levels)))

    print()
    print(f"# key lines: time to {a.level:g} nats of the baseline over ours ({'compiled' if a.compile else 'eager'}), CPU seconds of one thread")
    ours = curves.get("ours")
    lines = []
    for key, name in (("time_to_quality_vs_pyro", "pyro"), ("time_to_quality_vs_plain_torch", "plain")):
        if ours is None:
            value, note = "nan", "ours not run"
        else:
            value, note = ratio(curves.get(name), ours)
        if note:
            print(f"# {key}: {note}")
        lines.append(f"{key}: {value}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
