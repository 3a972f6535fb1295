"""Memoised wake-sleep (Hewitt, Le & Tenenbaum, UAI 2020, arXiv 2007.03132)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils import _pytree as pytree

from wakesleep.estimators.base import Estimator, EstimatorOutput, check_positive_int
from wakesleep.estimators.rws import Q_UPDATES, phi_loss
from wakesleep.estimators.ws import sleep_phase_loss
from wakesleep.importance import live_normalised_weights, mean_live_effective_sample_size
from wakesleep.models.contract import TRAINING_WITH_PROPOSAL


class LatentMemory(Estimator):
    """Base of the estimators that keep, for every training datapoint, a memory of at most M
    distinct latent values (memoised wake-sleep, and its hybrid form, which remembers the discrete
    part alone).

    The memory: buffers ``memory_filled`` [N, M] (bool) and ``memory_z{i}`` [N, M, …] (leaf i of the
    remembered latent, whose pytree is :meth:`memory_probe`'s), allocated by :meth:`prepare` (which
    :func:`wakesleep.train` calls with the training set before the first step and before loading a
    checkpoint) and indexed by the datapoint's row in the training set, which the trainer passes as
    ``index`` [B] (long) because ``needs_index`` is true.  Being buffers, they go into the checkpoint
    with the estimator's ``state_dict`` and come back on resume bit for bit; they cost N·M·(numbers
    per latent) of memory.  Under torchrun each rank updates the rows of its own minibatch, then the
    ranks exchange the updated rows (one all-gather per step), so every rank holds the same memory for
    every datapoint and rank 0's checkpoint holds all of it; a datapoint on two ranks in one step (the
    shard's padding) keeps the higher rank's update.

    A subclass sets ``memory_size`` and implements :meth:`memory_probe`; its ``forward`` merges
    proposals with :meth:`candidates`, picks with :func:`select_distinct_top` and writes with
    :meth:`remember`.
    """

    needs_index = True
    memory_size: int

    def memory_probe(self, model, x: Tensor):
        """One latent value to remember for x [1, D], leaves [1, 1, …]: the memory's shapes and dtypes."""
        raise NotImplementedError  # pragma: no cover - abstract

    def prepare(self, model, train_data: Tensor) -> None:
        """Allocate an empty memory for ``train_data`` [N, D] (rows = datapoints), shaped like one
        :meth:`memory_probe` of ``model``; drawn under a forked RNG, so the run's random stream is
        untouched.  A memory of the same shapes is kept (a second ``train`` call continues with it)."""
        device = train_data.device
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            z = self.memory_probe(model, train_data[:1])
        values, self._spec = pytree.tree_flatten(z)
        n, m = train_data.shape[0], self.memory_size
        wanted = {"memory_filled": ((n, m), torch.bool)}
        wanted.update({f"memory_z{i}": ((n, m, *v.shape[2:]), v.dtype) for i, v in enumerate(values)})
        for name, (shape, dtype) in wanted.items():
            old = getattr(self, name, None)
            if old is None or old.shape != shape or old.dtype != dtype:
                self.register_buffer(name, torch.zeros(shape, dtype=dtype, device=device))

    def _memory(self, index: Tensor) -> tuple[list[Tensor], Tensor]:
        """The held values of datapoints ``index`` [B]: leaves [M, B, …] and ``filled`` [M, B]."""
        if getattr(self, "_spec", None) is None or getattr(self, "memory_filled", None) is None:
            raise ValueError(f"{type(self).__name__} has no memory yet: call prepare(model, train_data) first (wakesleep.train does)")
        return [getattr(self, f"memory_z{i}")[index].transpose(0, 1) for i in range(self._spec.num_leaves)], self.memory_filled[index].T

    def candidates(self, values: list[Tensor], index: Tensor | None, b: int) -> tuple[list[Tensor], Tensor]:
        """The memory of datapoints ``index`` [B] followed by this step's proposals (leaves [R, B, …]):
        leaves [M + R, B, …] and ``filled`` [M + R, B]; without ``index``, the proposals alone."""
        device = values[0].device
        if index is None:
            return values, torch.ones(values[0].shape[0], b, dtype=torch.bool, device=device)
        held, held_filled = self._memory(index)
        # Memory first (a repeat keeps the held copy); an empty slot shows the first proposal, a
        # value in the latents' support, so that the model scores it without complaint (it is masked).
        values = [torch.cat([torch.where(_against(~held_filled, h), v[:1], h.to(v.dtype)), v]) for h, v in zip(held, values)]
        return values, torch.cat([held_filled, torch.ones(values[0].shape[0] - held_filled.shape[0], b, dtype=torch.bool, device=device)])

    @torch.no_grad()
    def remember(self, index: Tensor, kept: list[Tensor], keep: Tensor) -> None:
        """Write the new memory of datapoints ``index`` [B] (leaves [M', B, …], ``keep`` [M', B];
        M' < M only without enough candidates, the rest stays empty), then share it across ranks."""
        m = keep.shape[0]
        self.memory_filled[index] = False
        self.memory_filled[index, :m] = keep.T
        for i, v in enumerate(kept):
            getattr(self, f"memory_z{i}")[index, :m] = v.transpose(0, 1).to(getattr(self, f"memory_z{i}").dtype)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self._share_rows(index)

    def _share_rows(self, index: Tensor) -> None:
        """All-gather every rank's updated rows (equal batch sizes: the trainer's shards are padded)
        and write them into this rank's memory, in rank order."""
        size = dist.get_world_size()
        indices = [torch.empty_like(index) for _ in range(size)]
        dist.all_gather(indices, index)
        everywhere = torch.cat(indices)
        # A row sent by two ranks (the shards' padding) is written once, from the higher rank: a
        # scatter with repeated indices picks an arbitrary one on CUDA, and the ranks must agree.
        unique, inverse = torch.unique(everywhere, return_inverse=True)
        positions = torch.arange(everywhere.numel(), device=everywhere.device)
        last = torch.full_like(unique, -1).scatter_reduce(0, inverse, positions, "amax")
        for name, buf in self.named_buffers():
            if name.startswith("memory_"):
                rows = buf[index].to(torch.uint8) if buf.dtype == torch.bool else buf[index]  # gloo has no bool
                gathered = [torch.empty_like(rows) for _ in range(size)]
                dist.all_gather(gathered, rows.contiguous())
                buf[everywhere[last]] = torch.cat(gathered)[last].to(buf.dtype)


class MemoisedWakeSleep(LatentMemory):
    r"""Memoised wake-sleep: a memory of the M best latent values found so far for every training
    datapoint, θ learned on the memory, q on the memory and on sleep samples.

    For datapoint n with memory Q_n (at most M distinct z), each step draws z_1..z_K ~ q_φ(z | x_n)
    (detached), merges them into Q_n and keeps the M distinct values of highest log p_θ(x_n, z)
    (scored with the current θ); then, with ŵ(z) = p_θ(x_n, z) / Σ_{z'∈Q_n} p_θ(x_n, z') (detached):

    - θ ascends Σ_{z∈Q_n} ŵ(z) ∇θ log p_θ(x_n, z)  (= ∇θ log Σ_{z∈Q_n} p_θ(x_n, z), the gradient of a
      lower bound on log p_θ(x_n); equal to ∇θ log p_θ(x_n) when Q_n holds every z of non-zero mass);
    - memory-φ (``"wake"``): ascend Σ_{z∈Q_n} ŵ(z) ∇φ log q_φ(z | x_n)  (−∇φ KL(ŵ ‖ q_φ), the
      memory's posterior as q's target);
    - sleep-φ (``"sleep"``): ascend ∇φ log q_φ(z̃ | x̃), (z̃, x̃) ~ p_θ;
      ``q_update="both"`` (the paper's choice) averages the two.

    "Distinct": a proposal equal (every element of every leaf) to a value already held, or to an
    earlier proposal, is not held twice; states with p_θ(x, z) = 0 are never kept.  z is any pytree
    of tensors [K, B, …] (:mod:`wakesleep.models.contract`).  Losses are means over the batch.
    Source: Hewitt, Le & Tenenbaum (2020), their code tuananhle7/mws; ``../shared/reference/ALGORITHMS.md`` §8.

    The memory (:class:`LatentMemory`): buffers ``memory_filled`` [N, M] and ``memory_z{i}`` [N, M, …]
    (leaf i of z), allocated by :meth:`prepare`, indexed by the training rows ``index`` [B] that the
    trainer passes, saved in checkpoints and restored bit for bit, shared across torchrun's ranks by
    one all-gather per step.

    Without ``index`` (a direct call, ``wakesleep diagnose``) there is no memory to read: the
    memory of that call is the top M distinct values of its own K proposals, and nothing is kept.

    Args:
        k: proposals from q per datapoint per step (≥ 1).
        memory_size: M, latent values kept per datapoint (≥ 1).
        q_update: ``"wake"`` (from the memory), ``"sleep"`` or ``"both"``.
        sleep_batch: sleep samples per step (default: the data batch size).

    Raises:
        ValueError: for k or memory_size < 1, an unknown q_update, or a call with ``index`` before
            :meth:`prepare`.

    Metrics: ``objective`` = mean_b log Σ_{z∈Q_b} p_θ(x_b, z) (nats per datapoint; a lower bound on
    log p_θ(x)), ``ess`` = mean effective sample size of ŵ, ``memory_filled`` = mean number of
    values held, ``dead_datapoints`` (no value of non-zero mass found yet: no gradient).
    """

    name = "mws"

    def __init__(self, k: int = 5, memory_size: int = 10, q_update: str = "both", sleep_batch: int | None = None):
        super().__init__()
        self.k = check_positive_int("k (proposals)", k)
        self.memory_size = check_positive_int("memory_size (M)", memory_size)
        if q_update not in Q_UPDATES:
            raise ValueError(f"q_update must be one of {Q_UPDATES} (wake: from the memory), got {q_update!r}")
        self.q_update = q_update
        self.sleep_batch = None if sleep_batch is None else check_positive_int("sleep_batch", sleep_batch)
        self._spec = None  # the latents' pytree structure, known after prepare

    def settings(self) -> dict:
        return {"k": self.k, "memory_size": self.memory_size, "q_update": self.q_update, "sleep_batch": self.sleep_batch}

    def requires(self, model) -> tuple[str, ...]:
        """``propose``, ``log_joint``, ``log_proposal``, both parameter groups; ``sample`` unless q_update="wake"."""
        return TRAINING_WITH_PROPOSAL + ("log_proposal",) + (() if self.q_update == "wake" else ("sample",))

    def memory_probe(self, model, x: Tensor):
        """One proposal of ``model`` for x [1, D]: MWS remembers whole latents."""
        return model.propose(x, 1)[0]

    def forward(self, model, x: Tensor, index: Tensor | None = None) -> EstimatorOutput:
        proposals, _ = model.propose(x, self.k)  # [K, B, …], detached
        values, spec = pytree.tree_flatten(proposals)
        values, filled = self.candidates(values, index, x.shape[0])  # [M + K, B, …], [M + K, B]
        log_p = model.log_joint(x, pytree.tree_unflatten(values, spec))  # [M + K, B], ∇θ
        with torch.no_grad():
            keep, top = select_distinct_top(values, filled, log_p.detach(), self.memory_size)  # [M', B] each
        cols = torch.arange(x.shape[0], device=x.device)
        kept = [v[top, cols] for v in values]  # [M', B, …]
        log_p = log_p[top, cols]
        log_p_memory = log_p.detach().masked_fill(~keep, -torch.inf)  # [M', B]: empty slots weigh nothing
        w, dead = live_normalised_weights(log_p_memory)  # ŵ over the memory
        live = w != 0
        loss = -torch.where(live, w * log_p, 0.0).sum(0).mean()
        z = pytree.tree_unflatten(kept, spec)
        wake_phi = -torch.where(live, w * model.log_proposal(x, z), 0.0).sum(0).mean() if self.q_update != "sleep" else None
        sleep_phi = sleep_phase_loss(model, self.sleep_batch or x.shape[0]) if self.q_update != "wake" else None
        loss = loss + phi_loss(self.q_update, wake_phi, sleep_phi)
        if index is not None:
            self.remember(index, kept, keep)
        with torch.no_grad():
            objective = torch.logsumexp(log_p_memory, 0).mean()
            ess, n_dead = mean_live_effective_sample_size(w, dead)
        metrics = {"objective": objective, "ess": ess, "memory_filled": keep.sum(0).to(log_p.dtype).mean(), "dead_datapoints": n_dead}
        return EstimatorOutput(loss, metrics)


def _against(mask: Tensor, leaf: Tensor) -> Tensor:
    """``mask`` [S, B] viewed to broadcast against a latent leaf [S, B, …]."""
    return mask.view(*mask.shape, *[1] * (leaf.dim() - 2))


def select_distinct_top(values: list[Tensor], filled: Tensor, log_p: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """The M candidates of highest log p per datapoint, each value once.

    Args:
        values: the candidates' leaves [C, B, …] (C = held values then proposals).
        filled: [C, B] bool, which candidates exist (an empty memory slot does not).
        log_p: [C, B] log p(x, z) of the candidates, nats.
        m: how many to keep (at most C).

    Returns:
        ``(keep, top)``: [min(m, C), B] each: whether the chosen slot holds a value (a real,
        first-seen candidate with log p > −inf; NaN scores never win), and the chosen candidates'
        positions in C.
    """
    c, b = log_p.shape
    same = torch.ones(c, c, b, dtype=torch.bool, device=log_p.device)
    for v in values:
        flat = v.reshape(c, b, -1)
        same &= (flat[:, None] == flat[None, :]).all(-1)  # [C, C, B]: candidate i equals candidate j
    earlier = torch.ones(c, c, dtype=torch.bool, device=log_p.device).triu(1)[..., None]  # i < j
    repeat = (same & earlier & filled[:, None]).any(0)  # j equals an earlier real candidate
    score = log_p.masked_fill(repeat | ~filled | log_p.isnan(), -torch.inf)
    best, top = score.topk(min(m, c), dim=0)
    return best > -torch.inf, top
