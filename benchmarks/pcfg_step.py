"""Our training step on Le et al. (2019)'s astronomers PCFG against their code's, on the same
settings: the same sentences in the same order, the same initial parameters (one seed; the example
builds its modules in their order), batch 2, K particles, one thread.

Ours: ``examples/pcfg.py:astronomers`` (the per-particle Pyro path), stepped as the trainer does
(:func:`wakesleep.training.train_step`).  Theirs: their training function
(``train.train_wake_wake`` for ``ww``, ``train_wake_sleep``, ``train_iwae``) from a checkout of
tuananhle7/rrws, loaded by ``experiments/rrws_pcfg.py`` (its compatibility patches), with the true
grammar's ``sample_obs`` handing out the same sentences as ours take.  The two are interleaved in
rounds of ``--chunk`` steps, so that a slow patch of the machine hits both.  Each step's thread
CPU time is recorded (theirs: between their callback's calls, data drawing included).

    PYTHONPATH=src python benchmarks/pcfg_step.py --rrws /tmp/rrws
    PYTHONPATH=src python benchmarks/pcfg_step.py --rrws /tmp/rrws --algorithm vimco --k 5

Prints ``key: value`` lines: seconds per step (the mean over the same sentences, and the median)
of each, and ``pcfg_step_vs_rrws`` = their total time / ours over the same sentences (≥ 1: ours
at least as fast).  Without ``--rrws`` (or with a path that is not a checkout) their side is
skipped with a message.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "experiments"))
import le2019_pcfg  # noqa: E402
import pcfg  # noqa: E402
import rrws_pcfg  # noqa: E402

from wakesleep.lab.tables import key_lines  # noqa: E402
from wakesleep.training import TrainConfig, build_optimizer, train_step  # noqa: E402


def our_stepper(algorithm: str, k: int, seed: int):
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = pcfg.astronomers()
    est = le2019_pcfg.estimator(algorithm, k)
    opt = build_optimizer(model, est, TrainConfig(lr_p=1e-3, lr_q=1e-3))

    def step(x: torch.Tensor) -> float:
        t0 = time.thread_time()
        _, bad = train_step(model, est, opt, x)
        if bad is not None:
            raise RuntimeError(f"ours: non-finite {bad}")
        return time.thread_time() - t0

    return step


def their_stepper(rrws, algorithm: str, k: int, batch: int, seed: int):
    models = rrws_pcfg.init(rrws, "astronomers", seed)
    vocab = sorted(pcfg.ASTRONOMERS.terminals)
    queue: list[list[str]] = []
    models[2].sample_obs = lambda: queue.pop(0)  # the true grammar hands out our sentences, in order

    def steps(xs: torch.Tensor) -> list[float]:
        queue[:] = [[vocab[i] if i < len(vocab) else "?" for i in pcfg.words_of(x)] for x in xs]
        times: list[float] = []
        clock = {"t": time.thread_time()}

        def callback(*_):
            times.append(time.thread_time() - clock["t"])
            clock["t"] = time.thread_time()

        clock["t"] = time.thread_time()
        rrws_pcfg._trainer(rrws, algorithm, models, batch, len(xs) // batch, k, callback)()
        return times

    return steps


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rrws", default=None, help="a checkout of tuananhle7/rrws (their side is skipped without it)")
    p.add_argument("--deps", default=None, help="a folder with python-Levenshtein (pip install --target), for their likelihood")
    p.add_argument("--algorithm", choices=rrws_pcfg.ALGORITHMS, default="ww")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="steps timed on each side (after --chunk warm-up steps)")
    p.add_argument("--chunk", type=int, default=5, help="steps per side and round")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rrws = None
    if a.rrws:
        try:
            rrws = rrws_pcfg.load_rrws(a.rrws, a.deps)
        except FileNotFoundError as err:
            print(f"# their side skipped: {err}")
    else:
        print("# their side skipped: no --rrws PATH (a checkout of tuananhle7/rrws)")
    n = a.steps + a.chunk
    data = pcfg.sample_data(pcfg.ASTRONOMERS, n * a.batch, seed=20_000 + a.seed)
    ours = our_stepper(a.algorithm, a.k, a.seed)
    theirs = their_stepper(rrws, a.algorithm, a.k, a.batch, a.seed) if rrws else None
    t_ours: list[float] = []
    t_theirs: list[float] = []
    for start in range(0, n, a.chunk):
        block = data[start * a.batch : min(start + a.chunk, n) * a.batch]
        if theirs is not None:
            t_theirs += theirs(block)
        t_ours += [ours(block[i * a.batch : (i + 1) * a.batch]) for i in range(len(block) // a.batch)]
    t_ours, t_theirs = t_ours[a.chunk :], t_theirs[a.chunk :]  # the first round warms up
    print(f"# astronomers PCFG, {a.algorithm}, K = {a.k}, batch {a.batch}, {a.steps} steps each on the same sentences, thread CPU time, 1 thread")
    out = {"ours_seconds_per_step": sum(t_ours) / len(t_ours), "ours_median_seconds_per_step": statistics.median(t_ours)}
    if t_theirs:
        out["rrws_seconds_per_step"] = sum(t_theirs) / len(t_theirs)
        out["rrws_median_seconds_per_step"] = statistics.median(t_theirs)
        out["pcfg_step_vs_rrws"] = sum(t_theirs) / sum(t_ours)
        out["rrws_levenshtein"] = rrws.levenshtein
    print(key_lines(out))
    return out


if __name__ == "__main__":
    main()
