"""Data-parallel training on PyTorch's own engine (``torch.distributed``, launched by ``torchrun``).

The same ``wakesleep train`` command runs on N processes::

    torchrun --nproc-per-node 2 -m wakesleep train --dataset binarized-mnist ...       # one machine
    torchrun --nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
             --nproc-per-node 4 -m wakesleep train ...                                   # each machine

What each process does (see :func:`wakesleep.training.train`):

- every rank holds the whole model; rank 0's parameters are broadcast at the start;
- each epoch's permutation of the training set (seeded by the run's seed and the epoch, so the
  same on every rank) is padded to a multiple of the world size and dealt out round-robin, as
  ``torch.utils.data.DistributedSampler`` does; each step a rank takes ``batch_size / world``
  of its shard, so ``batch_size`` stays the global batch and a run means the same thing on any
  number of processes;
- each rank draws its own particles and sleep samples: its global RNG is seeded from (seed, rank)
  at the start, and every rank's RNG state is saved in the checkpoint, so a resumed run with the
  same number of processes continues exactly;
- after ``backward()`` the gradients of the model and of the estimator are averaged over ranks by
  one all-reduce of a flat buffer (:func:`average_gradients`).  The estimators call model methods
  other than ``forward``, which ``DistributedDataParallel``'s hooks do not see; averaging
  explicitly is simpler and exact.  Since every loss is a mean over the batch and the shards
  are equal, the average is the gradient of the loss on the union of the shards;
- only rank 0 shows progress, validates, writes metrics and checkpoints and prints; its
  decisions (early stopping, time budget) are broadcast so that all ranks stop together.

Backends: ``gloo`` on CPU, ``nccl`` on CUDA (each process uses ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn


def launched_by_torchrun() -> bool:
    """True when the environment carries a torchrun world of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device | str = "cpu", timeout_s: float = 1800.0) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment.

    Uses ``nccl`` for CUDA devices and ``gloo`` otherwise.  On CUDA each process is given
    ``cuda:LOCAL_RANK``.  Does nothing (beyond resolving the device) when the group already exists.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (a bare ``"cuda"`` becomes ``cuda:LOCAL_RANK``).
        timeout_s: how long a collective waits for the other ranks, seconds.

    Returns:
        The device this process should use.

    Raises:
        RuntimeError: if the environment has no ``RANK``/``WORLD_SIZE`` (not started by torchrun).
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise RuntimeError("no RANK/WORLD_SIZE in the environment: start the processes with torchrun")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return device


def teardown(barrier: bool = False) -> None:
    """Leave the process group (if any).

    Args:
        barrier: first wait until every rank gets here, so that all ranks destroy the group
            together rather than one leaving while rank 0 still evaluates.  Use it on the normal
            path; leave it off when unwinding from an error, where a peer may never arrive.
    """
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a single process)."""
    return world()[0] == 0


def shard(order: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's share of a permutation: padded by wrapping to a multiple of ``world_size``,
    then every ``world_size``-th index from ``rank`` (``DistributedSampler``'s rule).  With one
    process it is ``order`` itself."""
    if world_size == 1:
        return order
    pad = (-order.numel()) % world_size
    if pad:
        order = torch.cat([order, order[:pad]])
    return order[rank::world_size]


def rank_seed(seed: int, rank: int) -> int:
    """The RNG seed of ``rank`` in a run seeded by ``seed``: distinct across ranks."""
    return (seed * 1_000_003 + rank * 104_729 + 1) % (2**63 - 1)


def seed_ranks(seed: int) -> None:
    """In a process group, seed this rank's global RNG from (``seed``, rank), so that each rank
    draws its own particles and sleep samples; with one process, leave the RNG as it is."""
    rank, size = world()
    if size > 1:
        torch.manual_seed(rank_seed(seed, rank))


def average_gradients(params: Sequence[nn.Parameter], loss: Tensor) -> Tensor:
    """All-reduce the mean over ranks of every gradient in ``params``, in place, in one collective.

    The buffer also carries, per parameter, whether it has a gradient (all ranks must agree) and
    the loss (so that every rank sees a non-finite loss on any rank, and all skip the same step).

    Args:
        params: the parameters the optimiser steps, in the same order on every rank.
        loss: this rank's scalar loss.

    Returns:
        The sum over ranks of the losses (a 0-dim tensor: non-finite if any rank's is).

    Raises:
        RuntimeError: if a parameter has a gradient on some ranks and not on others.
    """
    size = world()[1]
    have = [p.grad is not None for p in params]
    grads = [p.grad for p in params if p.grad is not None]
    like = grads[0] if grads else loss
    flat = torch.cat(
        [g.reshape(-1) for g in grads] + [torch.tensor(have, dtype=like.dtype, device=like.device), loss.detach().reshape(1).to(like.dtype)]
    )
    if size > 1:
        dist.all_reduce(flat)
    counts = flat[-1 - len(params) : -1]
    if size > 1 and not bool(((counts == 0) | (counts == size)).all()):
        raise RuntimeError("a parameter has a gradient on some ranks and not on others; the estimator must use the same parameters on every rank")
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g)).div_(size)
        offset += n
    return flat[-1]


def broadcast_state(modules: Iterable[nn.Module], src: int = 0) -> None:
    """Copy rank ``src``'s parameters and floating/integer buffers into every rank's modules."""
    if world()[1] == 1:
        return
    with torch.no_grad():
        for module in modules:
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src)


def broadcast_object(obj=None, src: int = 0):
    """Send a picklable object from rank ``src`` to all ranks and return it; an exception sent
    this way is raised on every rank (so that an error found on rank 0 stops them all)."""
    if world()[1] == 1:
        box = [obj]
    else:
        box = [obj if world()[0] == src else None]
        dist.broadcast_object_list(box, src)
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def gather_object(obj, dst: int = 0) -> list | None:
    """Every rank's ``obj``, as a list indexed by rank, on rank ``dst`` (``None`` elsewhere)."""
    rank, size = world()
    if size == 1:
        return [obj]
    out = [None] * size if rank == dst else None
    dist.gather_object(obj, out, dst)
    return out


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over ranks (``t`` itself with one process); does not modify ``t``."""
    if world()[1] == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t
