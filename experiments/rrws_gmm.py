"""Le et al. (2019)'s Gaussian-mixture study, their code and ours side by side, in the setting of
their code (ALGORITHMS.md §9): π = softmax(0.5·u), Adam at 1e-3 on u and φ, a fresh batch of 100
from the true model at every step, q's gradient std summed over elements and divided by 104.

    python experiments/rrws_gmm.py run --rrws /path/to/rrws [--iterations 1000] [--seeds 1 2]
    python experiments/rrws_gmm.py report                    # the table (median [min, max]) and the figure

``--rrws`` is a checkout of https://github.com/tuananhle7/rrws; nothing of it is copied here.  Their
``gmm/`` modules are imported from that path and their own training functions and callbacks
(``train.train_*``, ``train.Train*Callback``: their metrics, their gradient-std measurement) run
unchanged, except for the compatibility patches in :data:`PATCHES`, applied at run time and
recorded with the results.  Ours: ``examples/gmm.py``'s hand-written mixture with the 0.5 logit
scale (:class:`RrwsMixture`), trained by :func:`wakesleep.train` on a stream of fresh batches
(:mod:`wakesleep.training.stream`), validated every ``--eval-every`` steps on 100 fixed points.

Starts: ``far`` (their default, logits reversed(2·arange(20)): π ∝ e^(19−c)) and ``near`` (their
``--init-near``: all logits 1, uniform π).  Results go to ``runs/rrws-gmm/results.json`` (one record
per run, written as each run ends, so a cut run keeps what finished).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import statistics
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch

import wakesleep as ws
from wakesleep.estimators.base import EstimatorOutput, ParticleEstimator
from wakesleep.importance import log_mean_exp
from wakesleep.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
import gmm  # noqa: E402

LOGIT_SCALE = 0.5  # their GenerativeModel: π = softmax(0.5 · mixture_logits)
#: Their grad-std divisor: Σ of the first dimensions of q's six parameter tensors (16+16+16+16+20+20),
#: not its 644 elements (util.OnlineMeanStd.avg_of_means_stds).
RRWS_GRAD_STD_DIVISOR = 104
Q_ELEMENTS = 644
STARTS = {"far": [2.0 * c for c in reversed(range(20))], "near": [1.0] * 20}
#: Compatibility patches to their code on today's torch, applied at run time: (what, why).
PATCHES = [
    (
        "util.sample_relax: the masks latent.byte() and 1 - latent.byte() become latent.bool() and ~latent.bool()",
        "indexing with a uint8 mask is refused by torch >= 2 (their code was written for torch 0.4); RELAX only",
    ),
    (
        "torch.distributions' argument validation off during their runs (Distribution.set_default_validate_args(False))",
        "torch 0.4 did not validate; their Concrete scores relaxed points with OneHotCategorical.log_prob, which today's default refuses",
    ),
    (
        "train.train_relax's Adam steps the parameters through .data (DataAdam), as torch 0.4's Adam did",
        "their control-variate update differentiates q's gradient graph after the Adam step; today's in-place step bumps the "
        "parameters' version counters and autograd refuses; RELAX only",
    ),
]


class DataAdam(torch.optim.Adam):
    """PATCHES[2]: Adam that updates ``p.data`` (outside autograd's version counting), as torch 0.4's did."""

    def __init__(self, params, **kwargs):
        self._params = list(params)
        super().__init__([p.data for p in self._params], **kwargs)

    def zero_grad(self, set_to_none: bool = True):
        for p in self._params:
            p.grad = None

    def step(self, closure=None):
        for p, alias in zip(self._params, self.param_groups[0]["params"]):
            alias.grad = None if p.grad is None else p.grad.detach()
        return super().step(closure)


def rrws_grad_std(per_element_std_mean: float, repeats: int = 10, elements: int = Q_ELEMENTS, divisor: int = RRWS_GRAD_STD_DIVISOR) -> float:
    """Their q-gradient std from ours: ours (``valid_q_grad_std``) is the mean over φ's 644 elements of
    the (R − 1) standard deviation of R repeated gradients; theirs sums the per-element 1/R standard
    deviations and divides by 104.  Theirs = ours · 644 / 104 · √((R − 1)/R)."""
    return per_element_std_mean * elements / divisor * math.sqrt((repeats - 1) / repeats)


class RrwsMixture(gmm.HandWrittenMixture):
    """``examples/gmm.py``'s mixture as their code has it: π = softmax(0.5·u), u from ``start``."""

    def __init__(self, start: str = "near"):
        super().__init__()
        with torch.no_grad():
            self.prior.logits.copy_(torch.tensor(STARTS[start]))

    def _log_pi(self):
        return torch.log_softmax(LOGIT_SCALE * self.prior.logits, 0)

    def sample(self, n):
        with torch.no_grad():
            c = torch.multinomial(self._log_pi().exp(), n, replacement=True)
            return c, (self.prior.means[c] + gmm.SIGMA * torch.randn(n, device=c.device))[:, None]

    def log_joint(self, x, c):
        return self._log_pi()[c] + self._log_lik(x, c)

    def log_prior(self, c):
        return self._log_pi()[c]

    def prior_distribution(self):
        return torch.distributions.OneHotCategorical(logits=LOGIT_SCALE * self.prior.logits)

    def metrics(self, x):
        err = self._log_pi().exp().detach() - gmm.true_probs().to(x)
        q = gmm.proposal_probs(self, x)
        return {"pi_l2": err.norm().item(), "q_l2": (q - gmm.true_posterior(x)).norm(dim=-1).mean().item()}


class BoundReinforce(ParticleEstimator):
    r"""Their REINFORCE: the score function of the K-sample bound L̂ = log (1/K) Σ_k w_k, no baseline.
    θ and φ ascend ∇L̂ + sg(L̂) Σ_k ∇φ log q_φ(z_k | x); surrogate −mean_b [L̂ + sg(L̂) Σ_k log q_k].
    (The library's ``Reinforce`` is the ELBO's score function averaged over K samples.)"""

    name = "reinforce-bound"

    def forward(self, model, x):
        zs, log_q = model.propose(x, self.k)
        bound = log_mean_exp(model.log_joint(x, zs) - log_q)  # [B]
        loss = -(bound + bound.detach() * log_q.sum(0)).mean()
        return EstimatorOutput(loss, {"objective": bound.detach().mean()})


def ours_estimator(name: str, k: int):
    """Our estimator for one of the study's names."""
    return {
        "ws": lambda: ws.RWS(k=k, q_update="sleep", sleep_batch=100 * k),
        "rws": lambda: ws.RWS(k=k, q_update="wake"),
        "drws": lambda: ws.RWS(k=k, q_update="wake", defensive=0.2),
        "vimco": lambda: ws.VIMCO(k=k),
        "reinforce-elbo": lambda: ws.Reinforce(k=k),
        "reinforce-bound": lambda: BoundReinforce(k=k),
        "concrete": lambda: ws.Concrete(k=k, temperature=1.0),
        "relax": lambda: ws.RELAX(k=k),
    }[name]()


#: The study's estimators: our name -> their train mode (None: not in their code).
THEIRS = {"ws": "ws", "rws": "ww", "dww": "dww", "vimco": "vimco", "reinforce-bound": "reinforce", "concrete": "concrete", "relax": "relax"}
OURS = ("ws", "rws", "drws", "vimco", "reinforce-elbo", "reinforce-bound", "concrete", "relax")


def grid(ks_all=(2, 20), ks_full=(2, 5, 10, 20), full=("rws", "vimco")) -> list[tuple[str, str, int]]:
    """(side, estimator, K): every estimator at ``ks_all``, the ``full`` ones at ``ks_full`` too."""
    out = []
    for side, names in (("theirs", list(THEIRS)), ("ours", list(OURS))):
        for name in names:
            for k in ks_full if name in full else ks_all:
                out.append((side, name, k))
    return out


def load_theirs(path: str | Path):
    """Their ``gmm/`` modules (util, models, losses, train) from a checkout, with :data:`PATCHES` applied.

    Raises:
        SystemExit: ``path`` is not a checkout of tuananhle7/rrws (no ``gmm/train.py``)."""
    root = Path(path).expanduser()
    gmm_dir = root / "gmm" if (root / "gmm" / "train.py").is_file() else root
    if not (gmm_dir / "train.py").is_file() or not (gmm_dir / "losses.py").is_file():
        raise SystemExit(f"{path}: not a checkout of tuananhle7/rrws (no gmm/train.py); clone https://github.com/tuananhle7/rrws and pass its path")
    sys.path.insert(0, str(gmm_dir))
    try:
        mods = Namespace(**{m: importlib.import_module(m) for m in ("util", "models", "losses", "train")})
    finally:
        sys.path.remove(str(gmm_dir))
    _patch_sample_relax(mods.util)
    return mods


def _patch_sample_relax(util):
    """PATCHES[0]: their util.sample_relax with boolean masks (the algorithm unchanged), by rewriting
    its source at run time."""
    import inspect
    import textwrap

    src = textwrap.dedent(inspect.getsource(util.sample_relax))
    patched = src.replace("1 - latent.byte()", "~latent.bool()").replace("latent.byte()", "latent.bool()")
    if patched == src:
        return
    scope = dict(vars(util))
    exec(compile(patched, util.__file__, "exec"), scope)  # noqa: S102 - their function, from the user's checkout
    util.sample_relax = scope["sample_relax"]


def run_theirs(mods, mode: str, k: int, start: str, seed: int, iterations: int, eval_every: int) -> dict:
    """One run of their code: their init, training function and callback (their metrics)."""
    util, models, train = mods.util, mods.models, mods.train
    true_logits = np.log((np.arange(20) + 5) / np.sum(np.arange(20) + 5)) / LOGIT_SCALE
    args = Namespace(device=torch.device("cpu"), num_mixtures=20, init_mixture_logits=np.array(STARTS[start]), softmax_multiplier=LOGIT_SCALE)
    args.true_mixture_logits, args.relaxed_one_hot, args.temperature = true_logits, mode == "concrete", 3 if mode == "concrete" else None
    util.set_seed(seed)
    gen, inf, true = util.init_models(args)
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)  # PATCHES[1]
    try:
        return _run_theirs(train, models, gen, inf, true, mode, k, iterations, eval_every)
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)


def _run_theirs(train, models, gen, inf, true, mode, k, iterations, eval_every) -> dict:
    n = iterations + 1  # their callback evaluates at iteration i % eval_every == 0, after i + 1 updates
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
        common = dict(logging_interval=n, checkpoint_interval=n, eval_interval=eval_every)
        t0 = time.process_time()
        if mode == "ws":
            cb = train.TrainWakeSleepCallback(folder, true, 100 * k, **common)
            train.train_wake_sleep(gen, inf, true, 100, n, k, cb)
        elif mode == "ww":
            cb = train.TrainWakeWakeCallback(folder, true, k, **common)
            train.train_wake_wake(gen, inf, true, 100, n, k, cb)
        elif mode == "dww":
            cb = train.TrainDefensiveWakeWakeCallback(folder, true, k, 0.2, **common)
            train.train_defensive_wake_wake(0.2, gen, inf, true, 100, n, k, cb)
        elif mode in ("vimco", "reinforce"):
            cb = train.TrainIwaeCallback(folder, true, k, mode, **common)
            train.train_iwae(mode, gen, inf, true, 100, n, k, cb)
        elif mode == "concrete":
            cb = train.TrainConcreteCallback(folder, true, k, n, **common)
            train.train_iwae(mode, gen, inf, true, 100, n, k, cb)
        elif mode == "relax":
            cb = train.TrainRelaxCallback(folder, true, k, **common)
            adam, torch.optim.Adam = torch.optim.Adam, DataAdam  # PATCHES[2], for their train_relax alone
            try:
                train.train_relax(gen, inf, models.ControlVariate(20), true, 100, n, k, cb)
            finally:
                torch.optim.Adam = adam
        else:
            raise ValueError(f"unknown mode {mode!r}")
        seconds = time.process_time() - t0
    steps = [i + 1 for i in range(0, n, eval_every)]
    return {
        "steps": steps,
        "pi_l2": list(cb.p_error_history),
        "q_l2": list(cb.q_error_history),
        "grad_std": [float(v) for v in cb.grad_std_history],
        "cpu_seconds": seconds,
    }


def run_ours(name: str, k: int, start: str, seed: int, iterations: int, eval_every: int) -> dict:
    """One run of ours: :class:`RrwsMixture` trained by :func:`wakesleep.train` on fresh batches."""
    torch.manual_seed(seed)
    model = RrwsMixture(start)
    est = ours_estimator(name, k)
    valid = gmm.make_data(100, seed=10_000 + seed)  # 100 fixed points from the true model, as their test_obs

    def sample(n, generator):  # a fresh batch from the true model at every step
        c = torch.multinomial(gmm.true_probs(), n, replacement=True, generator=generator)
        return (10.0 * c + gmm.SIGMA * torch.randn(n, generator=generator))[:, None]

    t0 = time.process_time()
    fit = ws.train(
        model,
        est,
        sample,
        valid,
        epochs=iterations // eval_every,
        steps_per_epoch=eval_every,
        batch_size=100,
        lr_p=1e-3,
        lr_q=1e-3,
        valid_k=10,
        patience=None,
        q_grad_std_repeats=10,
        progress=False,
        seed=seed,
    )
    seconds = time.process_time() - t0
    h = [r for r in fit.history if "valid_q_l2" in r]
    return {
        "steps": [r["step"] for r in h],
        "pi_l2": [r["valid_pi_l2"] for r in h],
        "q_l2": [r["valid_q_l2"] for r in h],
        "grad_std": [rrws_grad_std(r["valid_q_grad_std"]) for r in h],
        "cpu_seconds": seconds,
    }


def _run_key(r: dict) -> tuple:
    """What tells one run from another in results.json: side, estimator, K, start, seed."""
    return (r["side"], r["estimator"], r["k"], r["start"], r["seed"])


def _write(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, json.dumps(records, indent=1))


def cmd_run(a) -> list[dict]:
    mods = load_theirs(a.rrws) if any(s == "theirs" for s, _, _ in grid()) and "theirs" in a.sides else None
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    records = json.loads(path.read_text()) if path.is_file() else []
    done = {_run_key(r) for r in records}
    todo = [(s, n, k) for s, n, k in grid(tuple(a.ks_all), tuple(a.ks_full)) if s in a.sides and (not a.only or n in a.only)]
    for start in a.starts:
        for seed in a.seeds:
            for side, name, k in todo:
                if (side, name, k, start, seed) in done:
                    continue
                if side == "theirs":
                    res = run_theirs(mods, THEIRS[name], k, start, seed, a.iterations, a.eval_every)
                else:
                    res = run_ours(name, k, start, seed, a.iterations, a.eval_every)
                rec = {"side": side, "estimator": name, "k": k, "start": start, "seed": seed, "iterations": a.iterations, **res}
                if side == "theirs":
                    rec["patches"] = [p for p, _ in PATCHES]
                records.append(rec)
                _write(path, records)
                print(
                    f"{side} {name} K={k} {start} seed {seed}: pi_l2 {res['pi_l2'][-1]:.4f} q_l2 {res['q_l2'][-1]:.4f} grad_std {res['grad_std'][-1]:.4g} ({res['cpu_seconds']:.1f} s)",
                    flush=True,
                )
    return records


def summarise(records: list[dict], at: int | None = None) -> list[dict]:
    """One row per (start, side, estimator, K): the median, min and max over seeds of each metric at
    the last evaluation (or the one nearest step ``at``: theirs evaluate after 1, 101, 201, … updates)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["start"], r["side"], r["estimator"], r["k"]), []).append(r)
    rows = []
    for (start, side, name, k), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][3], kv[0][1])):
        row = {"start": start, "side": side, "estimator": name, "k": k, "seeds": len(rs)}
        for key in ("pi_l2", "q_l2", "grad_std"):
            vals = []
            for r in rs:
                i = len(r["steps"]) - 1 if at is None else min(range(len(r["steps"])), key=lambda j: abs(r["steps"][j] - at))
                vals.append(r[key][i])
                row["step"] = r["steps"][i]
            row[key] = (statistics.median(vals), min(vals), max(vals))
        rows.append(row)
    return rows


def _cell(v) -> str:
    return f"{v[0]:.3g} [{v[1]:.3g}, {v[2]:.3g}]"


#: The side-by-side table's rows: (label, their name or None, our name or None).
FAMILIES = (
    ("WS", "ws", "ws"),
    ("RWS", "rws", "rws"),
    ("defensive RWS (theirs dww, ours drws)", "dww", "drws"),
    ("VIMCO", "vimco", "vimco"),
    ("REINFORCE of the bound", "reinforce-bound", "reinforce-bound"),
    ("REINFORCE of the ELBO", None, "reinforce-elbo"),
    ("Concrete", "concrete", "concrete"),
    ("RELAX", "relax", "relax"),
)


def side_by_side(records: list[dict], start: str, at: int | None = None) -> str:
    """One Markdown table for one start: a row per estimator and K, theirs beside ours for each
    metric (median [min, max] over seeds, at the last evaluation or the one nearest ``at``)."""
    rows = {(r["side"], r["estimator"], r["k"]): r for r in summarise([r for r in records if r["start"] == start], at)}
    ks = sorted({k for _, _, k in rows})
    out = ["| estimator | K | π error, theirs | π error, ours | q error, theirs | q error, ours | grad std, theirs | grad std, ours |"]
    out.append("|---|---|---|---|---|---|---|---|")
    for label, theirs, ours in FAMILIES:
        for k in ks:
            t, o = rows.get(("theirs", theirs, k)), rows.get(("ours", ours, k))
            if t is None and o is None:
                continue
            cells = [_cell(r[key]) if r else "—" for key in ("pi_l2", "q_l2", "grad_std") for r in (t, o)]
            out.append(f"| {label} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def merge(out: Path, others) -> list[dict]:
    """``out``/results.json with the records of ``others``' results.json added (a run already there,
    by side, estimator, K, start and seed, is kept once), written back.

    Raises:
        SystemExit: a folder of ``others`` without a results.json.
    """
    path = out / "results.json"
    records = json.loads(path.read_text()) if path.is_file() else []
    done = {_run_key(r) for r in records}
    for other in others:
        theirs = Path(other) / "results.json"
        if not theirs.is_file():
            raise SystemExit(f"--merge {other}: no results.json there (give the --out folder of a `run`)")
        for r in json.loads(theirs.read_text()):
            key = _run_key(r)
            if key not in done:
                records.append(r)
                done.add(key)
    out.mkdir(parents=True, exist_ok=True)
    _write(path, records)
    return records


def cmd_report(a) -> None:
    if a.merge:
        merge(Path(a.out), a.merge)
    records = json.loads((Path(a.out) / "results.json").read_text())
    if a.side_by_side:
        seeds = sorted({r["seed"] for r in records})
        for at in [None, *a.at]:
            for start in sorted({r["start"] for r in records}):
                print(f"\n{start} start, {'final' if at is None else f'at step {at}'} ({len(seeds)} seeds: {seeds}):\n")
                print(side_by_side(records, start, at))
        print(f"\nfigure: {plot(records, Path(a.figure))}")
        return
    for at in [None, *a.at]:
        print(f"\n### {'final' if at is None else f'at step {at}'}\n")
        print("| start | estimator | K | side | seeds | step | π L2 error | q L2 to true posterior | q grad std (Σ/104) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in summarise(records, at):
            print(
                f"| {r['start']} | {r['estimator']} | {r['k']} | {r['side']} | {r['seeds']} | {r['step']} | {_cell(r['pi_l2'])} | {_cell(r['q_l2'])} | {_cell(r['grad_std'])} |"
            )
    print(f"\nfigure: {plot(records, Path(a.figure))}")


def plot(records: list[dict], path: Path) -> Path:
    """π error and q error against iterations, one panel per start and metric, medians over seeds;
    theirs solid, ours dashed; K = 2 and the largest K run."""
    from matplotlib.figure import Figure

    from wakesleep.io import atomic_save_figure

    starts = sorted({r["start"] for r in records})
    names = list(dict.fromkeys(r["estimator"] for r in records))
    families = list(dict.fromkeys("drws" if n == "dww" else n for n in names))  # theirs dww beside our drws
    colours = {n: f"C{families.index('drws' if n == 'dww' else n) % 10}" for n in names}
    ks = sorted({r["k"] for r in records})
    shown = sorted({ks[0], ks[-1]})
    fig = Figure(figsize=(14, 4.2 * len(starts)), layout="constrained")
    for i, start in enumerate(starts):
        for j, (key, label) in enumerate((("pi_l2", "‖π − π_true‖₂"), ("q_l2", "mean ‖q − p_true(·|x)‖₂"))):
            for jj, k in enumerate(shown):
                ax = fig.add_subplot(len(starts), 2 * len(shown), i * 2 * len(shown) + j * len(shown) + jj + 1)
                for name in names:
                    for side, style in (("theirs", "-"), ("ours", "--")):
                        rs = [r for r in records if (r["start"], r["estimator"], r["k"], r["side"]) == (start, name, k, side)]
                        if not rs:
                            continue
                        n = min(len(r["steps"]) for r in rs)
                        med = np.median(np.array([r[key][:n] for r in rs]), 0)
                        ax.plot(rs[0]["steps"][:n], med, style, color=colours[name], label=f"{name} ({side})")
                ax.set_yscale("log")
                ax.set_title(f"{start} start, K = {k}: {label}", fontsize=9)
                ax.set_xlabel("iterations")
                ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle("Le et al.'s mixture, their code (solid) and ours (dashed): medians over seeds")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the grid (theirs needs --rrws)")
    r.add_argument("--rrws", required=True, help="path to a checkout of tuananhle7/rrws (its root or its gmm/)")
    r.add_argument("--iterations", type=int, default=1000)
    r.add_argument("--eval-every", type=int, default=100)
    r.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    r.add_argument("--starts", nargs="+", default=["near", "far"], choices=sorted(STARTS))
    r.add_argument("--sides", nargs="+", default=["theirs", "ours"], choices=["theirs", "ours"])
    r.add_argument("--ks-all", type=int, nargs="+", default=[2, 20], help="K for every estimator")
    r.add_argument("--ks-full", type=int, nargs="+", default=[2, 5, 10, 20], help="K for RWS and VIMCO")
    r.add_argument("--only", nargs="+", default=None, help="only these estimators (our names)")
    r.add_argument("--out", default="runs/rrws-gmm")
    s = sub.add_parser("report", help="the table and the figure from results.json")
    s.add_argument("--out", default="runs/rrws-gmm")
    s.add_argument("--at", type=int, nargs="*", default=[], help="also tabulate at these steps")
    s.add_argument("--figure", default="docs/figures/rrws-gmm.png")
    s.add_argument("--side-by-side", action="store_true", help="a table per start, theirs beside ours in each row")
    s.add_argument(
        "--merge", nargs="*", default=[], metavar="DIR", help="first merge these runs' results.json into --out's (e.g. one process per start)"
    )
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    return cmd_run(a) if a.cmd == "run" else cmd_report(a)


if __name__ == "__main__":
    main()
