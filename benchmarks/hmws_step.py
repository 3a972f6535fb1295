"""The hybrid memoised wake-sleep step against RWS's, on the same discrete-continuous model.

The model is ``examples/regression_mixture.py`` (4 discrete values, 2 continuous latents, data of
width 3), batch 100.  Each step is what the trainer does per minibatch
(:func:`wakesleep.training.train_step`: the surrogate loss, ``backward()``, the finiteness check,
Adam).  HMWS proposes R = ``--k`` discrete values, merges them into a memory of M = ``--memory-size``
and scores each of the R + M by K = ``--continuous-k`` continuous particles: (R + M)·K evaluations of
log p(d, c, x) per datapoint, against RWS's k.  So two RWS baselines: ``rws`` with k = R particles
(the same proposals from q(d | x)) and ``rws_same_particles`` with k = (R + M)·K (the same number of
joint-density evaluations).  Both train q by wake and sleep, as HMWS does here (``q_update="both"``).

The estimators are interleaved in rounds (:func:`discrete_step.paired_rounds`), each figure the
median over ``--rounds`` of the thread CPU time of ``--steps`` steps on one intra-op thread, each
ratio the median over rounds of the ratio within a round.

    PYTHONPATH=src python benchmarks/hmws_step.py
    PYTHONPATH=src python benchmarks/hmws_step.py --rounds 15 --steps 20

Ends with ``key: value`` lines: milliseconds per step of each, ``hmws_step_vs_rws`` and
``hmws_step_vs_rws_same_particles``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

import wakesleep as ws
from wakesleep.training import TrainConfig, build_optimizer, train_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import regression_mixture as rm  # noqa: E402
from discrete_step import paired_rounds  # noqa: E402  (this script's directory is on sys.path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=10, help="steps timed per estimator and round")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--k", type=int, default=5, help="R, HMWS's discrete proposals per step (and RWS's k)")
    p.add_argument("--continuous-k", type=int, default=5, help="K, HMWS's continuous particles per discrete value")
    p.add_argument("--memory-size", type=int, default=5, help="M, HMWS's memory")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    x = rm.make_data(a.batch, seed=0)
    same = (a.k + a.memory_size) * a.continuous_k
    builds = {
        "hmws": lambda: ws.HybridMemoisedWakeSleep(k=a.k, continuous_k=a.continuous_k, memory_size=a.memory_size),
        "rws": lambda: ws.RWS(k=a.k),
        "rws_same_particles": lambda: ws.RWS(k=same),
    }
    steps = {}
    for name, build in builds.items():
        model, est = rm.mixture(), build()
        opt = build_optimizer(model, est, TrainConfig())
        est.prepare(model, x)  # HMWS: a memory row per datapoint of this one batch, updated every step as in training
        index = torch.arange(a.batch) if est.needs_index else None
        steps[name] = lambda model=model, est=est, opt=opt, index=index: train_step(model, est, opt, x, index=index)
    times = paired_rounds(steps, a.rounds, a.steps)
    print(
        f"# regression mixture (D = {rm.COMPONENTS}, H = {rm.CONTINUOUS}, P = {rm.DATA}), batch {a.batch}; HMWS R = {a.k}, "
        f"M = {a.memory_size}, K = {a.continuous_k}; RWS k = {a.k} and k = {same}; {a.rounds} rounds of {a.steps} steps, "
        "thread CPU time, 1 thread"
    )
    out = {f"{name}_ms_per_step": 1e3 * statistics.median(ts) for name, ts in times.items()}
    out["hmws_step_vs_rws"] = statistics.median(h / r for h, r in zip(times["hmws"], times["rws"]))
    out["hmws_step_vs_rws_same_particles"] = statistics.median(h / r for h, r in zip(times["hmws"], times["rws_same_particles"]))
    for key, value in out.items():
        print(f"{key}: {value:.3f}")
    return out


if __name__ == "__main__":
    main()
