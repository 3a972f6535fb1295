"""Data that streams: a source of fresh batches for :func:`wakesleep.train` in place of a fixed
training set, so that a model learns from a simulator or from data drawn afresh at every step.

A source is either

- a callable ``sample(n, generator) -> x``: n fresh datapoints [n, D] drawn with the
  ``torch.Generator`` it is handed (a simulator, a data-generating process); the trainer owns the
  generator (seeded from the run's seed and the process's rank), saves its state in every
  checkpoint and restores it on resume, so a streamed run and its resume are bit-exact; or
- an iterable of batches [B, D] (a ``torch.utils.data.DataLoader``, a generator): each step takes
  the next batch, starting a new pass when one ends.  A checkpoint keeps how many passes and
  batches were taken, and, for a ``DataLoader`` with a ``generator=``, that generator's state at
  the pass's start; a resume starts the pass again from there and skips the batches taken, which
  is bit-exact when the iterable is deterministic given that state (a ``DataLoader`` shuffled by
  its own ``generator=``, a list; not one shuffled by torch's global generator).

Without a fixed training set there are no epochs: the trainer counts steps in blocks of
``TrainConfig.steps_per_epoch`` (the "epoch" of a stream), and records, validates and
checkpoints after each block.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wakesleep.fused import first_line
from wakesleep.models.loading import load_factory

#: Seeds of the stream's generator are derived from (seed, rank) apart from the data order's.
_STREAM_SALT = 7919
#: Datapoints of the validation and test sets a command-line stream draws once (``--data-from``).
HELD_OUT = 1000


def is_stream(data) -> bool:
    """Whether ``data`` is a source of fresh batches (a callable, or an iterable that is not an
    array or tensor) rather than a fixed training set."""
    if isinstance(data, (Tensor, np.ndarray, list, tuple)):
        return False
    return callable(data) or isinstance(data, Iterable)


def is_sampler(data) -> bool:
    """Whether a source is a callable ``sample(n, generator)`` rather than an iterable of batches."""
    return callable(data) and not isinstance(data, Iterable)


class Source:
    """Fresh batches from a callable ``sample(n, generator)`` or an iterable (the module docstring),
    each checked by ``check`` (the data checks) and moved to the model's device and dtype by ``to``.

    Args:
        data: the callable or iterable.
        seed: the run's seed (the callable's generator is seeded from it and ``rank``).
        rank: this process's rank (each draws its own batches).
        prepare: ``x -> x``: checks a batch and moves it to the model's device and dtype.
    """

    def __init__(self, data, seed: int, rank: int, prepare, world_size: int = 1):
        self.data, self.prepare = data, prepare
        self.sampler = is_sampler(data)
        if not self.sampler and isinstance(data, Iterator):
            raise ValueError(
                f"the training data is a one-shot iterator ({type(data).__name__}): its first batch would go to the checks and "
                "a second pass (or a resume) would find it empty; pass a re-iterable (a DataLoader, a list of batches) or a "
                "callable sample(n, generator)"
            )
        sampler = getattr(data, "sampler", None)
        if not self.sampler and world_size > 1 and not isinstance(sampler, torch.utils.data.DistributedSampler):
            raise ValueError(
                f"under torchrun ({world_size} processes) every process would read the same batches from this iterable: pass a "
                "DataLoader with a torch.utils.data.DistributedSampler, or a callable sample(n, generator) (each process draws its own)"
            )
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + _STREAM_SALT + rank)
        self.passes, self.batches = 0, 0  # an iterable's progress
        self._warned = False  # whether the sampler was seen not to use its generator
        self.rows: int | None = None  # an iterable's batch size, seen by probe
        self._iter = None
        self._pass_start: Tensor | None = None

    def _loader_generator(self) -> torch.Generator | None:
        return getattr(self.data, "generator", None)

    def probe(self, n: int) -> Tensor:
        """A batch of up to ``n`` datapoints for the checks before the first step, drawn without moving
        the stream: from a copy of the generator, or the first batch of a fresh pass (under forked
        random states)."""
        if self.sampler:
            gen = torch.Generator().set_state(self.generator.get_state())
            return self.prepare(self._call(n, gen))
        with torch.random.fork_rng(devices=[]):
            gen = self._loader_generator()
            state = gen.get_state() if gen is not None else None
            try:
                x = next(iter(self.data))
            except StopIteration:
                raise ValueError("the training data iterable is empty: it must yield batches [B, D]") from None
            finally:
                if state is not None:
                    gen.set_state(state)
        x = self.prepare(_batch(x))
        self.rows = x.shape[0]
        return x[:n]

    def _call(self, n: int, gen: torch.Generator) -> Tensor:
        """``sample(n, gen)`` as a tensor [n, D]; warns once when the sampler did not draw from ``gen``
        (its draws would then come from a random state that checkpoints do not hold; a deterministic
        sampler is fine).

        Raises:
            ValueError: a value not [n, D].
        """
        before = None if self._warned else gen.get_state()
        x = torch.as_tensor(self.data(n, gen))
        if x.ndim != 2 or x.shape[0] != n:
            raise ValueError(f"the data source's sample({n}, generator) returned shape {tuple(x.shape)}; it must return [n, D] = [{n}, D]")
        if before is not None and torch.equal(gen.get_state(), before):
            self._warned = True
            warnings.warn(
                f"the data source's sample({n}, generator) did not draw from the generator it was handed: if it draws random "
                "numbers elsewhere, a resumed run will not see the same data; draw with it (torch.rand(..., generator=generator))",
                stacklevel=2,
            )
        return x

    def next(self, n: int) -> Tensor:
        """The next batch on the model's device: n fresh datapoints [n, D] from the callable, or the
        iterable's next batch [B, D] (n is not used: the iterable's batch size holds)."""
        if self.sampler:
            return self.prepare(self._call(n, self.generator))
        if self._iter is None:
            gen = self._loader_generator()
            self._pass_start = gen.get_state() if gen is not None else None
            self._iter = iter(self.data)
        try:
            x = next(self._iter)
        except StopIteration:
            if self.batches == 0:
                raise ValueError("the training data iterable yielded no batches: it must yield batches [B, D]") from None
            self.passes, self.batches, self._iter = self.passes + 1, 0, None
            return self.next(n)
        self.batches += 1
        return self.prepare(_batch(x))

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the generator's state, or the iterable's progress."""
        return {
            "generator": self.generator.get_state(),
            "passes": self.passes,
            "batches": self.batches,
            "pass_start": self._pass_start,
        }

    def load(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's :meth:`state`: the generator restored, or the iterable's pass
        started again (its ``DataLoader`` generator set back to the pass's start) and the batches
        taken skipped."""
        self.generator.set_state(state["generator"])
        self.passes, self.batches, self._iter = state["passes"], 0, None
        if self.sampler or state["batches"] == 0:
            return
        gen = self._loader_generator()
        if gen is not None and state.get("pass_start") is not None:
            gen.set_state(state["pass_start"])
        self._pass_start = state.get("pass_start")
        self._iter = iter(self.data)
        for _ in range(state["batches"]):
            next(self._iter)
        self.batches = state["batches"]


def _batch(x) -> Tensor:
    """A batch from an iterable: a tensor, or the first item of a (x, label) pair as a DataLoader over
    a ``TensorDataset`` yields."""
    if isinstance(x, (list, tuple)):
        x = x[0]
    return torch.as_tensor(x)


@dataclass
class StreamData:
    """The data of a run that streams (``--data-from FILE.py:FACTORY``, compare's ``data_from``), shaped
    like :class:`wakesleep.data.Dataset`: ``train`` is the source (a callable or an iterable),
    ``valid`` and ``test`` fixed [N, D] float32 sets drawn from it once, ``probe`` the training
    stream's first few datapoints (for checks, pictures and the data's fingerprint)."""

    name: str
    train: Any
    valid: Tensor
    test: Tensor
    probe: Tensor
    image_shape: tuple[int, int] | None = None

    @property
    def dim(self) -> int:
        return self.valid.shape[1]

    @property
    def binary(self) -> bool:
        return bool(((self.valid == 0) | (self.valid == 1)).all())


def stream_dataset(spec: str, seed: int, held_out: int = HELD_OUT) -> StreamData:
    """The source named by ``spec`` (``FILE.py:FACTORY`` or ``package.module:FACTORY``; ``FACTORY()``
    returns a callable ``sample(n, generator)`` or an iterable of batches), with validation and test
    sets of ``held_out`` datapoints each: drawn by the callable with generators seeded from ``seed``
    (apart from the training stream's), or the first rows of one pass of the iterable (which, for a
    loader over a fixed set, the training batches then also visit).

    Raises:
        wakesleep.models.loading.ModelSpecError: a factory that does not load.
        ValueError: a factory that returns no source, or a source whose draws are not [n, D].
    """
    fn = load_factory(spec)
    try:
        data = fn()
    except Exception as e:
        raise ValueError(f"--data-from {spec!r}: the factory raised {first_line(e)}") from e
    if not is_stream(data):
        raise ValueError(
            f"--data-from {spec!r}: the factory returned a {type(data).__name__}; return a function sample(n, generator) -> x [n, D] or an iterable of batches"
        )
    name = spec.rpartition(":")[2]
    if is_sampler(data):
        source = Source(data, seed, 0, lambda x: x.to(torch.float32))
        held = [source._call(held_out, torch.Generator().manual_seed(seed * 1_000_003 + salt)).to(torch.float32) for salt in (1, 2)]
        return StreamData(name, data, held[0], held[1], source.probe(8))
    rows, gen = [], getattr(data, "generator", None)
    state = gen.get_state() if gen is not None else None
    with torch.random.fork_rng(devices=[]):
        for x in data:
            rows.append(_batch(x).to(torch.float32))
            if sum(r.shape[0] for r in rows) >= 2 * held_out:
                break
    if state is not None:
        gen.set_state(state)
    if not rows:
        raise ValueError(f"--data-from {spec!r}: the iterable yielded no batches")
    both = torch.cat(rows)[: 2 * held_out]
    half = max(1, both.shape[0] // 2)
    return StreamData(name, data, both[:half], both[half:] if both.shape[0] > 1 else both, both[:8])
