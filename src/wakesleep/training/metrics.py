"""Each epoch's record (the means of the step metrics over every rank's steps) and where it goes:
``metrics.jsonl`` in the run directory and, with ``TrainConfig(tensorboard=True)``, TensorBoard
scalars beside it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from wakesleep.io import write_jsonl
from wakesleep.runs import METRICS
from wakesleep.training import distributed


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
