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

With ``--compile`` the fused kernels' ``torch.compile`` forms (``wakesleep train --compile``;
:func:`wakesleep.fused.use_compiled_kernels`) are timed too, switched on for those models' steps
only: ``nade_compiled`` (NADE's blocks as compiled kernels, :class:`wakesleep.fused._NADELogitsCompiled`)
and ``sbn_compiled`` (the Bernoulli log-density's); compiling (seconds per shape) happens in the
warm-up round.  ``--eval-k K`` also times the importance-sampled log p(x) of ``--eval-images``
images with K particles (the evaluation protocol, :func:`wakesleep.evaluate.importance_log_marginal`)
for each model, in CPU seconds per image, and its ratio to the SBN's.

    PYTHONPATH=src python benchmarks/layers_step.py
    PYTHONPATH=src python benchmarks/layers_step.py --rounds 15 --steps 5 --nade-hidden 500
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/layers_step.py --compile --eval-k 5000

Prints one ``key: value`` line per model: milliseconds per step and the ratio to the SBN's
(``nade_step_vs_sbn``: both eager; ``nade_compiled_step_vs_sbn``: compiled NADE against the eager
SBN step, ``nade_compiled_step_vs_sbn_compiled``: both compiled), and with ``--eval-k`` the same for
evaluation (``*_eval_s_per_image``, ``*_eval_vs_sbn``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from discrete_step import B, D, K, one_thread_batch, paired_rounds  # benchmarks/ is the script's directory, first on sys.path

import wakesleep as ws
from wakesleep import fused
from wakesleep.evaluate import importance_log_marginal
from wakesleep.training import TrainConfig, build_optimizer, train_step

H = 200  # latent units; B, D, K as discrete_step's: batch 100, 784 pixels, 5 particles


def switched(compiled: bool, call):
    """``call`` with the fused kernels' compiled forms on (or off) for its duration."""

    def run():
        fused.use_compiled_kernels(compiled)
        try:
            return call()
        finally:
            fused.use_compiled_kernels(False)

    return run


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=3, help="steps timed per model and round")
    p.add_argument("--nade-hidden", type=int, default=200, help="NADE's hidden units (default: 200)")
    p.add_argument("--compile", action="store_true", help="also time the compiled kernels (nade_compiled, sbn_compiled)")
    p.add_argument("--eval-k", type=int, default=0, help="also time evaluation with this many particles (0: no)")
    p.add_argument("--eval-images", type=int, default=2, help="images per evaluation timing")
    a = p.parse_args(argv)
    x = one_thread_batch()
    kinds = {"sbn": ("sbn", False), "nade": ("nade", False), "darn": ("darn", False)}
    if a.compile:
        kinds.update(nade_compiled=("nade", True), sbn_compiled=("sbn", True))
    steps, models = {}, {}
    for name, (kind, compiled) in kinds.items():
        torch.manual_seed(0)
        model = ws.HelmholtzMachine.sbn([D, H], p_layers=kind, q_layers=kind, nade_hidden=a.nade_hidden)
        est = ws.RWS(k=K)
        opt = build_optimizer(model, est, TrainConfig())
        steps[name] = switched(compiled, lambda model=model, est=est, opt=opt: train_step(model, est, opt, x))
        models[name] = (model, compiled)
    times = paired_rounds(steps, a.rounds, a.steps)
    out = {}
    print(f"# RWS (q by wake and sleep), SBN {D}-{H}, batch {B}, K = {K}, NADE H = {a.nade_hidden}; p(x | z) and q(z | x) of each kind")
    print(f"# {a.rounds} rounds of {a.steps} steps, thread CPU time, 1 thread")
    for name, ts in times.items():
        out[f"{name}_ms_per_step"] = 1e3 * statistics.median(ts)
    for name, ts in times.items():
        if name != "sbn":
            out[f"{name}_step_vs_sbn"] = statistics.median(t / base for t, base in zip(ts, times["sbn"]))
    if "sbn_compiled" in times:
        out["nade_compiled_step_vs_sbn_compiled"] = statistics.median(t / base for t, base in zip(times["nade_compiled"], times["sbn_compiled"]))
    if a.eval_k:
        images = x[: a.eval_images]
        for name, (model, compiled) in models.items():
            run = switched(compiled, lambda model=model: importance_log_marginal(model, images, a.eval_k))
            run()  # warm-up (compiles the evaluation's shapes)
            t0 = time.thread_time()
            run()
            out[f"{name}_eval_s_per_image"] = (time.thread_time() - t0) / a.eval_images
        for name in models:
            if name != "sbn":
                out[f"{name}_eval_vs_sbn"] = out[f"{name}_eval_s_per_image"] / out["sbn_eval_s_per_image"]
    for key, value in out.items():
        print(f"{key}: {value:.3f}")
    return out


if __name__ == "__main__":
    main()
