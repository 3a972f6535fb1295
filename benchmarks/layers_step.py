"""The RWS training step with autoregressive layers (NADE, fDARN) against the factorial SBN layer.

One latent layer of 200 binary units over 784 binary pixels, batch 100, K = 5 particles, RWS with q
updated by wake and sleep (the trainer's default): the generative bottom layer p(x | z) and the
proposal q(z | x) are both factorial (``sbn``), both NADE with H = 200 hidden units (``nade``), or
both fDARN (``darn``); the prior stays factorial.  Each step is what the trainer does per
minibatch (:func:`wakesleep.training.train_step`: the surrogate loss, ``backward()``, the
finiteness check and Adam).  The models are interleaved in rounds so that a slow patch of the
machine hits all of them; each figure is the median over ``--rounds`` of the CPU time of
``--steps`` steps on one intra-op thread, and each ratio the median over rounds of the ratio
within a round to the SBN's.  Where the time goes: log-densities are one parallel pass
(teacher forcing), but the sleep phase draws x ~ p(x | z) unit by unit, 784 sequential steps, and
the wake phase draws z ~ q(z | x) in 200 (DARN's extra time); NADE's hidden units depend on the
parent (its function of the parent shifts c), so its log-density of the K·B particles is
K·B·D·H sigmoids forward and again backward, elementwise work where the SBN's is one matrix product.

    PYTHONPATH=src python benchmarks/layers_step.py
    PYTHONPATH=src python benchmarks/layers_step.py --rounds 15 --steps 5 --nade-hidden 500

Prints one ``key: value`` line per layer kind: milliseconds per step and the ratio to the SBN's.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from discrete_step import B, D, K, one_thread_batch, paired_rounds  # benchmarks/ is the script's directory, first on sys.path

import wakesleep as ws
from wakesleep.training import TrainConfig, build_optimizer, train_step

H = 200  # latent units; B, D, K as discrete_step's: batch 100, 784 pixels, 5 particles


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=3, help="steps timed per model and round")
    p.add_argument("--nade-hidden", type=int, default=200, help="NADE's hidden units (default: 200)")
    a = p.parse_args(argv)
    x = one_thread_batch()
    steps = {}
    for kind in ("sbn", "nade", "darn"):
        torch.manual_seed(0)
        model = ws.HelmholtzMachine.sbn([D, H], p_layers=kind, q_layers=kind, nade_hidden=a.nade_hidden)
        est = ws.RWS(k=K)
        opt = build_optimizer(model, est, TrainConfig())
        steps[kind] = lambda model=model, est=est, opt=opt: train_step(model, est, opt, x)
    times = paired_rounds(steps, a.rounds, a.steps)
    out = {}
    print(f"# RWS (q by wake and sleep), SBN {D}-{H}, batch {B}, K = {K}, NADE H = {a.nade_hidden}; p(x | z) and q(z | x) of each kind")
    print(f"# {a.rounds} rounds of {a.steps} steps, thread CPU time, 1 thread")
    for name, ts in times.items():
        out[f"{name}_ms_per_step"] = 1e3 * statistics.median(ts)
        if name != "sbn":
            out[f"{name}_step_vs_sbn"] = statistics.median(t / base for t, base in zip(ts, times["sbn"]))
    for key, value in out.items():
        print(f"{key}: {value:.3f}")
    return out


if __name__ == "__main__":
    main()
