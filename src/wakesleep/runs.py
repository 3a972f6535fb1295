"""The run directory: its files, one writer at a time, and reading it back as data.

A run directory is what ``wakesleep train`` writes, or one run of ``wakesleep compare``
(``OUT/LABEL/seedS``)::

    config.json      everything needed to rebuild the run (``wakesleep train``)
    run.json         the same for a compare run: its data, model, settings (:data:`COMPARE_RUN`)
    checkpoint.pt    model, estimator, optimiser and RNG states, history (:func:`load_checkpoint`)
    best.pt          the parameters of the best validation epoch (:func:`load_best`)
    metrics.jsonl    one JSON object per epoch
    summary.json     the test evaluation (and later ``wakesleep evaluate`` results)
    samples.png, curves.png
    events.out.tfevents.*   TensorBoard scalars, with ``TrainConfig(tensorboard=True)``
    .lock, .lock-owner.json the writer's lock and who holds it (:func:`run_lock`)

Trust: checkpoints are loaded as data (``weights_only=True``: tensors, numbers, strings, None and
containers), and a user's model file that a run records is imported only when the caller names it
too (:func:`load_run`'s ``model_spec``), so no file in a run directory can run code when opened; one process writes a run
directory at a time (:func:`run_lock`, an OS-level lock that goes with the process).
:func:`read_run` reads either kind of run directory back as one record.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from wakesleep import fused
from wakesleep.data import load_dataset
from wakesleep.io import atomic_write_text
from wakesleep.models.loading import ModelSpecError, check_named, model_from_config, user_model_config

CONFIG, CHECKPOINT, BEST, METRICS, SUMMARY = "config.json", "checkpoint.pt", "best.pt", "metrics.jsonl", "summary.json"
SAMPLES, CURVES = "samples.png", "curves.png"
COMPARE_RUN = "run.json"  # a compare run's record, in place of config.json
LOCK, LOCK_OWNER = ".lock", ".lock-owner.json"
# The files a run writes; their leftover temporaries (".NAME.XXXX.tmp") are removed on start.
RUN_FILES = (CONFIG, CHECKPOINT, BEST, METRICS, SUMMARY, SAMPLES, CURVES)

CHECKPOINT_FORMAT = "wakesleep-checkpoint-1"
BEST_FORMAT = "wakesleep-best-1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, foreign, or from a different configuration."""


# ------------------------------------------------------------------ one writer per run directory


class RunDirectoryBusy(RuntimeError):
    """Another live process holds a run directory's lock (the message names its process id;
    ``holder`` is that part alone)."""

    holder: str = "another process"


_held: dict[str, list] = {}  # run directories this process holds: resolved path -> [FileLock, depth]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _owner(run: Path, wait: float = 2.0) -> str:
    """Who holds ``run``'s lock, as recorded by its holder: "process N on HOST (COMMAND, since T)".
    The holder writes the record just after locking, over a killed holder's stale one: wait up to
    ``wait`` seconds for a record of a live process (on this host; another host's is taken as is)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            o = json.loads((run / LOCK_OWNER).read_text())
            if o["host"] != socket.gethostname() or _alive(int(o["pid"])):
                return f"process {o['pid']} on {o['host']} ({o['command']}, since {o['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            return "a process that is just starting or stopping"
        time.sleep(0.05)


@contextlib.contextmanager
def run_lock(run: str | Path, command: str = "train"):
    """Hold the run directory's lock (an OS-level ``flock`` on ``RUN/.lock``, through ``filelock``)
    for the life of the block: one writer per run directory.  The lock goes with the process, so a
    killed holder never leaves a stale lock; the holder's process id, host and command are kept
    in ``RUN/.lock-owner.json`` for the refusal message.  Re-entrant within a process (the command
    line holds it around :func:`~wakesleep.training.train`, which takes it again).  Creates ``run`` if needed.

    On network file systems, whether ``flock`` excludes processes on other hosts depends on the
    file system.

    Raises:
        RunDirectoryBusy: another process holds the lock; the message names it.
        OSError: ``run`` cannot be created or written.
    """
    run = Path(run)
    key = str(run.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    run.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = _owner(run)
        busy = RunDirectoryBusy(
            f"{run} is in use by {holder}; wait for it to finish or stop it (its last checkpoint is kept), or choose another run directory"
        )
        busy.holder = holder
        raise busy from None
    _held[key] = [lock, 1]
    try:
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": datetime.now().isoformat(timespec="seconds")}
        atomic_write_text(run / LOCK_OWNER, json.dumps(owner))
        yield
    finally:
        del _held[key]
        try:
            (run / LOCK_OWNER).unlink(missing_ok=True)
        finally:
            lock.release()


def clean_temporary_files(run: Path) -> list[Path]:
    """Remove the temporary files (``.NAME.XXXX.tmp``) that runs killed mid-write left beside the
    files a run writes (:data:`RUN_FILES`).  Call it only while holding :func:`run_lock`: then no
    write of another process is under way.  Returns the paths removed."""
    removed = []
    for name in RUN_FILES:
        for tmp in Path(run).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


# ------------------------------------------------------------------ reading a run back, as data


def _load_data_only(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, so that no
    file can run code when it is opened (a pickle may name any callable; run directories are
    shared between people).

    Raises:
        CheckpointError: naming the file: missing, unreadable (truncated, not a torch file), or
            holding Python objects other than tensors and plain data (refused unopened).
    """
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first, or drop --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch's message names the refused callable or class
        raise CheckpointError(
            f"refused {path}: it names the Python object {named.group(1) if named else '(unknown)'}, not only tensors and plain data "
            "as a wakesleep checkpoint does, and opening it could run code; delete it, or retrain"
        ) from None
    except Exception as e:  # torch raises several types (RuntimeError, OSError, EOFError, …) for damaged files
        raise CheckpointError(f"checkpoint {path} is unreadable ({fused.first_line(e)}); it is truncated or not a checkpoint") from None


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint written by :func:`~wakesleep.training.train` (``checkpoint.pt``), as data: tensors, numbers,
    strings, None and containers of them; nothing in it can run code.

    Raises:
        CheckpointError: naming the file, if it is missing, truncated, not a wakesleep checkpoint,
            or holds other Python objects (refused without being run).
    """
    path = Path(path)
    ckpt = _load_data_only(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a wakesleep checkpoint")
    return ckpt


def load_best(path: Path) -> dict:
    """The parameters in a run's ``best.pt`` (a state dict of tensors), loaded as data like
    :func:`load_checkpoint`.  Files written before ``best.pt`` had a ``format`` key are accepted.

    Raises:
        CheckpointError: as :func:`load_checkpoint`.
    """
    path = Path(path)
    best = _load_data_only(path)
    if not isinstance(best, dict) or best.get("format", BEST_FORMAT) != BEST_FORMAT or not isinstance(best.get("model"), dict):
        raise CheckpointError(f"{path} is not a wakesleep best-parameters file")
    return best["model"]


def _compare_run_config(run: Path) -> dict:
    """The ``config.json`` equivalent of one ``wakesleep compare`` run (``NAME/LABEL/seedS``): its data
    from ``run.json``, its model from the checkpoint's recorded model config."""
    try:
        recorded = json.loads((run / COMPARE_RUN).read_text())
        dataset, data_dir = recorded["data"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{run / COMPARE_RUN} is damaged ({e}); rerun the comparison") from None
    model_config = load_checkpoint(run / CHECKPOINT).get("model_config")
    if not model_config and isinstance(recorded.get("model"), dict) and "spec" in recorded["model"]:
        model_config = user_model_config(recorded["model"]["spec"], load_dataset(dataset, data_dir=data_dir).dim)
    if not model_config:
        raise CheckpointError(f"{run / CHECKPOINT} does not record its model; rerun the comparison")
    return {"model": model_config, "data": {"dataset": dataset, "data_dir": data_dir}}


def read_run(run: str | Path) -> tuple[dict, Path]:
    """The record of a run directory in one form, whichever command wrote it: ``(config, path)``,
    where ``config`` has at least ``config["model"]`` (the model record) and ``config["data"]``
    (``{"dataset", "data_dir"}``), and ``path`` is the file it came from.  A ``wakesleep train``
    run's is its ``config.json``; a ``wakesleep compare`` run's is built from its ``run.json``
    and its checkpoint's recorded model.

    Raises:
        CheckpointError: not a run directory, or a damaged ``config.json``, ``run.json`` or checkpoint.
    """
    run = Path(run)
    path = run / CONFIG
    if not path.is_file() and (run / COMPARE_RUN).is_file():
        return _compare_run_config(run), run / COMPARE_RUN
    if not path.is_file():
        raise CheckpointError(f"{run} is not a run directory (no {CONFIG}); train one with `wakesleep train --run-dir {run}`")
    try:
        return json.loads(path.read_text()), path
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from None


def load_model_state(module: torch.nn.Module, state: dict, source: Path | str, what: str = "model") -> None:
    """``module.load_state_dict(state)``, with a one-line :class:`CheckpointError` naming ``source``
    and the first mismatch (missing/unexpected key, or shapes) instead of torch's multi-line error."""
    own = module.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} holds no {what} parameters")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        if shapes:
            k = shapes[0]
            first = f"{k} has shape {tuple(state[k].shape)} there but {tuple(own[k].shape)} here"
        else:
            first = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        n = len(missing) + len(unexpected) + len(shapes)
        raise CheckpointError(
            f"the {what} parameters in {source} do not fit this {what} ({n} mismatches; {first}): use the settings the run was made with"
        )
    module.load_state_dict(state)


def load_run(run: str | Path, model_spec: str | None = None):
    """Rebuild (model, config) of a run directory, with the best parameters loaded.

    A run directory is what ``wakesleep train`` writes (``config.json``), or one run of
    ``wakesleep compare`` (``OUT/LABEL/seedS``; before it wrote ``config.json``, only ``run.json``).
    A run of a user's own model opens only when ``model_spec`` names that model (its ``--model``
    spec, :func:`~wakesleep.models.loading.check_named`): the run's files never choose code to run.

    Raises:
        CheckpointError: a missing or damaged config or checkpoint.
        wakesleep.models.loading.ModelSpecError: a user's model that ``model_spec`` does not name, or
            that no longer loads.
    """
    run = Path(run)
    config, cfg_path = read_run(run)
    try:
        check_named(config["model"], model_spec, cfg_path)
        model = model_from_config(config["model"])
    except ModelSpecError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path} does not describe a model: {e}") from None
    best = run / BEST
    state = load_best(best) if best.is_file() else load_checkpoint(run / CHECKPOINT)["model"]  # as data: no code runs
    try:
        load_model_state(model, state, run)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; the parameters do not fit the model in {cfg_path}") from None
    return model, config
