"""Rank 0's part of starting ``wakesleep train``: every check before anything is written (the run
directory, the data, the model against the estimator and the memory), then the run directory's
lock, and ``config.json``; for ``--resume``, the recorded run read back (its model only when named
again), its options and data held to the record, and the adjustable settings' changes recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from datetime import datetime
from pathlib import Path

import torch

from wakesleep.cli.options import UsageError
from wakesleep.cli.run_spec import ADJUSTABLE, RUN_OPTIONS, estimator_settings, flag, model_table, recorded_options, run_options
from wakesleep.config import build_estimator, build_model, check_same_data, run_dataset, run_record
from wakesleep.data import fingerprint, load_dataset
from wakesleep.io import atomic_write_text
from wakesleep.models.contract import device_dtype
from wakesleep.models.loading import ModelSpecError, check_named, is_user_spec, model_config, model_from_config, resolve_spec
from wakesleep.runs import (
    BEST,
    CHECKPOINT,
    CONFIG,
    CURVES,
    METRICS,
    SAMPLES,
    SUMMARY,
    CheckpointError,
    clean_temporary_files,
    load_checkpoint,
    run_lock,
)
from wakesleep.training import TrainConfig
from wakesleep.training.checkpoint import ends_at
from wakesleep.training.checks import check_memory, check_model_for_training
from wakesleep.training.stream import stream_dataset


def check_run_dir(run: Path) -> None:
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


def read_config(run: Path, named: str | None) -> dict:
    """The recorded config of the run to resume, with its model checked to rebuild: a user's model
    only when this command line names it (``named``, the ``--model`` given; see
    :func:`wakesleep.models.loading.check_named`).

    Raises:
        CheckpointError: no or a damaged ``config.json``.
        wakesleep.models.loading.ModelSpecError: a user's model not named, or that does not load.
    """
    if not (run / CONFIG).is_file():
        raise CheckpointError(f"cannot resume: {run} has no {CONFIG}; start the run without --resume")
    try:
        config = json.loads((run / CONFIG).read_text())
        check_named(config["model"], named, run / CONFIG)
        model_from_config(config["model"])
    except ModelSpecError:
        raise
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot resume: {run / CONFIG} is damaged ({e}); start a new run") from None
    return config


def resume_changes(a: argparse.Namespace, config: dict, run: Path) -> dict:
    """Check the options given with --resume against the run's record.  Options that define the
    run must equal what it recorded; the adjustable ones may differ.

    Returns:
        {config.json "train" key (or "test_k"): [recorded, new]} for each adjustable option changed.

    Raises:
        UsageError: an option that would change the run (all named, with the recorded values;
            ``--steps-per-epoch`` among them), or --epochs below the epochs already done.
    """
    given = getattr(a, "given", set())
    if a.overwrite:
        raise UsageError("--resume continues the run in --run-dir and --overwrite deletes it: give one of them")
    recorded = recorded_options(config)
    # What the given options mean for this run (effective values, as recorded): the options not
    # given are the run's, so that e.g. --likelihood is read for the run's model, not the default one.
    merged = argparse.Namespace(**vars(a))
    for name in RUN_OPTIONS:
        if name not in given and recorded.get(name) is not None:
            setattr(merged, name, recorded[name])
    mine = run_options(merged, binary=recorded.get("likelihood") != "gaussian")
    differ = []
    for name in RUN_OPTIONS:
        if name in given and (name not in recorded or mine.get(name) != recorded[name]):
            differ.append(f"{flag(name, mine.get(name))} (the run has {flag(name, recorded[name]) if recorded.get(name) is not None else 'none'})")
    if differ:
        raise UsageError(
            f"--resume continues {run} with the settings it was started with, and these differ: {'; '.join(differ)}. "
            "Drop them to resume, or start a new run with them (another --run-dir, or --overwrite)"
        )
    train_cfg = config["train"]
    if "steps_per_epoch" in given and a.steps_per_epoch != train_cfg.get("steps_per_epoch"):
        # an epoch's length fixes where the stream's blocks and the checkpoints fall: not adjustable
        raise UsageError(
            f"--resume continues {run} with the settings it was started with, and {flag('steps_per_epoch', a.steps_per_epoch)} differs "
            f"(the run has {flag('steps_per_epoch', train_cfg['steps_per_epoch']) if train_cfg.get('steps_per_epoch') else 'none'}). "
            "Drop it to resume, or start a new run with it (another --run-dir, or --overwrite)"
        )
    changes = {}
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


def check_data_named(a: argparse.Namespace, config: dict, run: Path) -> None:
    """A run that streams its data from a user's factory (``--data-from``) resumes only when this
    command line names the same factory: opening a run never runs code that only the run names;
    a run on a fixed data set does not resume from a stream.

    Raises:
        UsageError: the factory not named, or named otherwise than recorded, or named for a run
            on a fixed data set.
    """
    recorded = config.get("data", {}).get("data_from")
    given = getattr(a, "data_from", None) if "data_from" in getattr(a, "given", ()) else None
    if recorded is None:
        if given is not None:  # once silently ignored: the run went on with its fixed data set
            raise UsageError(
                f"{run / CONFIG} trained on the fixed data set {config.get('data', {}).get('dataset')!r}, not a stream: "
                f"drop --data-from {given} to resume it, or start a new run that streams"
            )
        return
    if given is None:
        raise UsageError(
            f"{run / CONFIG} streams its data from your {recorded}, and opening a run runs no code it names: "
            f"pass --data-from {recorded} to run that code (if you trust it)"
        )
    if resolve_spec(given) != recorded:
        raise UsageError(f"--data-from {given} is not the source {run / CONFIG} was trained on ({recorded}): pass --data-from {recorded}")


def build_checked(a: argparse.Namespace, data, device: torch.device):
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


def prepare_run(a: argparse.Namespace, run: Path, device: torch.device, held: contextlib.ExitStack):
    """Rank 0's part of starting a run: validate everything, then take the run directory's lock
    (kept in ``held``), remove temporaries of killed runs and write ``config.json``.  Nothing is
    written before the configuration, the data and the model have passed every check.

    Returns:
        (config, resume, data, model, settings): ``model`` and ``settings`` (its estimator's) are a
        new run's, from the options; None on resume.
    """
    check_run_dir(run)
    if a.resume:
        return _prepare_resume(a, run, held)
    return _prepare_new(a, run, device, held)


def _prepare_resume(a: argparse.Namespace, run: Path, held: contextlib.ExitStack):
    """:func:`prepare_run` for ``--resume``: the record read back (a user's model only when named
    again), the options and the data held to it, then, under the lock, the adjustable settings'
    changes recorded.  Returns ``(config, resume, data, None, None)``; ``resume`` is False for a
    run stopped before its first checkpoint (it starts from the beginning)."""
    named = a.model if "model" in getattr(a, "given", ()) and is_user_spec(a.model) else None
    config = read_config(run, named)
    check_data_named(a, config, run)
    changes = resume_changes(a, config, run)
    data = run_dataset(config, a.data_from)
    check_same_data(config, data, run)
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
            + ", ".join(f"{flag(option[k], True if k in ('nan_policy', 'compile') else new)} (was {old})" for k, (old, new) in changes.items())
        )
    if not (run / CHECKPOINT).is_file():
        # Stopped before its first checkpoint: nothing was trained yet, so start from the beginning.
        print(f"{run} has no checkpoint yet; starting it from the beginning")
        return config, False, data, None, None
    ckpt = load_checkpoint(run / CHECKPOINT)
    if ends_at(ckpt, TrainConfig(**config["train"])):
        option = {"early": "patience", "time": "max_seconds"}.get(ckpt.get("stopped"), "epochs")
        print(
            f"{run} has finished ({ckpt['epoch']} epochs, stopped by {flag(option, config['train'][option])}): nothing more to "
            f"train; give a larger {flag(option)} to go on. Evaluating it again"
        )
    return config, True, data, None, None


def _prepare_new(a: argparse.Namespace, run: Path, device: torch.device, held: contextlib.ExitStack):
    """:func:`prepare_run` for a new run: the data loaded, the model built and checked, then, under
    the lock, an old run's files removed (``--overwrite``) and ``config.json`` written.  Returns
    ``(config, False, data, model, settings)``."""
    if a.steps_per_epoch is not None and not a.data_from:
        raise UsageError("--steps-per-epoch is for data that streams (--data-from); with --dataset an epoch is one pass over it")
    if a.data_from and {"dataset", "data_dir"} & set(getattr(a, "given", ())):
        raise UsageError(f"--data-from {a.data_from} is where this run's data come from: drop --dataset/--data-dir (or --data-from)")
    data = stream_dataset(a.data_from, a.seed) if a.data_from else load_dataset(a.dataset, data_dir=a.data_dir)
    model, settings = build_checked(a, data, device)
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
            fingerprint(data),
            resolve_spec(a.data_from) if a.data_from else None,
            a.seed if a.data_from else None,
        ),
        "options": run_options(a, data.dim, data.binary),  # what --resume compares its options with
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
