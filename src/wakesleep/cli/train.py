"""``wakesleep train``: a new run (its options read into one run spec, checked, recorded in
``config.json``, trained, evaluated and drawn), or ``--resume`` of a recorded one.

A fresh run builds its model and estimator from the options directly (through
:mod:`wakesleep.config`, like compare and diagnose); ``config.json`` is the record that
``--resume``, ``evaluate`` and ``sample`` read back.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from datetime import datetime
from pathlib import Path

import torch

from wakesleep import plots
from wakesleep.cli.options import DEVICE_OPTION, UsageError, _positive_float, _positive_int, _seed, _unit_interval, resolve_device
from wakesleep.cli.results import draw_samples
from wakesleep.config import (
    build_estimator,
    build_model,
    dataset_record,
    estimator_parameters,
    read_summary,
    run_dataset,
    run_record,
)
from wakesleep.data import DataError, load_dataset, validate
from wakesleep.estimators import ESTIMATORS
from wakesleep.evaluate import report_log_likelihood
from wakesleep.faults import fault_point
from wakesleep.io import atomic_write_text
from wakesleep.models.contract import device_dtype, has_proposal
from wakesleep.models.helmholtz import DEFAULT_NADE_HIDDEN, LAYER_KINDS
from wakesleep.models.loading import ModelSpecError, is_user_spec, model_config, model_from_config, resolve_spec
from wakesleep.runs import BEST, CHECKPOINT, CONFIG, METRICS, CheckpointError, RunDirectoryBusy, clean_temporary_files, load_checkpoint, run_lock
from wakesleep.training import MAX_SEED, TrainConfig, distributed, train
from wakesleep.training.checkpoint import ends_at
from wakesleep.training.checks import check_memory, check_model_for_training
from wakesleep.training.stream import HELD_OUT, stream_dataset

SUMMARY, SAMPLES, CURVES = "summary.json", "samples.png", "curves.png"

# `train` options that define a run (model, estimator, data, data order, what validation means):
# --resume refuses them where they differ from what the run recorded.
RUN_OPTIONS = (
    "data_from",
    "model",
    "layers",
    "hidden",
    "q_hidden",
    "likelihood",
    "layer",
    "q_layer",
    "nade_hidden",
    "algorithm",
    "k",
    "q_update",
    "defensive",
    "memory_size",
    "samples",
    "sleep_samples",
    "kernel",
    "krr",
    "num_features",
    "num_inducing",
    "lam",
    "features",
    "dataset",
    "data_dir",
    "batch_size",
    "seed",
    "valid_k",
    "clock",
)
# `train` options a resumed run may change (recorded in config.json's "changes"): option -> its key
# in config.json's "train" ("test_k" is top level).  The others (--device, --no-progress, …) are
# this invocation's alone.
ADJUSTABLE = {
    "epochs": "epochs",
    "max_seconds": "max_seconds",
    "patience": "patience",
    "lr_p": "lr_p",
    "lr_q": "lr_q",
    "lr_kernel": "lr_estimator",
    "checkpoint_every": "checkpoint_every",
    "skip_nonfinite": "nan_policy",
    "compile": "compile",
    "test_k": "test_k",
}
# `train` options that are estimator settings: each goes to every estimator whose constructor takes
# a parameter of that name (:func:`wakesleep.config.estimator_parameters`), so that a new estimator
# takes them without code here.  The data width goes as ``data_dim`` likewise.
ESTIMATOR_OPTIONS = ("sleep_samples", "kernel", "krr", "num_features", "num_inducing", "lam", "features")  # ALWS's
ESTIMATOR_OPTIONS += ("k", "q_update", "samples", "defensive", "memory_size")  # the particle estimators'


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

    t = sub.add_parser(
        "train",
        help="train a model and evaluate it",
        description="Train a model with a wake-sleep-family estimator, then evaluate its test log-likelihood and draw pictures.",
    )
    t_add = adder(t)
    t_add("--algorithm", choices=sorted(ESTIMATORS), default="rws", help="estimator (default: rws)")
    t_add(
        "--k",
        type=_positive_int,
        default=5,
        help="particles per datapoint for rws/iwae/vae/vimco/reinforce/nvil/tvo, proposals per step for mws (default: 5; vimco needs >= 2)",
    )
    t_add(
        "--q-update",
        choices=["wake", "sleep", "both"],
        default="both",
        help="rws, mws: how q is trained (mws: wake = from the memory; default: both)",
    )
    t_add(
        "--memory-size", type=_positive_int, default=10, help="mws: latent values M kept per training datapoint, the best found so far (default: 10)"
    )
    t_add(
        "--defensive",
        type=_unit_interval,
        default=0.0,
        help="rws: defensive importance sampling, particles from (1 - d) q + d uniform (Le et al. 2019 use 0.2; default: 0, off)",
    )
    t_add("--samples", type=_positive_int, default=1, help="ws: wake-phase samples L per datapoint (default: 1)")
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
        "--lr-kernel", type=_positive_float, default=1e-3, help="Adam learning rate for the kernel's bandwidth, lambda and features (default: 1e-3)"
    )
    t_add(
        "--model",
        default="sbn",
        metavar="sbn|gaussian|FILE.py:FACTORY|package.module:FACTORY",
        help="sbn: binary latents; gaussian: Gaussian latents with MLPs; or your own model: a factory "
        "(called with data_dim=D if it takes it) returning a module that meets the model contract, "
        "see docs/your-own-model.md; --layers, --hidden, --q-hidden and --likelihood are then unused (default: sbn)",
    )
    t_add("--layers", type=_positive_int, nargs="+", default=[200], help="latent layer sizes, bottom to top (default: 200)")
    t_add(
        "--hidden", type=_positive_int, nargs="*", default=None, help="hidden sizes inside each layer (gaussian default: 200 200; sbn default: none)"
    )
    t_add("--q-hidden", type=_positive_int, nargs="*", default=None, help="sbn: hidden sizes inside recognition layers (default: none)")
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
    t_add("--nade-hidden", type=_positive_int, default=None, help=f"hidden units of each nade layer (default: {DEFAULT_NADE_HIDDEN})")
    t_add(
        "--likelihood",
        choices=["bernoulli", "gaussian"],
        default=None,
        help="p(x | z): bernoulli for binary data (default), gaussian for grey levels",
    )
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
    return t


# ------------------------------------------------------------------ helpers


def _nonbinary(data) -> str:
    """Where ``data`` (a :class:`~wakesleep.data.Dataset`) first has a value outside {0, 1}: split, row, column."""
    for split in ("train", "valid", "test"):
        try:
            validate(getattr(data, split), binary=True, dim=None, source=data.name, split=split)
        except DataError as e:
            return str(e).split("; a Bernoulli")[0]
    return data.name


def model_table(a: argparse.Namespace, binary: bool, data=None) -> dict:
    """The model table (:mod:`wakesleep.config`) the arguments name: a Helmholtz machine's kind,
    layers and settings, or the user's factory (``--model FILE.py:FACTORY``).  ``data`` (the
    Dataset, optional) names where non-binary data is in the error.

    Raises:
        UsageError: an unknown model, or a likelihood that does not fit the data.
    """
    if is_user_spec(a.model):
        return {"spec": a.model}
    if a.model not in ("sbn", "gaussian"):
        raise UsageError(f"--model must be sbn, gaussian, FILE.py:FACTORY or package.module:FACTORY, got {a.model!r}")
    likelihood = a.likelihood or ("bernoulli" if binary else "gaussian")
    if a.model == "sbn":
        likelihood = a.likelihood or "bernoulli"
    if likelihood == "bernoulli" and not binary:
        where = f" ({_nonbinary(data)})" if data is not None else ""
        raise UsageError(
            f"this data is not binary{where}, but the model's likelihood is Bernoulli (values in {{0, 1}}): "
            "binarise the data (e.g. x > 0.5), or use --model gaussian --likelihood gaussian"
        )
    if a.model == "sbn":
        if likelihood != "bernoulli":
            raise UsageError("--model sbn has a Bernoulli likelihood; use --model gaussian --likelihood gaussian for real-valued data")
        return {"kind": "sbn", "layers": list(a.layers), "q_hidden": list(a.q_hidden or ()), "p_hidden": list(a.hidden or ()), **_layer_settings(a)}
    if any(getattr(a, name, None) is not None for name in ("layer", "q_layer", "nade_hidden")):
        raise UsageError("--layer, --q-layer and --nade-hidden choose the layers of --model sbn; a gaussian model's layers are Gaussian")
    hidden = (200, 200) if a.hidden is None else a.hidden
    return {"kind": "gaussian", "layers": list(a.layers), "hidden": list(hidden), "likelihood": likelihood}


def _layer_settings(a: argparse.Namespace) -> dict:
    """The sbn model table's layer kinds from --layer/--q-layer/--nade-hidden: ``p_layers``,
    ``q_layers`` (each one kind, or one per latent layer) and ``nade_hidden``; nothing where every
    layer is factorial, so that such a model's table (and record) is the plain SBN's.

    Raises:
        UsageError: a list of kinds whose length is neither 1 nor the number of latent layers.
    """
    p_kinds = list(getattr(a, "layer", None) or ["sbn"])
    q_kinds = list(getattr(a, "q_layer", None) or p_kinds)
    for flag, kinds in (("--layer", p_kinds), ("--q-layer", q_kinds)):
        if len(kinds) not in (1, len(a.layers)):
            raise UsageError(f"{flag} names {len(kinds)} kinds for {len(a.layers)} latent layers (--layers): give one kind, or one per layer")
    if set(p_kinds + q_kinds) == {"sbn"}:
        return {}
    out = {"p_layers": p_kinds if len(p_kinds) > 1 else p_kinds[0], "q_layers": q_kinds if len(q_kinds) > 1 else q_kinds[0]}
    if getattr(a, "nade_hidden", None) is not None:
        out["nade_hidden"] = a.nade_hidden
    return out


def model_from_args(a: argparse.Namespace, data_dim: int, binary: bool, data=None):
    """The model the arguments name (:func:`model_table`), built by :func:`wakesleep.config.build_model`.

    Raises:
        UsageError: an unknown model, or a likelihood that does not fit the data.
        wakesleep.models.loading.ModelSpecError: a user's factory that does not load.
    """
    return build_model(model_table(a, binary, data), data_dim)


def estimator_settings(a: argparse.Namespace, data_dim: int | None = None, model=None) -> dict:
    """The estimator's settings from the arguments: each of :data:`ESTIMATOR_OPTIONS` its constructor
    takes, and ``data_dim`` where it takes that; ``--defensive`` only when on.  ALWS trains the
    proposal by sleep-phase updates (for evaluation) when the model has one, and leaves q alone when
    it has none.

    Raises:
        UsageError: --algorithm vimco with --k 1.
    """
    if a.algorithm == "vimco" and a.k < 2:
        raise UsageError("--algorithm vimco needs --k 2 or more (its control variate leaves one particle out)")
    takes = estimator_parameters(a.algorithm)
    # ALWS's q_update is not --q-update's (rws: wake/sleep/both): it follows from the model
    own = {"q_update": "sleep" if model is None or has_proposal(model) else None} if a.algorithm == "alws" else {}
    settings = {name: getattr(a, name) for name in ESTIMATOR_OPTIONS if name in takes and name not in own}
    if not getattr(a, "defensive", 0.0):
        settings.pop("defensive", None)  # off: recorded as runs made before --defensive existed were
    if "data_dim" in takes:
        settings["data_dim"] = data_dim  # e.g. NVIL's input-dependent baseline reads x
    return {**settings, **own}


def write_pictures(run: Path, model, image_shape, n: int = 64, data=None) -> tuple[Path, Path | None]:
    samples = draw_samples(model, n if hasattr(model, "sample_mean") or image_shape is not None else 2000, image_shape, data, run / SAMPLES)
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


def _check_run_dir(run: Path) -> None:
    """Refuse, before any work, a --run-dir that cannot hold a run: a file, a path under a file,
    a name too long for the file system, or a place this user cannot write."""
    try:
        name_max, path_max = os.pathconf(Path.cwd().anchor, "PC_NAME_MAX"), os.pathconf(Path.cwd().anchor, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    long = [part for part in run.parts if len(os.fsencode(part)) > name_max]
    if long or len(os.fsencode(str(run.absolute()))) >= path_max:
        what = (
            f"its name {long[0][:20]}… has {len(os.fsencode(long[0]))} bytes, over the {name_max} this file system allows"
            if long
            else f"its path has over the {path_max} bytes this file system allows"
        )
        raise UsageError(f"--run-dir is too long ({what}): choose a shorter --run-dir")
    if run.exists() and not run.is_dir():
        raise UsageError(f"--run-dir {run} is a file, not a directory: choose another --run-dir")
    existing = run
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--run-dir {run} lies under {existing}, which is a file: choose another --run-dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--run-dir {run}: {existing} is not writable by this user: choose a --run-dir you can write, or make it writable")


def _read_config(run: Path) -> dict:
    """The recorded config of the run to resume, with its model checked to rebuild."""
    if not (run / CONFIG).is_file():
        raise CheckpointError(f"cannot resume: {run} has no {CONFIG}; start the run without --resume")
    try:
        config = json.loads((run / CONFIG).read_text())
        model_from_config(config["model"])
    except ModelSpecError:
        raise
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot resume: {run / CONFIG} is damaged ({e}); start a new run") from None
    return config


def _run_options(a: argparse.Namespace, data_dim: int | None = None, binary: bool = True) -> dict:
    """The values of ``RUN_OPTIONS`` in force for arguments ``a``, in the form
    config.json records them (lists, absolute paths, the model's effective hidden sizes and likelihood)."""
    o = {name: getattr(a, name, None) for name in RUN_OPTIONS}
    o["layers"] = list(a.layers)
    o["dataset"] = dataset_record(a.dataset)
    o["data_from"] = resolve_spec(a.data_from) if getattr(a, "data_from", None) else None
    for name in ("layer", "q_layer", "nade_hidden"):  # recorded where given, so that runs without them keep their record
        if getattr(a, name, None) is None:
            o.pop(name)
        elif name != "nade_hidden":
            o[name] = list(o[name])
    if is_user_spec(a.model):
        o["model"], o["hidden"], o["q_hidden"], o["likelihood"] = resolve_spec(a.model), None, None, None
    elif a.model == "sbn":
        o["hidden"], o["q_hidden"], o["likelihood"] = list(a.hidden or []), list(a.q_hidden or []), "bernoulli"
    else:
        o["hidden"] = [200, 200] if a.hidden is None else list(a.hidden)
        o["q_hidden"] = None
        o["likelihood"] = a.likelihood or ("bernoulli" if binary else "gaussian")
    return o


def _recorded_options(config: dict) -> dict:
    """The ``RUN_OPTIONS`` a run was started with: recorded in config.json ("options"), or, for a
    run written before they were, read back from its model, estimator, data and trainer records."""
    if "options" in config:
        return {"layer": None, "q_layer": None, "nade_hidden": None, "data_from": None, **config["options"]}
    m, t = config["model"], config["train"]
    o = {
        "algorithm": config["algorithm"],
        "dataset": config["data"]["dataset"],
        "data_dir": config["data"].get("data_dir"),
        **{k: t.get(k) for k in ("batch_size", "seed", "valid_k", "clock")},
        **{k: v for k, v in config["estimator"].items() if k in RUN_OPTIONS},
        "layer": None,  # such runs predate the layer kinds: their SBNs are factorial
        "q_layer": None,
        "nade_hidden": None,
        "data_from": None,
    }
    if m.get("kind") == "user":
        o.update(model=m["spec"], hidden=None, q_hidden=None, likelihood=None)
    elif m.get("kind") == "sbn":
        o.update(model="sbn", layers=m["sizes"][1:], hidden=m["p_hidden"], q_hidden=m["q_hidden"], likelihood="bernoulli")
    elif m.get("kind") == "gaussian":
        o.update(model="gaussian", layers=m["sizes"][1:], hidden=m["hidden"], q_hidden=None, likelihood=m["likelihood"])
    return o


def _flag(name: str, value=None) -> str:
    text = "--" + name.replace("_", "-")
    if value is None or value is True:
        return text
    return f"{text} {' '.join(map(str, value)) if isinstance(value, list) else value}"


def _resume_changes(a: argparse.Namespace, config: dict, run: Path) -> dict:
    """Check the options given with --resume against the run's record.  Options that define the
    run must equal what it recorded; the adjustable ones may differ.

    Returns:
        {config.json "train" key (or "test_k"): [recorded, new]} for each adjustable option changed.

    Raises:
        UsageError: an option that would change the run (all named, with the recorded values), or
            --epochs below the epochs already done.
    """
    given = getattr(a, "given", set())
    if a.overwrite:
        raise UsageError("--resume continues the run in --run-dir and --overwrite deletes it: give one of them")
    recorded = _recorded_options(config)
    # What the given options mean for this run (effective values, as recorded): the options not
    # given are the run's, so that e.g. --likelihood is read for the run's model, not the default one.
    merged = argparse.Namespace(**vars(a))
    for name in RUN_OPTIONS:
        if name not in given and recorded.get(name) is not None:
            setattr(merged, name, recorded[name])
    mine = _run_options(merged, binary=recorded.get("likelihood") != "gaussian")
    differ = []
    for name in RUN_OPTIONS:
        if name in given and (name not in recorded or mine.get(name) != recorded[name]):
            differ.append(f"{_flag(name, mine.get(name))} (the run has {_flag(name, recorded[name]) if recorded.get(name) is not None else 'none'})")
    if differ:
        raise UsageError(
            f"--resume continues {run} with the settings it was started with, and these differ: {'; '.join(differ)}. "
            "Drop them to resume, or start a new run with them (another --run-dir, or --overwrite)"
        )
    changes = {}
    train_cfg = config["train"]
    for name, key in ADJUSTABLE.items():
        if name not in given:
            continue
        new = "skip" if name == "skip_nonfinite" else getattr(a, name)  # a flag given is a flag set
        old = config.get("test_k") if key == "test_k" else train_cfg.get(key)
        if new != old:
            changes[key] = [old, new]
    if "epochs" in changes and (run / CHECKPOINT).is_file():
        done = load_checkpoint(run / CHECKPOINT)["epoch"]
        if a.epochs < done:
            raise UsageError(f"--epochs {a.epochs} is fewer than the {done} epochs {run} has trained: give --epochs {done} or more")
    return changes


def _build_checked(a: argparse.Namespace, data, device: torch.device):
    """The model and estimator settings of a new run, refused before anything is allocated when one
    training step would not fit in memory (a built-in model is first built on the ``meta``
    device, which allocates nothing), then checked against the estimator on two datapoints.

    Returns:
        (model, settings): the model, built and seeded with --seed; the estimator's settings.
    """
    fix = "smaller --layers/--hidden, or a smaller --batch-size or --k"
    table = model_table(a, data.binary, data)
    if not is_user_spec(a.model):
        with torch.device("meta"):
            sized = build_model(table, data.dim)
        check_memory(sized, build_estimator(a.algorithm, estimator_settings(a, data.dim, sized)), a.batch_size, device, fix)
    torch.manual_seed(a.seed)
    model = build_model(table, data.dim)
    settings = estimator_settings(a, data.dim, model)
    estimator = build_estimator(a.algorithm, settings)
    if is_user_spec(a.model):  # the user's factory has run: its parameters exist; check one step
        check_memory(model, estimator, a.batch_size, device, "a smaller model, --batch-size or --k")
    train_x = torch.as_tensor(getattr(data, "probe", data.train)).to(dtype=device_dtype(model)[1])
    check_model_for_training(model, estimator, train_x, None)
    return model, settings


def _prepare_run(a: argparse.Namespace, run: Path, device: torch.device, held: contextlib.ExitStack):
    """Rank 0's part of starting a run: validate everything, then take the run directory's lock
    (kept in ``held``), remove temporaries of killed runs and write ``config.json``.  Nothing is
    written before the configuration, the data and the model have passed every check.

    Returns:
        (config, resume, data, model, settings): ``model`` and ``settings`` (its estimator's) are a
        new run's, from the options; None on resume.
    """
    _check_run_dir(run)
    if a.resume:
        config = _read_config(run)
        changes = _resume_changes(a, config, run)
        data = run_dataset(config)
        held.enter_context(run_lock(run))
        clean_temporary_files(run)
        if changes:
            done = load_checkpoint(run / CHECKPOINT)["epoch"] if (run / CHECKPOINT).is_file() else 0
            for key, (old, new) in changes.items():
                if key == "test_k":
                    config["test_k"] = new
                else:
                    config["train"][key] = new
            config.setdefault("changes", []).append({"after_epoch": done, "time": datetime.now().isoformat(timespec="seconds"), "changed": changes})
            atomic_write_text(run / CONFIG, json.dumps(config, indent=2))
            option = {key: name for name, key in ADJUSTABLE.items()}
            print(
                "resuming with "
                + ", ".join(f"{_flag(option[k], True if k in ('nan_policy', 'compile') else new)} (was {old})" for k, (old, new) in changes.items())
            )
        if not (run / CHECKPOINT).is_file():
            # Stopped before its first checkpoint: nothing was trained yet, so start from the beginning.
            print(f"{run} has no checkpoint yet; starting it from the beginning")
            return config, False, data, None, None
        ckpt = load_checkpoint(run / CHECKPOINT)
        if ends_at(ckpt, TrainConfig(**config["train"])):
            option = {"early": "patience", "time": "max_seconds"}.get(ckpt.get("stopped"), "epochs")
            print(
                f"{run} has finished ({ckpt['epoch']} epochs, stopped by {_flag(option, config['train'][option])}): nothing more to "
                f"train; give a larger {_flag(option)} to go on. Evaluating it again"
            )
        return config, True, data, None, None
    data = stream_dataset(a.data_from, a.seed) if a.data_from else load_dataset(a.dataset, data_dir=a.data_dir)
    if a.steps_per_epoch is not None and not a.data_from:
        raise UsageError("--steps-per-epoch is for data that streams (--data-from); with --dataset an epoch is one pass over it")
    model, settings = _build_checked(a, data, device)
    train_settings = {
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "lr_p": a.lr_p,
        "lr_q": a.lr_q,
        "lr_estimator": a.lr_kernel,
        "seed": a.seed,
        "valid_k": a.valid_k,
        "patience": a.patience,
        "max_seconds": a.max_seconds,
        "clock": a.clock,
        "checkpoint_every": a.checkpoint_every,
        "nan_policy": "skip" if a.skip_nonfinite else "error",
        "compile": a.compile,
        **({"steps_per_epoch": a.steps_per_epoch} if a.data_from else {}),
    }
    config = {
        **run_record(
            model_config(model, a.model if is_user_spec(a.model) else None, data.dim),
            a.algorithm,
            settings,
            a.dataset,
            a.data_dir,
            train_settings,
            a.test_k,
            resolve_spec(a.data_from) if a.data_from else None,
        ),
        "options": _run_options(a, data.dim, data.binary),  # what --resume compares its options with
    }

    def refuse_existing() -> None:
        if ((run / CHECKPOINT).exists() or (run / CONFIG).exists()) and not a.overwrite:
            raise UsageError(f"{run} already holds a run; pass --resume to continue it, --overwrite to replace it, or choose another --run-dir")

    refuse_existing()  # before the lock, so that a refused run leaves no lock file behind
    held.enter_context(run_lock(run))
    refuse_existing()  # and under it: the directory may have changed meanwhile
    clean_temporary_files(run)
    for name in (CONFIG, CHECKPOINT, BEST, METRICS, SUMMARY, SAMPLES, CURVES):
        (run / name).unlink(missing_ok=True)
    atomic_write_text(run / CONFIG, json.dumps(config, indent=2))  # the record; this run is built from the options
    return config, False, data, model, settings


def _train(a: argparse.Namespace, device: torch.device) -> int:
    source = a.data_from.rpartition(":")[2] if getattr(a, "data_from", None) else Path(str(a.dataset)).stem
    run = Path(a.run_dir or f"runs/{source}-{a.algorithm}")
    main = distributed.is_main()
    with contextlib.ExitStack() as held:  # rank 0 holds the run directory's lock until the end
        data = model = settings = None
        try:
            if main:
                config, resume, data, model, settings = _prepare_run(a, run, device, held)
                prepared = (config, resume)
            else:
                prepared = None
        except (CheckpointError, UsageError, ValueError, RunDirectoryBusy, OSError) as e:
            prepared = e
        config, resume = distributed.broadcast_object(prepared)  # an error on rank 0 stops every rank
        seed = config["train"]["seed"]
        if data is None:  # a resumed run, or another rank: the data the run was started with
            data = run_dataset(config)
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
