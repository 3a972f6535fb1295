"""The compiled Bernoulli log-density: per-unit logs (before) against logs of products over lanes (now).

``wakesleep.fused._log_prob_kernel`` is the forward Σ_i [x_i l_i − softplus(l_i)] that
``torch.compile`` turns into one vectorised loop, in compiled training steps
(``TrainConfig(compile=True)``) and compiled evaluation (``wakesleep evaluate --compile``).  It
used to take softplus(l) = max(l, 0) + log(1 + e^{−|l|}) with one exp and one log per unit; it
now takes Σ_i log(1 + e^{−|l_i|}) as Σ_lanes log Π_i (1 + e^{−|l_i|}) (at most 120 factors, each
in (1, 2], per product), one exp and one multiply per unit.  This script measures both, compiled:

1. the kernel alone, both forms compiled in this process and interleaved, on the shapes of the
   SBN 784-200 RWS step ([5, 100, 784]) and of the K = 5000 evaluation's chunks ([85, 100, 784]),
   with its error against float64;
2. the whole compiled training step (``benchmarks/rws_step.py``'s, SBN 784-200 RWS and Gaussian
   IWAE) in fresh child processes that alternate before/now ``--rounds`` times (each compiles its
   own step; the kernel of the before side is swapped in before compiling), median step time and
   share of the machine's 2048² ``torch.mm`` rate.

Ends with the key lines ``kernel_speedup_step_shape``, ``kernel_speedup_evaluation_shape``,
``compiled_rws_step_speedup`` and ``compiled_iwae_step_speedup`` (before / now).

    PYTHONPATH=src python benchmarks/bernoulli_kernel.py
    PYTHONPATH=src python benchmarks/bernoulli_kernel.py --rounds 1 --repeats 5   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def per_unit_logs(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The kernel before: one exp and one log per unit."""
    return (value * logits - logits.clamp_min(0) - torch.log(1 + torch.exp(-logits.abs()))).sum(-1)


def kernel_times(repeats: int) -> list[tuple[str, float, float, float, float]]:
    """(shape, before ms, now ms, before max error, now max error) per shape, both compiled here."""
    from wakesleep import fused

    before, now = torch.compile(per_unit_logs), torch.compile(fused._log_prob_kernel)
    rows = []
    for shape in ((5, 100, 784), (85, 100, 784)):
        torch.manual_seed(0)
        logits, value = torch.randn(*shape) * 3, (torch.rand(*shape[1:]) < 0.3).float()
        exact = per_unit_logs(logits.double(), value.double())
        errors = [(f(logits, value).double() - exact).abs().max().item() for f in (before, now)]
        times = {before: [], now: []}
        for _ in range(repeats):
            for f in (before, now):
                t0 = time.process_time()
                f(logits, value)
                times[f].append(time.process_time() - t0)
        rows.append((str(list(shape)), statistics.median(times[before]) * 1e3, statistics.median(times[now]) * 1e3, *errors))
    return rows


CHILD = """
import json, statistics, sys, warnings, torch
warnings.filterwarnings("ignore")
sys.path.insert(0, {here!r})
from wakesleep import fused
if sys.argv[1] == "before":
    import bernoulli_kernel
    fused._log_prob_kernel = bernoulli_kernel.per_unit_logs  # before use_compiled_kernels compiles it
import rws_step
torch.set_num_threads(1)
torch.set_flush_denormal(True)
cpu = torch.device("cpu")
mm = rws_step.big_mm(cpu)
out = {{}}
for name in ("sbn1", "gauss"):
    build, make_est, _ = rws_step.MODELS[name]
    torch.manual_seed(0)
    model, est = build(), make_est()
    x = (torch.rand(100, 784) < 0.3).float()
    flops = rws_step.matmul_flops(rws_step.our_step(model, est, x))
    step = rws_step.our_step(model, est, x, compiled=True)
    for _ in range(10):
        step()
    steps, mms = [], []
    for _ in range({repeats}):
        mms += rws_step.sample_times(mm, "cpu", cpu, 2)
        steps += rws_step.sample_times(step, "cpu", cpu, 10)
    t = statistics.median(steps)
    out[name] = {{"ms": t * 1e3, "share": flops / t / (2 * rws_step.MM_N**3 / statistics.median(mms))}}
print(json.dumps(out))
"""


def step_times(rounds: int, repeats: int) -> dict[str, list[dict]]:
    """Per side, one result per child process: {model: {"ms", "share"}}; the sides alternate."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = CHILD.format(here=str(HERE), repeats=repeats)
    out = {"before": [], "now": []}
    for r in range(rounds):
        for side in ("before", "now"):
            done = subprocess.run([sys.executable, "-c", code, side], env=env, capture_output=True, text=True, check=True)
            out[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(
                f"round {r + 1}, {side}: " + ", ".join(f"{m} {v['ms']:.2f} ms ({v['share']:.3f} of machine)" for m, v in out[side][-1].items()),
                flush=True,
            )
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="child processes per side for the whole step (default 3)")
    p.add_argument("--repeats", type=int, default=8, help="rounds of 10 timed steps per child; kernel calls per form (x5)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, 1 thread, process CPU time, medians")
    print("\nthe kernel alone (compiled, interleaved in this process):")
    print("| logits shape | before, ms | now, ms | before / now | max error vs float64, before | now |")
    print("|---|---|---|---|---|---|")
    kernels = kernel_times(5 * a.repeats)
    for shape, b, n, eb, en in kernels:
        print(f"| {shape} | {b:.3f} | {n:.3f} | {b / n:.2f} | {eb:.1e} | {en:.1e} |")
    print("\nthe compiled training step (fresh processes, alternating):")
    steps = step_times(a.rounds, a.repeats)
    med = {side: {m: statistics.median(r[m]["ms"] for r in rs) for m in ("sbn1", "gauss")} for side, rs in steps.items()}
    share = {side: {m: statistics.median(r[m]["share"] for r in rs) for m in ("sbn1", "gauss")} for side, rs in steps.items()}
    print("| step | before, ms | now, ms | before / now | share of machine, before | now |")
    print("|---|---|---|---|---|---|")
    for m, label in (("sbn1", "SBN 784-200, RWS"), ("gauss", "Gaussian 784-[200,200]-50, IWAE")):
        print(
            f"| {label} | {med['before'][m]:.2f} | {med['now'][m]:.2f} | {med['before'][m] / med['now'][m]:.2f} | {share['before'][m]:.3f} | {share['now'][m]:.3f} |"
        )
    print("\n# key lines: before / now, compiled")
    print(f"kernel_speedup_step_shape: {kernels[0][1] / kernels[0][2]:.2f}")
    print(f"kernel_speedup_evaluation_shape: {kernels[1][1] / kernels[1][2]:.2f}")
    print(f"compiled_rws_step_speedup: {med['before']['sbn1'] / med['now']['sbn1']:.2f}")
    print(f"compiled_iwae_step_speedup: {med['before']['gauss'] / med['now']['gauss']:.2f}")


if __name__ == "__main__":
    main()
