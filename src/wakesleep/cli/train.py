"""``wakesleep train``: a new run (its options read into one run spec, checked, recorded in
``config.json``, trained, evaluated and drawn), or ``--resume`` of a recorded one.

A fresh run builds its model and estimator from the options directly (through
:mod:`wakesleep.config`, like compare and diagnose); ``config.json`` is the record that
``--resume``, ``evaluate`` and ``sample`` read back.  What the options mean is
:mod:`wakesleep.cli.run_spec`; the checks and the record before the first step,
:mod:`wakesleep.cli.prepare`; this module is the parser, and the run from its first step to its
summary and pictures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import torch

from wakesleep import plots
from wakesleep.cli.options import (
    DEVICE_OPTION,
    UsageError,
    _nonnegative_int,
    _positive_float,
    _positive_int,
    _seed,
    _unit_interval,
    _width,
    add_command,
    resolve_device,
)
from wakesleep.cli.prepare import prepare_run
from wakesleep.cli.results import draw_samples
from wakesleep.cli.run_spec import ADJUSTABLE
from wakesleep.config import build_estimator, read_summary, run_dataset
from wakesleep.estimators import ESTIMATORS
from wakesleep.estimators.hmws import MEMORY_WEIGHTINGS
from wakesleep.evaluate import report_log_likelihood
from wakesleep.faults import fault_point
from wakesleep.io import atomic_write_text
from wakesleep.models.helmholtz import DEFAULT_NADE_HIDDEN, LAYER_KINDS, PRIOR_KINDS
from wakesleep.models.loading import model_from_config
from wakesleep.runs import CURVES, METRICS, SAMPLES, SUMMARY, CheckpointError, RunDirectoryBusy
from wakesleep.training import MAX_SEED, TrainConfig, distributed, train
from wakesleep.training.stream import HELD_OUT


def add_parser(sub, only_given: bool = False) -> argparse.ArgumentParser:
    """Add the ``train`` parser to ``sub`` (an argparse subparsers object) and return it.  With
    ``only_given``, its options have no defaults, so that parsing sets only the options named on
    the command line."""

    def adder(group):
        def add(*names, **kw):
            if only_given:
                kw["default"] = argparse.SUPPRESS
            return group.add_argument(*names, **kw)

        return add

    t = add_command(
        sub,
        "train",
        "train a model and evaluate it",
        "Train a model with a wake-sleep-family estimator, then evaluate its test log-likelihood and draw pictures.",
    )
    _add_estimator_options(t, adder)
    _add_model_options(adder(t))
    _add_run_options(adder(t))
    return t


def _add_estimator_options(t: argparse.ArgumentParser, adder) -> None:
    """``train``'s estimator options (``--algorithm`` and the settings it passes on), ALWS's in a
    group of their own; ``adder(group)`` gives the function that adds one option to a group."""
    t_add = adder(t)
    t_add("--algorithm", choices=sorted(ESTIMATORS), default="rws", help="estimator (default: rws)")
    t_add(
        "--k",
        type=_positive_int,
        default=5,
        help="particles per datapoint for rws/iwae/vae/vimco/reinforce/nvil/tvo/concrete/relax, proposals per step for mws, discrete proposals per step "
        "for hmws (default: 5; vimco needs >= 2)",
    )
    t_add(
        "--q-update",
        choices=["wake", "sleep", "both"],
        default="both",
        help="rws, mws, hmws: how q is trained (mws, hmws: wake = from the memory; default: both)",
    )
    t_add(
        "--memory-size",
        type=_positive_int,
        default=10,
        help="mws: latent values M kept per training datapoint, the best found so far; hmws: discrete values (default: 10)",
    )
    t_add(
        "--continuous-k",
        type=_positive_int,
        default=5,
        help="hmws: continuous particles K from q(c | d, x) per discrete value, to estimate p(d, x) (default: 5)",
    )
    t_add(
        "--memory-weighting",
        choices=MEMORY_WEIGHTINGS,
        default="posterior",
        help="hmws: q(d | x)'s wake weights over the memory: the memory's posterior, uniform, or the authors' code's "
        "log-sum-exp (about uniform; docs/results.md: uniform and authors trained better on Le et al.'s time series; default: posterior)",
    )
    t_add(
        "--defensive",
        type=_unit_interval,
        default=0.0,
        help="rws: defensive importance sampling, particles from (1 - d) q + d uniform (Le et al. 2019 use 0.2; default: 0, off)",
    )
    t_add("--samples", type=_positive_int, default=1, help="ws: wake-phase samples L per datapoint (default: 1)")
    t_add(
        "--temperature",
        type=_positive_float,
        default=0.5,
        help="concrete: the relaxation's temperature; relax: its learned temperature's start (default: 0.5)",
    )
    t_add(
        "--density",
        choices=["concrete", "discrete"],
        default="concrete",
        help="concrete: score the relaxed sample by the Concrete densities (Maddison et al. 2017) or by the discrete "
        "mass functions at the relaxed point (bias vanishing as the temperature goes to 0) (default: concrete)",
    )
    t_add(
        "--control-hidden",
        type=_nonnegative_int,
        default=50,
        help="relax: hidden units of the control variate's network of the relaxed sample and x (0: REBAR's term alone; default: 50)",
    )
    alws = t.add_argument_group(
        "alws", "amortised learning by wake-sleep (--algorithm alws; q is then trained by sleep-phase updates only, for evaluation)"
    )
    alws_add = adder(alws)
    alws_add("--sleep-samples", type=_positive_int, default=2000, help="sleep samples N per step (default: 2000)")
    alws_add(
        "--kernel", choices=["gaussian", "matern12", "matern32", "matern52"], default="gaussian", help="kernel on features of x (default: gaussian)"
    )
    alws_add("--krr", choices=["exact", "nystrom", "rff"], default="exact", help="kernel ridge regression solver (default: exact)")
    alws_add("--num-features", type=_positive_int, default=1000, help="random Fourier features F for --krr rff (even; default: 1000)")
    alws_add("--num-inducing", type=_positive_int, default=500, help="inducing points m for --krr nystrom (default: 500)")
    alws_add("--lam", type=_positive_float, default=1e-3, help="initial ridge lambda, learned (default: 1e-3)")
    alws_add("--features", choices=["identity", "mlp"], default="identity", help="kernel features: x itself or a learned MLP (default: identity)")
    alws_add(
        "--lr-kernel",
        type=_positive_float,
        default=1e-3,
        help="Adam learning rate for the estimator's own parameters: the kernel's bandwidth, lambda and features; nvil's baseline; relax's control variate (default: 1e-3)",
    )


def _add_model_options(t_add) -> None:
    """``train``'s model options: ``--model`` and a built-in model's layers, through ``t_add``."""
    t_add(
        "--model",
        default="sbn",
        metavar="sbn|gaussian|FILE.py:FACTORY|package.module:FACTORY",
        help="sbn: binary latents; gaussian: Gaussian latents with MLPs; or your own model: a factory "
        "(called with data_dim=D if it takes it) returning a module that meets the model contract, "
        "see docs/your-own-model.md; --layers, --hidden, --q-hidden and --likelihood are then unused (default: sbn)",
    )
    t_add("--layers", type=_width, nargs="+", default=[200], help="latent layer sizes, bottom to top (default: 200)")
    t_add("--hidden", type=_width, nargs="*", default=None, help="hidden sizes inside each layer (gaussian default: 200 200; sbn default: none)")
    t_add("--q-hidden", type=_width, nargs="*", default=None, help="sbn: hidden sizes inside recognition layers (default: none)")
    t_add(
        "--layer",
        choices=LAYER_KINDS,
        nargs="+",
        default=None,
        metavar="sbn|nade|darn",
        help="sbn: the kind of each latent layer's conditionals, bottom first, p(z_l-1 | z_l) and q(z_l | z_l-1) alike (x = z_0): "
        "sbn factorial, nade (Larochelle & Murray 2011) or darn (fDARN, Gregor et al. 2014); one kind for all layers (default: sbn)",
    )
    t_add(
        "--q-layer",
        choices=LAYER_KINDS,
        nargs="+",
        default=None,
        metavar="sbn|nade|darn",
        help="sbn: the recognition layers' kinds, if not --layer's",
    )
    t_add("--nade-hidden", type=_width, default=None, help=f"hidden units of each nade layer and of a nade prior (default: {DEFAULT_NADE_HIDDEN})")
    t_add(
        "--prior",
        choices=PRIOR_KINDS,
        default=None,
        help="sbn: the top latent layer's prior p(z_L): sbn factorial Bernoulli, or nade "
        "(the RWS authors' NADETop, jbornschein/reweighted-ws) (default: sbn)",
    )
    t_add(
        "--likelihood",
        choices=["bernoulli", "gaussian"],
        default=None,
        help="p(x | z): bernoulli for binary data (default), gaussian for grey levels",
    )


def _add_run_options(t_add) -> None:
    """``train``'s data, trainer and run-directory options, through ``t_add``."""
    t_add("--dataset", default="digits", help="digits (embedded), binarized-mnist, mnist-gray, or a .npz path (default: digits)")
    t_add(
        "--data-from",
        default=None,
        metavar="FILE.py:FACTORY",
        help="train on data that streams: FACTORY() returns sample(n, generator) -> x [n, D] (a simulator: fresh data every step) "
        f"or an iterable of batches (a DataLoader); validation and test sets of {HELD_OUT} are drawn from it once. Replaces --dataset",
    )
    t_add(
        "--steps-per-epoch",
        type=_positive_int,
        default=None,
        help="with --data-from: steps between records, validations and checkpoints (an epoch of a stream; default: 100)",
    )
    t_add("--data-dir", default=None, help="directory with data files (default: $WAKESLEEP_DATA_DIR or ~/.cache/wakesleep)")
    t_add("--epochs", type=_positive_int, default=100, help="passes over the training data (default: 100; with --resume, more extend the run)")
    t_add("--batch-size", type=_positive_int, default=100, help="datapoints per step (default: 100)")
    t_add("--lr-p", type=_positive_float, default=1e-3, help="Adam learning rate for the generative model (default: 1e-3)")
    t_add("--lr-q", type=_positive_float, default=1e-3, help="Adam learning rate for the recognition model (default: 1e-3)")
    t_add("--seed", type=_seed, default=0, help=f"seeds initialisation, data order and sampling, 0 to {MAX_SEED} (default: 0)")
    t_add("--valid-k", type=_positive_int, default=100, help="particles for the validation log-likelihood each epoch (default: 100)")
    t_add("--patience", type=_positive_int, default=10, help="epochs without validation improvement before stopping (default: 10)")
    t_add("--max-seconds", type=_positive_float, default=None, help="training budget, seconds of --clock (default: none)")
    t_add(
        "--checkpoint-every",
        type=_positive_int,
        default=None,
        help="also checkpoint every this many steps within an epoch (default: only each epoch)",
    )
    t_add(
        "--clock",
        choices=["wall", "process"],
        default="wall",
        help="what --max-seconds counts: elapsed time, or this process's CPU time (default: wall)",
    )
    t_add("--test-k", type=_positive_int, default=5000, help="particles for the final test log-likelihood (default: 5000)")
    t_add("--run-dir", default=None, help="where to write the run (default: runs/<dataset>-<algorithm>)")
    t_add(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its checkpoint, with its recorded settings; of the others only "
        f"{', '.join('--' + o.replace('_', '-') for o in ADJUSTABLE)} may be given, and change the run (recorded in config.json)",
    )
    t_add("--overwrite", action="store_true", help="replace a previous run in --run-dir (its files are deleted; refused while it runs)")
    t_add("--skip-nonfinite", action="store_true", help="skip (and count) steps with a NaN/inf loss or gradient instead of stopping")
    t_add("--no-progress", action="store_true", help="hide progress bars")
    t_add(
        "--compile",
        action="store_true",
        help="torch.compile the training step and the log-density kernels (needs a C++ compiler; faster for long runs, see docs/benchmarks.md)",
    )
    t_add(
        "--tensorboard",
        action="store_true",
        help="also write the metrics as TensorBoard scalars beside metrics.jsonl (needs the tensorboard package)",
    )
    t_add(*DEVICE_OPTION[0], **DEVICE_OPTION[1])


def write_pictures(run: Path, model, image_shape, n: int = 64, data=None) -> tuple[Path, Path | None]:
    """A trained run's pictures: ``RUN/samples.png`` (``n`` samples as images, or 500 against
    ``data`` for a user's model of data that are not images) and ``RUN/curves.png`` from
    ``metrics.jsonl`` (None where there are no metrics).  Returns their paths."""
    samples = draw_samples(model, n if hasattr(model, "sample_mean") or image_shape is not None else 500, image_shape, data, run / SAMPLES)
    curves = None
    if (run / METRICS).is_file():
        records = plots.read_jsonl(run / METRICS)
        if records:
            keys = [
                k
                for k in ("train_objective", "valid_log_likelihood", "train_ess", "train_wake_log_joint", "train_sleep_log_q")
                if any(k in r for r in records)
            ]
            curves = plots.learning_curves(records, run / CURVES, keys=keys or None)
    return samples, curves


# ------------------------------------------------------------------ commands


def cmd_train(a: argparse.Namespace) -> int:
    if not isinstance(a.dataset, str) or not a.dataset.strip("- "):
        raise UsageError(f"--dataset needs a data set name (digits, binarized-mnist, mnist-gray) or a .npz path, got {a.dataset!r}")
    device = resolve_device(a.device)
    if not distributed.launched_by_torchrun():
        return _train(a, device)
    device = distributed.setup(device)
    main = distributed.is_main()
    try:
        code = _train(a, device)
    finally:
        distributed.teardown()
    if not main:
        # A worker has written nothing and has nothing left to do.  Its interpreter shutdown
        # sometimes aborted in C++ ("terminate called without an active exception", with no
        # Python frame on the stack: about 1 run in 15 on a loaded machine), after which torchrun
        # killed rank 0 mid-evaluation; leaving without the interpreter's teardown avoids that.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _train(a: argparse.Namespace, device: torch.device) -> int:
    source = a.data_from.rpartition(":")[2] if getattr(a, "data_from", None) else Path(str(a.dataset)).stem
    run = Path(a.run_dir or f"runs/{source}-{a.algorithm}")
    main = distributed.is_main()
    with contextlib.ExitStack() as held:  # rank 0 holds the run directory's lock until the end
        data = model = settings = None
        try:
            if main:
                config, resume, data, model, settings = prepare_run(a, run, device, held)
                prepared = (config, resume)
            else:
                prepared = None
        except (CheckpointError, UsageError, ValueError, RunDirectoryBusy, OSError) as e:
            prepared = e
        config, resume = distributed.broadcast_object(prepared)  # an error on rank 0 stops every rank
        seed = config["train"]["seed"]
        if data is None:  # a resumed run, or another rank: the data the run was started with
            data = run_dataset(config, a.data_from)
        if model is None:
            torch.manual_seed(seed)
            model = model_from_config(config["model"])
        model = model.to(device)
        if settings is None:  # a resumed run, or another rank: the estimator the run recorded
            settings = config["estimator"]
        estimator = build_estimator(config["algorithm"], settings).to(device)
        # --tensorboard is this invocation's (like --no-progress): passed only when given
        tcfg = TrainConfig(**config["train"], progress=not a.no_progress, **({"tensorboard": True} if getattr(a, "tensorboard", False) else {}))
        world_size = distributed.world()[1]
        if main:
            where = f"{device}" + (f", {world_size} processes" if world_size > 1 else "")
            print(
                f"training {config['algorithm']} {config['estimator']} on {data.name} "
                f"({'streamed' if hasattr(data, 'probe') else data.train.shape[0]} train, {data.valid.shape[0]} valid, {data.test.shape[0]} test, D={data.dim}) on {where}; run: {run}"
            )
        fit = train(model, estimator, data.train, data.valid, tcfg, run_dir=run, resume=resume)
        # Every rank leaves the process group together now: the rest (evaluation, pictures) is rank
        # 0's alone and needs no collectives, and a rank that left alone could crash at exit.
        distributed.teardown(barrier=True)
        if not main:
            return 0
        model.eval()
        fault_point("evaluate")
        ll = report_log_likelihood(model, data.test, k=config.get("test_k", a.test_k), progress=not a.no_progress, seed=seed)
        summary = {
            "test_log_likelihood": ll.mean,
            "test_stderr": ll.stderr,
            "test_k": ll.k,
            "test_n": ll.n,
            "best_valid_log_likelihood": fit.best_valid,
            "best_epoch": fit.best_epoch,
            "epochs": len(fit.history),
            "stopped": fit.stopped,
            "train_seconds": fit.seconds,
            "skipped_steps": fit.skipped_steps,
        }
        earlier = read_summary(run / SUMMARY).get("evaluations")
        if earlier:  # results of `wakesleep evaluate` on this run are kept
            summary["evaluations"] = earlier
        atomic_write_text(run / SUMMARY, json.dumps(summary, indent=2))
        samples, curves = write_pictures(run, model, data.image_shape, data=getattr(data, "probe", data.train))
        print(f"test log-likelihood: {ll}")
        print(f"samples: {samples}")
        if curves:
            print(f"learning curves: {curves}")
        print(f"summary: {run / SUMMARY}")
        return 0


COMMANDS = {"train": cmd_train}
