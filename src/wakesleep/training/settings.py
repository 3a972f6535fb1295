"""What :func:`~wakesleep.training.train` takes and returns: :class:`TrainConfig` and :class:`FitResult`."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field, fields
from typing import Any

# Seeds are derived from (seed, epoch) and (seed, rank) by multiplying by about 10**6: this bound
# keeps every derived seed within the 64 bits torch's generators take.
MAX_SEED = 2**32 - 1


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
        compile: ``torch.compile`` the training step (:func:`~wakesleep.training.step.compile_estimator`) and the
            Bernoulli log-density kernels used by validation and evaluation
            (:func:`wakesleep.fused.use_compiled_kernels`, which stay switched on for the rest
            of the process).  Needs a C++ compiler; falls back to eager with a warning; the same
            draws and results up to float rounding.
        tensorboard: also write each epoch's metrics as TensorBoard scalars into the run directory,
            beside ``metrics.jsonl`` (needs a run directory and the optional package
            ``tensorboard``: ``pip install tensorboard``).
        steps_per_epoch: for training data that streams (a callable ``sample(n, generator)`` or an
            iterable of batches; :mod:`~wakesleep.training.stream`), the steps of one "epoch": the
            run records its metrics, validates (every ``valid_every`` such blocks) and checkpoints
            after each, and ``epochs`` counts them (None: 100).  Must be None for a fixed training
            set, whose epoch is one pass.
        q_grad_std_repeats: at each validation, also record ``valid_q_grad_std``, the standard
            deviation of the estimator's φ-gradient over this many (≥ 2) repeated estimates on the
            first ``batch_size`` validation points (:func:`~wakesleep.training.metrics.gradient_std`;
            Le et al. 2019).  None: not measured.
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
    tensorboard: bool = False
    q_grad_std_repeats: int | None = None
    steps_per_epoch: int | None = None

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
        for name in ("patience", "checkpoint_every", "q_grad_std_repeats", "steps_per_epoch"):
            count(name, optional=True)
        if self.q_grad_std_repeats == 1:
            raise ValueError("q_grad_std_repeats must be >= 2 (a standard deviation needs two estimates) or None, got 1")
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
        if not isinstance(self.tensorboard, bool):
            raise ValueError(f"tensorboard must be True or False, got {self.tensorboard!r}")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("tensorboard=True (--tensorboard) needs the optional package tensorboard: pip install tensorboard")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown trainer settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class FitResult:
    """What :func:`~wakesleep.training.train` returns: the per-epoch history and how the run ended."""

    history: list[dict] = field(default_factory=list)
    best_valid: float | None = None
    best_epoch: int | None = None
    stopped: str = "epochs"
    skipped_steps: int = 0
    seconds: float = 0.0
