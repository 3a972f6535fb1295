"""Each epoch's record (the means of the step metrics over every rank's steps, and what validation
measures beyond the log-likelihood) and where it goes: ``metrics.jsonl`` in the run directory and,
with ``TrainConfig(tensorboard=True)``, TensorBoard scalars beside it."""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from wakesleep.io import write_jsonl
from wakesleep.models.contract import ModelShapeError, device_dtype
from wakesleep.runs import METRICS
from wakesleep.training import distributed

#: Keys of the validation record that a model's own ``metrics`` may not take (after the ``valid_`` prefix).
RESERVED = ("valid_log_likelihood", "valid_stderr", "valid_q_grad_std")


def epoch_means(sums: dict[str, Tensor], count: int, device: torch.device) -> dict[str, float]:
    """``train_NAME``: the mean of each step metric over the epoch's steps (every rank's, in a
    process group; one all-reduce)."""
    if distributed.world()[1] > 1:  # means over every rank's steps
        keys = sorted(sums)
        total = distributed.all_reduce_sum(torch.stack([sums[k] for k in keys] + [torch.tensor(float(count), dtype=torch.float64, device=device)]))
        return {f"train_{k}": float(v) / max(float(total[-1]), 1.0) for k, v in zip(keys, total[:-1])}
    return {f"train_{k}": float(v) / max(count, 1) for k, v in sums.items()}


class MetricsLog:
    """The run's history on disk: ``run/metrics.jsonl`` (rewritten atomically, whole, after each
    epoch) and, with ``tensorboard``, the same numbers as TensorBoard scalars in ``run`` (tag: the
    record's key, step: the epoch).  With ``run`` None (no run directory, or not rank 0) it writes
    nothing.

    A resumed run's first write hides (``purge_step``) the events that earlier writers left, and
    writes the history again: TensorBoard shows what ``metrics.jsonl`` holds, an overwritten or
    interrupted run's records included only where they were kept.
    """

    def __init__(self, run: Path | None, tensorboard: bool = False):
        self.run, self.tensorboard, self.writer = run, tensorboard, None

    def write(self, history: list[dict]) -> None:
        """Write ``history`` (every epoch's record so far)."""
        if self.run is None:
            return
        write_jsonl(self.run / METRICS, history)
        if not self.tensorboard:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter  # the optional dependency, only when asked for

            self.writer = SummaryWriter(log_dir=str(self.run), purge_step=1)
            new = history
        else:
            new = history[-1:]
        for record in new:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, global_step=record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def gradient_std(loss: Callable[[], Tensor], params: Sequence[nn.Parameter], repeats: int) -> float:
    """The standard deviation of a stochastic gradient, averaged over parameter elements.

    Draws ``repeats`` (R ≥ 2) independent estimates g_r = ∇ ``loss()`` with respect to ``params``
    (P elements in all; a parameter the loss does not reach counts as zeros) and returns
    (1/P) Σ_p sd_r(g_rp), with the unbiased (R − 1) sample standard deviation per element.  This is
    the "standard deviation of the gradient estimator" of Le et al. (2019, *Revisiting reweighted
    wake-sleep*, their ``gmm/`` code: ``OnlineMeanStd``, which divides by R instead).  Does not touch
    the parameters' ``.grad``.

    Raises:
        ValueError: ``repeats`` < 2 or no parameters.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ValueError(f"repeats must be an integer >= 2 (a standard deviation needs two estimates), got {repeats!r}")
    params = list(params)
    if not params:
        raise ValueError("gradient_std: no parameters")
    grads = []
    for _ in range(repeats):
        g = torch.autograd.grad(loss(), params, allow_unused=True)
        grads.append(torch.cat([(torch.zeros_like(p) if gi is None else gi).reshape(-1) for p, gi in zip(params, g)]))
    return torch.stack(grads).double().std(0).mean().item()


def validation_metrics(model, estimator, valid: Tensor, q_grad_std_repeats: int | None, batch_size: int, seed: int) -> dict[str, float]:
    """What validation records beside the log-likelihood: ``valid_NAME`` for each entry of the
    model's optional ``metrics(valid) -> dict[str, float]`` (:mod:`wakesleep.models.contract`), and
    with ``q_grad_std_repeats`` = R, ``valid_q_grad_std``: :func:`gradient_std` of the estimator's
    loss with respect to φ (``q_parameters()``) on the fixed batch ``valid[:batch_size]``.

    The repeats draw from a generator seeded by ``seed`` (the training's random state is saved and
    restored: training goes the same with or without the measurement) on a copy of the estimator
    (running baselines are left as they were).

    Raises:
        wakesleep.models.ModelShapeError: ``metrics`` returned something other than a mapping of
            names to real numbers, or a name that validation records itself.
    """
    out: dict[str, float] = {}
    if callable(getattr(model, "metrics", None)):
        with torch.no_grad():
            values = model.metrics(valid)
        if not isinstance(values, dict) or not all(
            isinstance(k, str) and (isinstance(v, numbers.Real) or (isinstance(v, Tensor) and v.numel() == 1)) for k, v in values.items()
        ):
            raise ModelShapeError(f"{type(model).__name__}.metrics(x) must return a dict of names to numbers, got {values!r}")
        for k, v in values.items():
            if f"valid_{k}" in RESERVED:
                raise ModelShapeError(f"{type(model).__name__}.metrics(x) returned {k!r}, a name validation records itself; rename it")
            out[f"valid_{k}"] = float(v.detach()) if isinstance(v, Tensor) else float(v)
    if q_grad_std_repeats:
        device = device_dtype(model)[0]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            est, x = copy.deepcopy(estimator), valid[:batch_size]
            out["valid_q_grad_std"] = gradient_std(lambda: est(model, x).loss, model.q_parameters(), q_grad_std_repeats)
    return out
