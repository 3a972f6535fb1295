"""The trainer: minibatches, Adam with separate learning rates for p and q, validation each epoch,
early stopping, JSON-lines metrics, atomic checkpoints and resume.

It knows nothing of any estimator's math: it asks the estimator for a surrogate loss, calls
``backward()`` and steps (:func:`train_step`).  Randomness is reproducible: the data order of
epoch e comes from a generator seeded by (seed, e), and the global torch RNG state (CPU, and CUDA
when the model is there; every rank's, under torchrun) is saved with every checkpoint, so a
resumed run carries on exactly where the stopped one left off.

Trust: checkpoints are loaded as data (``weights_only=True``: tensors, numbers, strings, None and
containers), so no file in a run directory can run code when opened; one process writes a run
directory at a time (:func:`run_lock`, an OS-level lock that goes with the process).

The model's device is the run's device: move the model (``model.to("cuda")``) before calling
:func:`train`; the data and the estimator follow it.  Under ``torchrun`` (a process group of more
than one process) the same call trains data-parallel; see :mod:`wakesleep.distributed`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import socket
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from torch import Tensor
from tqdm.auto import tqdm

from wakesleep import distributed, layers
from wakesleep.models import contract
from wakesleep.estimators.base import EstimatorOutput
from wakesleep.evaluate import report_log_likelihood

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
# Seeds are derived from (seed, epoch) and (seed, rank) by multiplying by about 10**6: this bound
# keeps every derived seed within the 64 bits torch's generators take.
MAX_SEED = 2**32 - 1


class TrainingError(RuntimeError):
    """A training step produced a non-finite quantity (the message names step, estimator and quantity)."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, foreign, or from a different configuration."""


@dataclass
class TrainConfig:
    """Trainer settings.

    Attributes:
        epochs: passes over the training data (≥ 1).
        batch_size: datapoints per step (≥ 1).
        lr_p, lr_q: Adam learning rates for the generative (θ) and recognition (φ) parameters.
        lr_estimator: Adam learning rate for the estimator's own parameters (ALWS's kernel).
        seed: seeds parameter initialisation (by the caller), data order and sampling; 0 to
            ``MAX_SEED`` = 2**32 - 1.
        valid_k: particles for the validation log-likelihood each epoch.
        valid_every: validate every this many epochs.
        patience: stop after this many validations without improvement (None: never).
        max_seconds: time budget for training, seconds (None: none), on ``clock``.
        checkpoint_every: also checkpoint every this many steps within an epoch (None: only at
            the end of each epoch); a resumed run continues from the exact step.
        clock: ``"wall"`` (elapsed time) or ``"process"`` (CPU time of this process, all threads:
            a budget that other jobs on a shared machine do not eat into).
        nan_policy: ``"error"`` stops with :class:`TrainingError` on a non-finite loss or
            gradient; ``"skip"`` skips that step and counts it.
        progress: show a progress bar.
        compile: ``torch.compile`` the training step (:func:`compile_estimator`) and the
            Bernoulli log-density kernels used by validation and evaluation
            (:func:`wakesleep.layers.use_compiled_kernels`, which stay switched on for the rest
            of the process).  Needs a C++ compiler; falls back to eager with a warning; the same
            draws and results up to float rounding.
    """

    epochs: int = 50
    batch_size: int = 100
    lr_p: float = 1e-3
    lr_q: float = 1e-3
    lr_estimator: float = 1e-3
    seed: int = 0
    valid_k: int = 100
    valid_every: int = 1
    patience: int | None = 10
    max_seconds: float | None = None
    checkpoint_every: int | None = None
    clock: str = "wall"
    nan_policy: str = "error"
    progress: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        def count(name: str, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1{' or None' if optional else ''}, got {v!r}")

        def positive(name: str, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive finite number{' or None' if optional else ''}, got {v!r}")

        for name in ("epochs", "batch_size", "valid_k", "valid_every"):
            count(name)
        for name in ("patience", "checkpoint_every"):
            count(name, optional=True)
        for name in ("lr_p", "lr_q", "lr_estimator"):
            positive(name)
        positive("max_seconds", optional=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer from 0 to 2**32 - 1 = {MAX_SEED}, got {self.seed!r}")
        if self.clock not in ("wall", "process"):
            raise ValueError(f"clock must be 'wall' or 'process', got {self.clock!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")
        if self.nan_policy not in ("error", "skip"):
            raise ValueError(f"nan_policy must be 'error' or 'skip', got {self.nan_policy!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown trainer settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class FitResult:
    """What :func:`train` returns: the per-epoch history and how the run ended."""

    history: list[dict] = field(default_factory=list)
    best_valid: float | None = None
    best_epoch: int | None = None
    stopped: str = "epochs"
    skipped_steps: int = 0
    seconds: float = 0.0


# ------------------------------------------------------------------ faults

FAULT_ENV = "WAKESLEEP_INJECT_FAULT"
_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Fault injection for the reliability tests: ``WAKESLEEP_INJECT_FAULT=name:n`` makes the
    process kill itself (SIGKILL, no clean-up) the n-th time it reaches point ``name``.

    Points: ``step`` (after a step's backward, before the update), ``validate``,
    ``write-<file name>`` (half of an atomic write's bytes written, e.g. ``write-checkpoint.pt``),
    ``evaluate`` (the command line's final test evaluation).  Costs one dictionary lookup when the variable is unset.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, nth = spec.rpartition(":")
    if point != name:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] == int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------ files


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            fault_point("write-" + path.name)
            f.write(data[len(data) // 2 :])
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


# ------------------------------------------------------------------ one writer per run directory

LOCK, LOCK_OWNER = ".lock", ".lock-owner.json"
# The files a run writes; their leftover temporaries (".NAME.XXXX.tmp") are removed on start.
RUN_FILES = ("config.json", CHECKPOINT, BEST, METRICS, "summary.json", "samples.png", "curves.png")


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
    line holds it around :func:`train`, which takes it again).  Creates ``run`` if needed.

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
        busy = RunDirectoryBusy(f"{run} is in use by {holder}; wait for it to finish or stop it (its last checkpoint is kept), "
                                "or choose another run directory")
        busy.holder = holder
        raise busy from None
    _held[key] = [lock, 1]
    try:
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                 "since": datetime.now().isoformat(timespec="seconds")}
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


CHECKPOINT_FORMAT = "wakesleep-checkpoint-1"
BEST_FORMAT = "wakesleep-best-1"


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
        raise CheckpointError(f"checkpoint {path} is unreadable ({layers.first_line(e)}); it is truncated or not a checkpoint") from None


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint written by :func:`train` (``checkpoint.pt``), as data: tensors, numbers,
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
        raise CheckpointError(f"the {what} parameters in {source} do not fit this {what} ({n} mismatches; {first}): use the settings the run was made with")
    module.load_state_dict(state)


# ------------------------------------------------------------------ training


def build_optimizer(model, estimator, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The trainer's Adam: one parameter group each for θ (``lr_p``), φ (``lr_q``) and the
    estimator's own parameters (``lr_estimator``), in that order (groups without parameters are
    left out).  Uses PyTorch's fused Adam kernel (one pass per tensor instead of about ten; the
    same update up to rounding) where every parameter is a floating tensor on a device it supports."""
    groups = [{"params": list(model.p_parameters()), "lr": cfg.lr_p, "name": "p"}]
    q = list(model.q_parameters()) if callable(getattr(model, "q_parameters", None)) else []  # optional without a proposal
    if q:
        groups.append({"params": q, "lr": cfg.lr_q, "name": "q"})
    e = [p for p in estimator.parameters() if p.requires_grad]
    if e:
        groups.append({"params": e, "lr": cfg.lr_estimator, "name": "estimator"})
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(groups, fused=fused or None)


def _grad_norm(grads: list[Tensor]) -> Tensor:
    if not grads:
        return torch.zeros(())
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))


def compile_estimator(estimator):
    """``torch.compile`` of an estimator's forward (surrogate loss and, through AOTAutograd, its
    backward), as a callable ``(model, x) -> EstimatorOutput`` (``TrainConfig(compile=True)``).

    Random numbers are drawn by ATen, as in eager mode (Inductor's ``fallback_random``), so the
    compiled step draws the same particles and sleep samples as the eager one from the same
    seed and computes the same loss up to float rounding (``tests/test_fused.py``).  Compiling
    happens on the first call (seconds) and again once when the batch shape changes.  If it
    fails (no C++ compiler, an operation Inductor cannot handle) this warns once and calls the
    eager estimator from then on.
    """
    compiled = torch.compile(estimator, options={"fallback_random": True})

    def forward(model, x: Tensor) -> EstimatorOutput:
        nonlocal compiled
        if compiled is None:
            return estimator(model, x)
        try:
            return compiled(model, x)
        except Exception as err:  # Dynamo/Inductor raise many types; the eager call below re-raises real errors
            import warnings

            warnings.warn(f"torch.compile of the {type(estimator).__name__} step failed ({layers.first_line(err)}); "
                          "training on with the eager step", RuntimeWarning, stacklevel=2)
            compiled = None
            return estimator(model, x)

    return forward


def train_step(model, estimator, opt: torch.optim.Optimizer, x: Tensor, forward=None) -> tuple[EstimatorOutput, str | None]:
    """One training step: ``estimator(model, x)`` → ``backward()`` → (in a process group, the
    gradient average over ranks) → Adam step, unless the loss or a gradient is non-finite.

    Finiteness is checked once per step, on the loss and the total gradient norm together (one
    host-device synchronisation on CUDA); only when that fails are the parameters searched for
    the culprit.

    Args:
        model, estimator: as for :func:`train`.
        opt: the optimiser over ``model`` and ``estimator`` (:func:`build_optimizer`).
        x: this process's minibatch [B, D].
        forward: what computes the estimator's output (default ``estimator`` itself; the trainer
            passes :func:`compile_estimator`'s callable under ``TrainConfig(compile=True)``).

    Returns:
        ``(output, bad)``: the estimator's output, and ``None`` after a step, or the name of the
        non-finite quantity (``"loss"`` or ``"gradient of NAME"``) when no step was taken (the
        gradients are then cleared).
    """
    out = (forward or estimator)(model, x)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    fault_point("step")
    params = [p for g in opt.param_groups for p in g["params"]]
    loss = out.loss.detach()
    if distributed.world()[1] > 1:
        loss = distributed.average_gradients(params, out.loss)
    grads = [p.grad for p in params if p.grad is not None]
    if not bool(torch.isfinite(torch.stack([loss, _grad_norm(grads).to(loss.device, loss.dtype)])).all()):
        bad = "loss" if not bool(torch.isfinite(loss)) else _nonfinite(model, estimator)
        if bad is not None:
            opt.zero_grad(set_to_none=True)
            return out, bad
    opt.step()
    return out, None


def _nonfinite(model, estimator) -> str | None:
    for name, p in list(model.named_parameters()) + [("estimator." + n, p) for n, p in estimator.named_parameters()]:
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return f"gradient of {name}"
    return None


def train(
    model,
    estimator,
    train_data: Tensor,
    valid: Tensor | None = None,
    config: TrainConfig | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    **overrides,
) -> FitResult:
    """Train ``model`` with ``estimator`` on ``train_data`` [N, D].

    Each step: a minibatch x [B, D] → ``estimator(model, x).loss`` → backward → Adam step with
    learning rate ``lr_p`` for θ, ``lr_q`` for φ, ``lr_estimator`` for the estimator's own
    parameters.  After every ``valid_every`` epochs the validation log-likelihood (importance
    sampled, ``valid_k`` particles, nats) is recorded; the best model is kept in ``best.pt`` and
    restored at the end; training stops early after ``patience`` validations without improvement.

    With ``run_dir``, every epoch writes ``metrics.jsonl`` (one JSON object per epoch) and
    ``checkpoint.pt`` atomically; ``resume=True`` continues from ``checkpoint.pt`` (loaded as data:
    :func:`load_checkpoint`), with ``config``'s learning rates, and goes on past a finished run's
    end when the setting it stopped on (``epochs``, ``patience``, ``max_seconds``) was raised
    (:func:`ends_at`).  The run directory is locked for the call (:func:`run_lock`), and
    temporary files of killed runs in it are removed first.

    Runs on the model's device.  In a ``torch.distributed`` process group of N > 1 processes
    (``torchrun``; :mod:`wakesleep.distributed`) every process calls ``train`` alike: each takes
    ``batch_size / N`` datapoints a step from its shard, draws its own particles, and the
    gradients are averaged; only rank 0 validates and writes files.

    Args:
        model: any model that meets the contract for ``estimator`` (:mod:`wakesleep.models.contract`;
            checked before the first step).
        estimator: a :class:`~wakesleep.estimators.Estimator`.
        train_data: [N, D] float tensor.
        valid: [M, D] float tensor, or None (no validation, no early stopping).
        config: :class:`TrainConfig`; keyword ``overrides`` replace its fields.
        run_dir: directory for metrics and checkpoints (None: keep nothing on disk).
        resume: continue from ``run_dir/checkpoint.pt``.

    Returns:
        :class:`FitResult`.

    Raises:
        wakesleep.models.ModelContractError: (a ``TypeError``) the model lacks members the
            estimator or validation needs (all listed).
        wakesleep.models.ModelShapeError: a member returns the wrong shape (named).
        ValueError: bad settings, an empty data set, data of the wrong width, or (under torchrun) a
            batch size that the number of processes does not divide.
        TrainingError: a non-finite loss or gradient with ``nan_policy="error"``.
        CheckpointError: ``resume`` with a missing, damaged or mismatched checkpoint, or one
            holding Python objects other than tensors and plain data (refused, never run).
        RunDirectoryBusy: another process is writing ``run_dir``.
    """
    cfg = config or TrainConfig()
    if overrides:
        cfg = TrainConfig.from_dict({**asdict(cfg), **overrides})
    rank, world_size = distributed.world()
    main = rank == 0
    if cfg.batch_size % world_size:
        raise ValueError(f"batch_size {cfg.batch_size} is the global batch and must be divisible by the {world_size} processes; "
                         f"use a multiple of {world_size}")
    train_data = torch.as_tensor(train_data)
    check_data(model, train_data, "train_data")
    device, dtype = contract.device_dtype(model)
    estimator.to(device=device)
    train_data = train_data.to(device, dtype)
    if valid is not None:
        valid = torch.as_tensor(valid)
        check_data(model, valid, "valid")
        valid = valid.to(device, dtype)
    valid = check_model_for_training(model, estimator, train_data, valid)
    run = Path(run_dir) if run_dir is not None else None
    if resume and run is None:
        raise ValueError("resume needs a run_dir")
    if run is None or not main:
        return _fit(model, estimator, train_data, valid, cfg, run, resume)
    with run_lock(run):  # one writer: rank 0 writes everything
        clean_temporary_files(run)
        return _fit(model, estimator, train_data, valid, cfg, run, resume)


def _fit(model, estimator, train_data: Tensor, valid: Tensor | None, cfg: TrainConfig, run: Path | None, resume: bool) -> FitResult:
    """:func:`train` after its checks (and, on rank 0 with a run directory, holding its lock)."""
    rank, world_size = distributed.world()
    main = rank == 0
    device = contract.device_dtype(model)[0]
    best_state = None  # in-memory copy of the best parameters when there is no run directory
    forward = None
    if cfg.compile:
        layers.use_compiled_kernels(True)
        forward = compile_estimator(estimator)
    opt = build_optimizer(model, estimator, cfg)
    result = FitResult()
    start_epoch, start_batch, since_best, elapsed = 0, 0, 0, 0.0
    sums: dict[str, Tensor] = {}  # running sums of the epoch's metrics (kept in mid-epoch checkpoints)
    count = 0
    if world_size > 1:
        torch.manual_seed(distributed.rank_seed(cfg.seed, rank))  # each rank its own particles
    if resume:
        # Rank 0 reads the file and sends it (or the error) to the others: no shared disk needed.
        ckpt = distributed.broadcast_object(_read_checkpoint_or_error(run / CHECKPOINT) if main else None)
        if ckpt.get("model_config") != getattr(model, "config", None):
            raise CheckpointError(
                f"{run / CHECKPOINT} was written for model {ckpt.get('model_config')}, not {getattr(model, 'config', None)}; "
                "use the same model settings, or a new run directory"
            )
        load_model_state(model, ckpt.get("model"), run / CHECKPOINT)
        load_model_state(estimator, ckpt.get("estimator"), run / CHECKPOINT, "estimator")
        try:
            opt.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"the optimiser state in {run / CHECKPOINT} does not fit this model ({str(e).splitlines()[0]})") from None
        # The learning rates are settings a resumed run may change: this config's, not the saved ones.
        lrs = {"p": cfg.lr_p, "q": cfg.lr_q, "estimator": cfg.lr_estimator}
        for group in opt.param_groups:
            group["lr"] = lrs.get(group.get("name"), group["lr"])
        _set_rng_states(ckpt, rank, world_size, device)
        start_epoch, since_best, elapsed = ckpt["epoch"], ckpt["since_best"], ckpt["seconds"]
        start_batch, count = ckpt.get("batch", 0), ckpt.get("count", 0)
        ranks = ckpt.get("ranks") or []
        saved = ranks[rank]["sums"] if world_size > 1 and len(ranks) == world_size else ckpt.get("sums", {})
        sums = {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in saved.items()}
        result.history, result.best_valid, result.best_epoch = ckpt["history"], ckpt["best_valid"], ckpt["best_epoch"]
        result.skipped_steps = ckpt.get("skipped_steps", 0)
        if main:
            write_jsonl(run / METRICS, result.history)  # drop any record written after the checkpoint
        if ends_at(ckpt, cfg):
            result.stopped, result.seconds = (ckpt.get("stopped") or "epochs") if ckpt.get("finished") else "epochs", elapsed
            _finish(model, run, None)
            return result
    distributed.broadcast_state([model, estimator])  # identical starting points on every rank

    n = train_data.shape[0]
    local_batch = cfg.batch_size // world_size  # each rank's share of the global batch
    steps_per_epoch = math.ceil(math.ceil(n / world_size) / local_batch)
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch + start_batch, disable=not (cfg.progress and main),
               desc=f"{getattr(estimator, 'name', 'train')}", unit="step", dynamic_ncols=True)
    now = time.perf_counter if cfg.clock == "wall" else time.process_time
    t0 = now() - elapsed
    step = start_epoch * steps_per_epoch + start_batch
    result.stopped = "epochs"

    def save(epoch_done: int, batch: int, finished: bool) -> None:
        """Checkpoint: ``epoch_done`` full epochs plus ``batch`` steps of the next one.  Called on
        every rank (the RNG states are gathered), written by rank 0."""
        rng = _rng_states(device)
        # Every rank's RNG state and partial metric sums, for an exact resume.
        ranks = distributed.gather_object({"rng": rng, "sums": {k: float(v) for k, v in sums.items()}}) if world_size > 1 else None
        if not main:
            return
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "model": model.state_dict(),
                "model_config": getattr(model, "config", None),
                "estimator": estimator.state_dict(),
                "estimator_settings": estimator.settings(),
                "optimizer": opt.state_dict(),
                "rng": rng["cpu"],
                "cuda_rng": rng["cuda"],
                "ranks": ranks,
                "world_size": world_size,
                "epoch": epoch_done,
                "batch": batch,
                "sums": {k: float(v) for k, v in sums.items()},
                "count": count,
                "since_best": since_best,
                "seconds": now() - t0,
                "history": result.history,
                "best_valid": result.best_valid,
                "best_epoch": result.best_epoch,
                "skipped_steps": result.skipped_steps,
                "train_config": asdict(cfg),
                "finished": finished,
                "stopped": result.stopped,
            },
            run / CHECKPOINT,
        )

    for epoch in range(start_epoch, cfg.epochs):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = distributed.shard(torch.randperm(n, generator=gen), rank, world_size).to(train_data.device)
        model.train()
        first = start_batch if epoch == start_epoch else 0
        if first == 0:
            sums, count = {}, 0
        for b in range(first, steps_per_epoch):
            x = train_data[order[b * local_batch : (b + 1) * local_batch]]
            out, bad = train_step(model, estimator, opt, x, forward)
            step += 1
            if bad is not None:
                if cfg.nan_policy == "skip":
                    result.skipped_steps += 1
                    bar.update(1)
                    continue
                raise TrainingError(
                    f"step {step} (epoch {epoch + 1}): estimator {getattr(estimator, 'name', estimator)} produced a non-finite {bad}; "
                    f"the last good checkpoint is kept{' in ' + str(run) if run else ''}. Lower the learning rates, "
                    "check the data, or pass nan_policy='skip' (--skip-nonfinite) to skip such steps"
                )
            if step == 1 and world_size > 1:
                # Lazy initialisations in the first forward pass (e.g. a kernel bandwidth set from
                # this rank's samples) may differ across ranks: adopt rank 0's.
                distributed.broadcast_state([model, estimator])
            count += 1
            for key, v in out.metrics.items():  # summed on the device: no synchronisation per step
                v = v.detach().to(torch.float64)
                sums[key] = sums[key] + v if key in sums else v
            bar.update(1)
            if run is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and b + 1 < steps_per_epoch:
                save(epoch, b + 1, False)
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step}
        if world_size > 1:  # means over every rank's steps
            keys = sorted(sums)
            total = distributed.all_reduce_sum(torch.stack([sums[k] for k in keys] + [torch.tensor(float(count), dtype=torch.float64, device=device)]))
            record.update({f"train_{k}": float(v) / max(float(total[-1]), 1.0) for k, v in zip(keys, total[:-1])})
        else:
            record.update({f"train_{k}": float(v) / max(count, 1) for k, v in sums.items()})
        improved = False
        if main and valid is not None and ((epoch + 1) % cfg.valid_every == 0 or epoch + 1 == cfg.epochs):
            model.eval()
            fault_point("validate")
            ll = report_log_likelihood(model, valid, k=cfg.valid_k, check=False)  # checked before the first step
            record["valid_log_likelihood"], record["valid_stderr"] = ll.mean, ll.stderr
            if result.best_valid is None or ll.mean > result.best_valid:
                result.best_valid, result.best_epoch, since_best, improved = ll.mean, epoch + 1, 0, True
                if run is None:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
        record["skipped_steps"] = result.skipped_steps
        record["time"] = now() - t0
        result.history.append(record)
        bar.set_postfix({k: f"{v:.2f}" for k, v in record.items() if k in ("train_objective", "valid_log_likelihood")})

        if cfg.patience is not None and valid is not None and since_best >= cfg.patience:
            result.stopped = "early"
        elif cfg.max_seconds is not None and record["time"] >= cfg.max_seconds:
            result.stopped = "time"
        result.stopped = distributed.broadcast_object(result.stopped)  # rank 0 decides for all
        finished = result.stopped != "epochs" or epoch + 1 == cfg.epochs
        if run is not None:
            if main and (improved or valid is None):
                atomic_torch_save({"format": BEST_FORMAT, "model": model.state_dict(), "epoch": epoch + 1}, run / BEST)
            sums, count = {}, 0
            save(epoch + 1, 0, finished)
            if main:
                write_jsonl(run / METRICS, result.history)
        if finished:
            break
    bar.close()
    result.seconds = now() - t0
    _finish(model, run, best_state)
    return result


def ends_at(ckpt: dict, cfg: TrainConfig) -> bool:
    """Whether a run with settings ``cfg`` ends where ``ckpt`` stands.  A finished run goes on
    when the settings it stopped on were raised on resume: more ``epochs``, a larger ``patience``
    (stopped early) or ``max_seconds`` (stopped on its clock)."""
    if ckpt["epoch"] >= cfg.epochs:
        return True
    if not ckpt.get("finished"):
        return False
    stopped = ckpt.get("stopped")
    if stopped == "early":
        return cfg.patience is not None and ckpt["since_best"] >= cfg.patience
    if stopped == "time":
        return cfg.max_seconds is not None and ckpt["seconds"] >= cfg.max_seconds
    return False


def _read_checkpoint_or_error(path: Path):
    try:
        return load_checkpoint(path)
    except CheckpointError as e:
        return e


def _rng_states(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_states(ckpt: dict, rank: int, world_size: int, device: torch.device) -> None:
    """Restore this rank's RNG state from a checkpoint: its own where the checkpoint was written
    by as many processes; otherwise (another world size) a fresh per-rank seed, which continues
    the run statistically but not bit for bit."""
    ranks = ckpt.get("ranks")
    if world_size > 1 and not (ranks and len(ranks) == world_size):
        torch.manual_seed(distributed.rank_seed(ckpt["train_config"].get("seed", 0) + ckpt["epoch"], rank))
        return
    state = ranks[rank]["rng"] if world_size > 1 else {"cpu": ckpt["rng"], "cuda": ckpt.get("cuda_rng")}
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _finish(model, run: Path | None, best_state: dict | None) -> None:
    """Load the best parameters (rank 0's) into the model on every rank."""
    if distributed.is_main():
        if run is not None:
            _restore_best(model, run)
        elif best_state is not None:
            model.load_state_dict(best_state)
    distributed.broadcast_state([model])


def check_model_for_training(model, estimator, train_data: Tensor, valid: Tensor | None) -> Tensor | None:
    """Check, before the first step, that ``model`` meets the contract for ``estimator`` and for
    validation: one :class:`~wakesleep.models.ModelContractError` listing every missing member,
    then a shape check on two datapoints naming the member that returns the wrong shape, then
    the estimator's own check.  A model without a proposal is validated by its exact
    log-likelihood where it has one (``exact_log_marginal`` or ``enumerate_latents``); without
    either it cannot be validated: this warns that validation (and early stopping) is off, and
    returns None for ``valid``.

    Returns:
        ``valid``, or None when it will not be used.

    Raises:
        wakesleep.models.ModelContractError: (a ``TypeError``) missing members.
        wakesleep.models.ModelShapeError: (a ``ValueError``) a member returning the wrong shape.
        ValueError: the estimator's own check (e.g. VAE with discrete latents).
    """
    if valid is not None and not contract.has_proposal(model) and not contract.has_exact_form(model):
        warnings.warn(
            f"{type(model).__name__} has no proposal q(z | x) and no exact log-likelihood, so there is no validation "
            "log-likelihood: validation and early stopping are off and the last epoch's model is kept. "
            "Give the model a proposal (ALWS(q_update='sleep') trains one by sleep-phase updates) or exact_log_marginal(x) to validate",
            UserWarning, stacklevel=3,
        )
        valid = None
    needs = tuple(estimator.requires(model)) + (contract.EVALUATION if valid is not None and contract.has_proposal(model) else ())
    settings = ", ".join(f"{k}={v!r}" for k, v in estimator.settings().items() if v is not None and k != "data_dim")
    contract.check_model(model, needs, f"{type(estimator).__name__}({settings}){' with validation' if valid is not None else ''}")
    contract.check_shapes(model, train_data, needs)
    estimator.check_model(model)
    return valid


def check_data(model, x: Tensor, name: str) -> None:
    """Raise ``ValueError`` naming the fix for data the model cannot be trained on.

    Checks: [N, D] with N ≥ 1, D equal to the model's data width, finite values, and values in
    {0, 1} when the model's likelihood is Bernoulli.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array, got shape {tuple(x.shape)}")
    dim = getattr(model, "data_dim", None)
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has width {x.shape[1]} but the model expects {dim}: build the model for this data")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name} has {bad} NaN/inf values; clean the data first")
    if getattr(model, "binary_data", False) and not ((x == 0) | (x == 1)).all():
        raise ValueError(f"{name} has values outside {{0, 1}}, but the model's likelihood is Bernoulli: binarise the data (e.g. x > 0.5) or use a Gaussian likelihood")


class InsufficientMemory(ValueError):
    """A run's estimated memory exceeds what is available (the message says what would fit)."""


def available_memory(device: torch.device | str) -> int | None:
    """Bytes available for a new allocation on ``device``: CUDA's free memory, or on the CPU the
    kernel's ``MemAvailable`` (capped by this process's cgroup limit, as in a container or a
    scheduler's job); None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v2: the limit less what the group already uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def training_memory(model, estimator, batch_size: int) -> dict[str, int]:
    """A rough lower estimate of the memory one training step takes, bytes, from the parameters'
    shapes alone (``model`` may live on the ``meta`` device, where building it allocates nothing).

    Parameters count four times (values, gradients, Adam's two moments); activations three times
    (forward value, saved for backward, its gradient) per unit per particle row, where units are
    the data width plus every weight matrix's outputs and rows are ``batch_size`` × particles
    (``k`` or ``samples``) plus sleep samples; ALWS's kernel solve adds its N × N (exact), N × m
    (Nyström) or N × F (random features) matrix, three times.

    Returns:
        ``{"parameters": P, "parameter_bytes", "step_bytes", "total"}``.
    """
    params = list(model.parameters()) + list(estimator.parameters())
    n = sum(p.numel() for p in params)
    elt = params[0].element_size() if params else 4
    settings = estimator.settings()
    particles = max(int(settings.get("k") or 1), int(settings.get("samples") or 1))
    sleep = int(settings.get("sleep_samples") or 0)
    rows = batch_size * particles + sleep
    units = int(getattr(model, "data_dim", None) or 0) + sum(p.shape[0] for p in model.parameters() if p.ndim == 2)
    solver = {"exact": sleep, "nystrom": settings.get("num_inducing") or 0, "rff": settings.get("num_features") or 0}
    kernel = sleep * int(solver.get(settings.get("krr"), 0))
    parameter_bytes = 4 * n * elt
    step_bytes = 3 * (rows * units + kernel) * elt
    return {"parameters": n, "parameter_bytes": parameter_bytes, "step_bytes": step_bytes, "total": parameter_bytes + step_bytes}


def check_memory(model, estimator, batch_size: int, device: torch.device | str, fix: str = "a smaller model, batch size or number of particles") -> None:
    """Refuse a run whose :func:`training_memory` exceeds :func:`available_memory` on ``device``,
    before anything of it is allocated (build the model on the ``meta`` device to check it).

    Raises:
        InsufficientMemory: one line with the estimate, what is available, the largest model (in
            parameters) that would fit at this batch size, and ``fix``.
    """
    need, free = training_memory(model, estimator, batch_size), available_memory(device)
    if free is None or need["total"] <= free:
        return
    gib = lambda b: f"{b / 2**30:.3g} GiB"  # noqa: E731
    # Parameters and activations both grow about linearly with the layers' widths.
    fits = int(need["parameters"] * max(free, 0) / need["total"])
    raise InsufficientMemory(
        f"this run needs about {gib(need['total'])} for one training step ({need['parameters']:,} parameters: "
        f"{gib(need['parameter_bytes'])} with gradients and optimiser state; activations: {gib(need['step_bytes'])}), "
        f"but {gib(max(free, 0))} is available on {torch.device(device)}; at this batch size a model of at most about "
        f"{fits:,} parameters would fit: use {fix}"
    )


def _restore_best(model, run: Path) -> None:
    best = run / BEST
    if best.is_file():
        load_model_state(model, load_best(best), best)
