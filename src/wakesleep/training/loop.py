"""The trainer: minibatches (of a fixed training set, or fresh from a stream), Adam with separate
learning rates for p and q, validation each epoch, early stopping, JSON-lines metrics (and
TensorBoard scalars), atomic checkpoints and resume.

Usage: one process, or data-parallel under torchrun (every process calls :func:`train` alike)::

    wakesleep train --dataset digits --run-dir runs/a                                  # one process
    torchrun --nproc-per-node 2 -m wakesleep train --dataset digits --run-dir runs/a   # two processes
    torchrun --nproc-per-node 2 -m wakesleep train --run-dir runs/a --resume          # continue a stopped run

It knows nothing of any estimator's math: it asks the estimator for a surrogate loss, calls
``backward()`` and steps (:func:`~wakesleep.training.step.train_step`).  Where each job lives:
the step and optimiser in :mod:`~wakesleep.training.step`; saving, resuming and RNG state in
:mod:`~wakesleep.training.checkpoint`; ranks in :mod:`~wakesleep.training.distributed` (only
rank 0, ``main``, validates and writes files); the checks before the first step in
:mod:`~wakesleep.training.checks`; the epoch's record in :mod:`~wakesleep.training.metrics`.

The model's device is the run's device: move the model (``model.to("cuda")``) before calling
:func:`train`; the data and the estimator follow it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from wakesleep import fused
from wakesleep.evaluate import report_log_likelihood
from wakesleep.faults import fault_point
from wakesleep.models import contract
from wakesleep.runs import CHECKPOINT, clean_temporary_files, run_lock
from wakesleep.training import distributed
from wakesleep.training.checkpoint import TrainState, restore_best, resume_from, save_best, save_checkpoint
from wakesleep.training.checks import check_gradient_flow, check_model_for_training, data_on_device
from wakesleep.training.metrics import MetricsLog, epoch_means, validation_metrics
from wakesleep.training.settings import FitResult, TrainConfig
from wakesleep.training.step import build_optimizer, compile_estimator, refuse_nonfinite, train_step
from wakesleep.training.stream import Source, is_stream

#: Steps between records, validations and checkpoints of a stream without ``steps_per_epoch``.
DEFAULT_STREAM_STEPS = 100


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
    """Train ``model`` with ``estimator`` on ``train_data`` [N, D], or on data that streams.

    Each step: a minibatch x [B, D] → ``estimator(model, x).loss`` → backward → Adam step with
    learning rate ``lr_p`` for θ, ``lr_q`` for φ, ``lr_estimator`` for the estimator's own
    parameters.  An estimator with per-datapoint state (``needs_index``, e.g. memoised wake-sleep)
    is called as ``estimator(model, x, index=rows)``, rows [B] the minibatch's rows of ``train_data``,
    after ``estimator.prepare(model, train_data)`` (before a checkpoint is loaded).  After every
    ``valid_every`` epochs the validation log-likelihood (importance sampled, ``valid_k``
    particles, nats) is recorded; the best model is kept in ``best.pt`` and
    restored at the end; training stops early after ``patience`` validations without improvement.

    With ``run_dir``, every epoch writes ``metrics.jsonl`` (one JSON object per epoch; with
    ``tensorboard``, TensorBoard scalars too) and ``checkpoint.pt`` atomically; ``resume=True`` continues from ``checkpoint.pt`` (loaded as data:
    :func:`~wakesleep.runs.load_checkpoint`), with ``config``'s learning rates, and goes on past a finished run's
    end when the setting it stopped on (``epochs``, ``patience``, ``max_seconds``) was raised
    (:func:`~wakesleep.training.checkpoint.ends_at`).  The run directory is locked for the call (:func:`~wakesleep.runs.run_lock`), and
    temporary files of killed runs in it are removed first.

    Runs on the model's device.  In a ``torch.distributed`` process group of N > 1 processes
    (``torchrun``; :mod:`wakesleep.training.distributed`) every process calls ``train`` alike: each takes
    ``batch_size / N`` datapoints a step from its shard, draws its own particles, and the
    gradients are averaged; only rank 0 validates and writes files.

    Args:
        model: any model that meets the contract for ``estimator`` (:mod:`wakesleep.models.contract`;
            checked before the first step).
        estimator: a :class:`~wakesleep.estimators.Estimator`.
        train_data: [N, D] float tensor; or a source of fresh batches (:mod:`~wakesleep.training.stream`):
            a callable ``sample(n, generator) -> x [n, D]`` (a simulator; the trainer owns the
            generator and checkpoints its state) or an iterable of batches (a ``DataLoader``; its
            batch size is its own).  A stream has no epochs: ``steps_per_epoch`` steps (default
            100) make one block, after which the run records, validates and checkpoints.
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
        ValueError: bad settings, an empty data set, data of the wrong width (also any streamed
            batch), ``steps_per_epoch`` without a stream, a stream for an estimator with
            per-datapoint state, ``resume`` or
            ``tensorboard`` without ``run_dir``, ``q_grad_std_repeats`` with an estimator that keeps
            per-datapoint state (``needs_index``), or (under torchrun) a batch size that the number of
            processes does not divide.
        TrainingError: a non-finite loss or gradient with ``nan_policy="error"``.
        CheckpointError: ``resume`` with a missing, damaged or mismatched checkpoint, or one
            holding Python objects other than tensors and plain data (refused, never run).
        RunDirectoryBusy: another process is writing ``run_dir``.
    """
    cfg = config or TrainConfig()
    if overrides:
        cfg = TrainConfig.from_dict({**asdict(cfg), **overrides})
    world_size = distributed.world()[1]
    if cfg.batch_size % world_size:
        raise ValueError(
            f"batch_size {cfg.batch_size} is the global batch and must be divisible by the {world_size} processes; use a multiple of {world_size}"
        )
    source = None
    if is_stream(train_data):
        if getattr(estimator, "needs_index", False):
            raise ValueError(f"{type(estimator).__name__} keeps per-datapoint state and needs a fixed training set, not a stream of batches")
        rank, world_size = distributed.world()
        source = Source(train_data, cfg.seed, rank, partial(data_on_device, model, name="a streamed training batch"), world_size)
        train_data = source.probe(8)  # the checks' datapoints, drawn without moving the stream
        if source.rows is not None and source.rows != cfg.batch_size // world_size:
            warnings.warn(
                f"the training data iterable yields batches of {source.rows} datapoints, not the {cfg.batch_size // world_size} of "
                "batch_size (per process): each step trains on the iterable's batches; make the two agree",
                stacklevel=2,
            )
    elif cfg.steps_per_epoch is not None:
        raise ValueError("steps_per_epoch is for a stream of batches; with a fixed training set an epoch is one pass over it")
    else:
        train_data = data_on_device(model, train_data, "train_data")
    estimator.to(device=contract.device_dtype(model)[0])
    valid = None if valid is None else data_on_device(model, valid, "valid")
    valid = check_model_for_training(model, estimator, train_data, valid)
    if hasattr(estimator, "prepare"):
        estimator.prepare(model, train_data)  # per-datapoint state, before a checkpoint is loaded into it
    check_gradient_flow(model, estimator, train_data)
    run = Path(run_dir) if run_dir is not None else None
    if resume and run is None:
        raise ValueError("resume needs a run_dir")
    if cfg.tensorboard and run is None:
        raise ValueError("tensorboard needs a run_dir to write its scalars in")
    if cfg.q_grad_std_repeats and getattr(estimator, "needs_index", False):  # its state is per training row: validation points have none
        raise ValueError(f"q_grad_std_repeats: {type(estimator).__name__} keeps per-datapoint state and cannot be run on validation points")
    if run is None or not distributed.is_main():
        return _loop(model, estimator, train_data, valid, cfg, run, resume, source)
    with run_lock(run):  # one writer: rank 0 writes everything
        clean_temporary_files(run)
        return _loop(model, estimator, train_data, valid, cfg, run, resume, source)


def _loop(
    model, estimator, train_data: Tensor, valid: Tensor | None, cfg: TrainConfig, run: Path | None, resume: bool, source: Source | None = None
) -> FitResult:
    """:func:`train` after its checks (and, on rank 0 with a run directory, holding its lock)."""
    rank, world_size = distributed.world()
    main = rank == 0  # only rank 0 validates and writes
    device = contract.device_dtype(model)[0]
    if cfg.compile:
        fused.use_compiled_kernels(True)
    forward = compile_estimator(estimator) if cfg.compile else None
    opt = build_optimizer(model, estimator, cfg)
    distributed.seed_ranks(cfg.seed)  # each rank its own particles
    log = MetricsLog(run if main else None, cfg.tensorboard)
    st, ended = TrainState(), False
    if resume:
        st, ended = resume_from(run / CHECKPOINT, model, estimator, opt, cfg)
        if source is not None and st.source is not None:
            source.load(st.source)
        log.write(st.result.history)  # drop any record written after the checkpoint
    if ended:
        log.close()
        restore_best(model, run, None)
        return st.result
    distributed.broadcast_state([model, estimator])  # identical starting points on every rank
    n, local_batch = train_data.shape[0], cfg.batch_size // world_size  # each rank's share of the global batch
    steps_per_epoch = math.ceil(math.ceil(n / world_size) / local_batch) if source is None else cfg.steps_per_epoch or DEFAULT_STREAM_STEPS
    step = st.epoch * steps_per_epoch + st.batch
    bar = tqdm(
        total=cfg.epochs * steps_per_epoch,
        initial=step,
        disable=not (cfg.progress and main),
        desc=f"{getattr(estimator, 'name', 'train')}",
        unit="step",
        dynamic_ncols=True,
    )
    shown: dict[str, str] = {}  # the progress bar's figures
    rows = local_batch  # datapoints in the last step's batch (an iterable's batches hold their own size)
    st.start_clock(cfg.clock)
    st.result.stopped, best_state = "epochs", None  # best_state: the best parameters, in memory when there is no run directory
    save = partial(
        save_checkpoint, run / CHECKPOINT if run else None, model, estimator, opt, cfg, st, source=source
    )  # (epochs done, batch, finished)
    for epoch in range(st.epoch, cfg.epochs):
        if source is None:
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            order = distributed.shard(torch.randperm(n, generator=gen), rank, world_size).to(train_data.device)
        model.train()
        if st.batch == 0:
            st.sums, st.count = {}, 0
        for b in range(st.batch, steps_per_epoch):
            if source is None:
                index = order[b * local_batch : (b + 1) * local_batch]  # rows of the training set (global, under torchrun)
                x = train_data[index]
            else:
                index, x = None, source.next(local_batch)  # fresh data: this rank's own draws (an iterable's own batch size)
            rows = x.shape[0]
            out, bad = train_step(model, estimator, opt, x, forward, index)
            step += 1
            if step == 1 and world_size > 1:
                # Lazy initialisations in the first forward pass (e.g. a kernel bandwidth set from
                # this rank's samples) may differ across ranks, also when the step was skipped: adopt rank 0's.
                distributed.broadcast_state([model, estimator])
            if bad is not None:  # a non-finite loss or gradient: no step was taken
                if cfg.nan_policy != "skip":
                    raise refuse_nonfinite(bad, step, epoch, estimator, run, model, x)
                st.result.skipped_steps += 1
                bar.update(1)
                continue
            st.add(out.metrics)
            bar.update(1)
            if step % 20 == 0:
                _show_rate(bar, estimator, rows, shown)
            if run is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and b + 1 < steps_per_epoch:
                save(epoch, b + 1, False)
        st.batch = 0
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step, **epoch_means(st.sums, st.count, device)}
        validate = main and valid is not None and ((epoch + 1) % cfg.valid_every == 0 or epoch + 1 == cfg.epochs)
        improved = validate and _validate(model, estimator, valid, cfg, epoch, st, record)
        if improved and run is None:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        record["skipped_steps"], record["time"] = st.result.skipped_steps, st.seconds()
        st.result.history.append(record)
        shown.update({k: f"{v:.2f}" for k, v in record.items() if k in ("train_objective", "valid_log_likelihood")})
        _show_rate(bar, estimator, rows, shown)
        st.result.stopped = distributed.broadcast_object(_stop(cfg, valid, st, record))  # rank 0 decides for all
        finished = st.result.stopped != "epochs" or epoch + 1 == cfg.epochs
        if run is not None:
            if main and (improved or valid is None):
                save_best(model, run, epoch + 1)
            st.sums, st.count = {}, 0
            save(epoch + 1, 0, finished)
            log.write(st.result.history)
        if finished:
            break
    bar.close()
    log.close()
    st.result.seconds = st.seconds()
    restore_best(model, run, best_state)
    return st.result


def _validate(model, estimator, valid: Tensor, cfg: TrainConfig, epoch: int, st: TrainState, record: dict) -> bool:
    """Record the validation log-likelihood (``valid_k`` particles, nats) of the model after
    ``epoch``, and the model's own ``metrics`` and q's gradient standard deviation where asked
    (:func:`~wakesleep.training.metrics.validation_metrics`); returns whether it is the best so far
    (else counts one more without improvement)."""
    model.eval()
    fault_point("validate")
    ll = report_log_likelihood(model, valid, k=cfg.valid_k, check=False)  # checked before the first step
    record["valid_log_likelihood"], record["valid_stderr"] = ll.mean, ll.stderr
    record.update(validation_metrics(model, estimator, valid, cfg.q_grad_std_repeats, cfg.batch_size, cfg.seed + epoch))
    result = st.result
    if result.best_valid is None or ll.mean > result.best_valid:
        result.best_valid, result.best_epoch, st.since_best = ll.mean, epoch + 1, 0
        return True
    st.since_best += 1
    return False


def _stop(cfg: TrainConfig, valid: Tensor | None, st: TrainState, record: dict) -> str:
    """Why the run stops after this epoch: ``"early"`` (``patience`` validations without
    improvement), ``"time"`` (``max_seconds`` spent), or ``"epochs"`` (it does not stop early)."""
    if cfg.patience is not None and valid is not None and st.since_best >= cfg.patience:
        return "early"
    if cfg.max_seconds is not None and record["time"] >= cfg.max_seconds:
        return "time"
    return st.result.stopped


def _show_rate(bar, estimator, batch: int, shown: dict) -> None:
    """Show ``shown`` (the last epoch's figures) and particles per second (steps/s × K × this rank's
    batch) on the progress bar: the unit of work of a per-particle program model, whose step's cost
    grows with K·B."""
    rate = None if bar.disable else bar.format_dict.get("rate")
    k = getattr(estimator, "k", None)
    if rate and isinstance(k, int):
        shown["particles/s"] = f"{rate * k * batch:.0f}"
    if shown and not bar.disable:
        bar.set_postfix(shown)
