"""Checkpoints: what the trainer saves after each epoch (and every ``checkpoint_every`` steps), and
resuming from it exactly.

Randomness is reproducible: the data order of epoch e comes from a generator seeded by (seed, e),
and the global torch RNG state (CPU, and CUDA when the model is there; every rank's, under
torchrun) is saved with every checkpoint, so a resumed run carries on exactly where the stopped
one left off.  Checkpoints are read as data (:func:`wakesleep.runs.load_checkpoint`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from wakesleep.io import atomic_torch_save
from wakesleep.models import contract
from wakesleep.runs import BEST, BEST_FORMAT, CHECKPOINT_FORMAT, CheckpointError, load_best, load_checkpoint, load_model_state
from wakesleep.training import distributed
from wakesleep.training.settings import FitResult, TrainConfig


@dataclass
class TrainState:
    """Where a run stands: what a checkpoint keeps beside the parameters, optimiser and RNG states."""

    result: FitResult = field(default_factory=FitResult)
    epoch: int = 0  # full epochs done
    batch: int = 0  # steps done of the next epoch
    since_best: int = 0  # validations without improvement
    elapsed: float = 0.0  # seconds on the run's clock before this call
    sums: dict[str, Tensor] = field(default_factory=dict)  # running sums of the epoch's metrics (kept in mid-epoch checkpoints)
    count: int = 0  # steps in ``sums``
    source: dict | None = None  # a stream's state (:meth:`wakesleep.training.stream.Source.state`) from the checkpoint

    def start_clock(self, clock: str) -> None:
        """Start the run's clock (``"wall"`` or ``"process"``: :class:`TrainConfig`'s ``clock``) at ``elapsed``."""
        self.now = time.perf_counter if clock == "wall" else time.process_time
        self.t0 = self.now() - self.elapsed

    def seconds(self) -> float:
        """Seconds on the run's clock, this call and those before it."""
        return self.now() - self.t0

    def add(self, metrics: dict[str, Tensor]) -> None:
        """Count a step and add its metrics to the epoch's sums (on the device: no synchronisation per step)."""
        self.count += 1
        for key, v in metrics.items():
            v = v.detach().to(torch.float64)
            self.sums[key] = self.sums[key] + v if key in self.sums else v


def save_checkpoint(
    path: Path,
    model,
    estimator,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    st: TrainState,
    epoch_done: int,
    batch: int,
    finished: bool,
    source=None,
) -> None:
    """Checkpoint: ``epoch_done`` full epochs plus ``batch`` steps of the next one.  Called on
    every rank (the RNG states, and a stream's states, are gathered), written by rank 0.
    ``source``: the :class:`~wakesleep.training.stream.Source` of a streamed run, or None."""
    rank, world_size = distributed.world()
    rng = _rng_states(contract.device_dtype(model)[0])
    stream = source.state() if source is not None else None
    # Every rank's RNG state, stream state and partial metric sums, for an exact resume.
    mine = {"rng": rng, "sums": {k: float(v) for k, v in st.sums.items()}, "source": stream}
    ranks = distributed.gather_object(mine) if world_size > 1 else None
    if rank != 0:
        return
    result = st.result
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
            "source": stream,
            "ranks": ranks,
            "world_size": world_size,
            "epoch": epoch_done,
            "batch": batch,
            "sums": {k: float(v) for k, v in st.sums.items()},
            "count": st.count,
            "since_best": st.since_best,
            "seconds": st.seconds(),
            "history": result.history,
            "best_valid": result.best_valid,
            "best_epoch": result.best_epoch,
            "skipped_steps": result.skipped_steps,
            "train_config": asdict(cfg),
            "finished": finished,
            "stopped": result.stopped,
        },
        path,
    )


def save_best(model, run: Path, epoch: int) -> None:
    """Write the model's parameters to ``run/best.pt`` (the best validation epoch's, or the last)."""
    atomic_torch_save({"format": BEST_FORMAT, "model": model.state_dict(), "epoch": epoch}, run / BEST)


def resume_from(path: Path, model, estimator, opt: torch.optim.Optimizer, cfg: TrainConfig) -> tuple[TrainState, bool]:
    """Load the checkpoint at ``path`` into ``model``, ``estimator``, ``opt`` (with ``cfg``'s
    learning rates) and this rank's RNG state.  Rank 0 reads the file and sends it (or the error)
    to the others: no shared disk needed.

    Returns:
        ``(state, ended)``: where the run stands, and whether a run with settings ``cfg`` ends
        there (:func:`ends_at`; ``state.result`` then says how it stopped).

    Raises:
        CheckpointError: a missing or damaged checkpoint, or one written for another model.
    """
    rank, world_size = distributed.world()
    device = contract.device_dtype(model)[0]
    ckpt = distributed.broadcast_object(_read_checkpoint_or_error(path) if rank == 0 else None)
    if ckpt.get("model_config") != getattr(model, "config", None):
        raise CheckpointError(
            f"{path} was written for model {ckpt.get('model_config')}, not {getattr(model, 'config', None)}; "
            "use the same model settings, or a new run directory"
        )
    load_model_state(model, ckpt.get("model"), path)
    load_model_state(estimator, ckpt.get("estimator"), path, "estimator")
    try:
        opt.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"the optimiser state in {path} does not fit this model ({str(e).splitlines()[0]})") from None
    # The learning rates are settings a resumed run may change: this config's, not the saved ones.
    lrs = {"p": cfg.lr_p, "q": cfg.lr_q, "estimator": cfg.lr_estimator}
    for group in opt.param_groups:
        group["lr"] = lrs.get(group.get("name"), group["lr"])
    _set_rng_states(ckpt, rank, world_size, device)
    st = TrainState(
        epoch=ckpt["epoch"], since_best=ckpt["since_best"], elapsed=ckpt["seconds"], batch=ckpt.get("batch", 0), count=ckpt.get("count", 0)
    )
    ranks = ckpt.get("ranks") or []
    mine = ranks[rank] if world_size > 1 and len(ranks) == world_size else ckpt  # this rank's running sums and stream
    st.sums = {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in mine.get("sums", {}).items()}
    st.source = mine.get("source")
    result = st.result
    result.history, result.best_valid, result.best_epoch = ckpt["history"], ckpt["best_valid"], ckpt["best_epoch"]
    result.skipped_steps = ckpt.get("skipped_steps", 0)
    ended = ends_at(ckpt, cfg)
    if ended:
        result.stopped, result.seconds = (ckpt.get("stopped") or "epochs") if ckpt.get("finished") else "epochs", st.elapsed
    return st, ended


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


def restore_best(model, run: Path | None, best_state: dict | None) -> None:
    """Load the best parameters into the model on every rank: rank 0's, from ``run/best.pt``, or
    from ``best_state`` (kept in memory) without a run directory."""
    if distributed.is_main():
        if run is not None and (run / BEST).is_file():
            load_model_state(model, load_best(run / BEST), run / BEST)
        elif run is None and best_state is not None:
            model.load_state_dict(best_state)
    distributed.broadcast_state([model])
