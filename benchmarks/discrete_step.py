"""The training step of each estimator for discrete latents against RWS's, on the same SBN.

The SBN 784-200 (one layer of 200 binary latents, factorial Bernoulli proposal), batch 100 of
binary data, K = 5 particles: each estimator's step is what the trainer does per minibatch
(:func:`wakesleep.training.train_step`: the surrogate loss, ``backward()``, the finiteness check and
Adam).  The estimators are interleaved in rounds so that a slow patch of the machine hits all of
them; each figure is the median over ``--rounds`` of the CPU time of ``--steps`` steps on one
intra-op thread, and each ratio is the median over rounds of the ratio within a round to RWS's
(``rws``: q updated by wake and sleep, the default; ``rws_wake``: by wake only, which, like the
score-function estimators, draws no sleep samples).

    PYTHONPATH=src python benchmarks/discrete_step.py
    PYTHONPATH=src python benchmarks/discrete_step.py --rounds 15 --steps 20

Prints one ``key: value`` line per estimator: milliseconds per step and the ratio to RWS (the
goal for VIMCO and NVIL: within 1.5× of RWS's step).  MWS (memory M = 10) keeps one memory for
the one batch, which it updates every step, as in training.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import wakesleep as ws
from wakesleep.training import TrainConfig, build_optimizer, train_step

B, K, D, H = 100, 5, 784, 200


def estimators() -> dict:
    return {
        "rws": lambda: ws.RWS(k=K),
        "rws_wake": lambda: ws.RWS(k=K, q_update="wake"),
        "rws_defensive": lambda: ws.RWS(k=K, q_update="wake", defensive=0.2),
        "ws": lambda: ws.WakeSleep(),
        "vimco": lambda: ws.estimators.ESTIMATORS["vimco"](k=K),
        "reinforce": lambda: ws.estimators.ESTIMATORS["reinforce"](k=K),
        "nvil": lambda: ws.estimators.ESTIMATORS["nvil"](k=K, data_dim=D),
        "tvo": lambda: ws.estimators.ESTIMATORS["tvo"](k=K),
        "mws": lambda: ws.estimators.ESTIMATORS["mws"](k=K, memory_size=10),
    }


def one_thread_batch() -> torch.Tensor:
    """Switch torch to one intra-op thread (denormals flushed) and return the benchmark's binary batch x [B, D]."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    g = torch.Generator().manual_seed(0)
    return (torch.rand(B, D, generator=g) < 0.3).float()


def paired_rounds(steps: dict, rounds: int, n: int) -> dict[str, list[float]]:
    """Thread CPU seconds per call of each of ``steps`` (name -> callable), ``n`` calls per name and
    round, the names interleaved in each round; ``rounds`` timed rounds after one that warms up."""
    times = {name: [] for name in steps}
    for r in range(rounds + 1):  # round 0 warms up
        for name, step in steps.items():
            t0 = time.thread_time()
            for _ in range(n):
                step()
            if r:
                times[name].append((time.thread_time() - t0) / n)
    return times


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=10, help="steps timed per estimator and round")
    a = p.parse_args(argv)
    x = one_thread_batch()
    steps = {}
    for name, build in estimators().items():
        torch.manual_seed(0)
        model, est = ws.HelmholtzMachine.sbn([D, H]), build()
        opt = build_optimizer(model, est, TrainConfig())
        est.prepare(model, x)  # MWS: a memory row per datapoint of this one batch (a no-op for the others)
        index = torch.arange(B) if est.needs_index else None
        steps[name] = lambda model=model, est=est, opt=opt, index=index: train_step(model, est, opt, x, index=index)
    times = paired_rounds(steps, a.rounds, a.steps)
    out = {}
    print(f"# SBN {D}-{H}, batch {B}, K = {K}, {a.rounds} rounds of {a.steps} steps, thread CPU time, 1 thread")
    for name, ts in times.items():
        out[f"{name}_ms_per_step"] = 1e3 * statistics.median(ts)
        for ref in ("rws", "rws_wake"):  # RWS as the trainer runs it (q by wake and sleep), and q by wake only
            if name not in ("rws", "rws_wake"):
                out[f"{name}_vs_{ref}"] = statistics.median(t / base for t, base in zip(ts, times[ref]))
    for key, value in out.items():
        print(f"{key}: {value:.3f}")
    return out


if __name__ == "__main__":
    main()
