"""One training step of wakesleep against Pyro, and against the machine's own matrix-multiply rate.

A step is what the trainer does per minibatch: the estimator's surrogate loss, ``backward()`` and
an Adam step over every parameter.  For each model the script times, in this one process:

- **ours**: ``wakesleep`` (the estimator, and the trainer's optimiser);
- **Pyro**: the same model and guide written for Pyro 1.9 and stepped by ``pyro.infer.SVI`` with
  ``pyro.optim.Adam``: ``ReweightedWakeSleep`` for RWS (``insomnia=0.5`` is our
  ``q_update="both"``: half wake-φ, half sleep-φ, one sleep sample per datapoint), and
  ``RenyiELBO(alpha=0)`` (the IWAE bound) for IWAE.  Pyro's two objectives normalise the weights
  once per batch, not per datapoint, so they compute a different (wrong) estimator at the same
  cost; the timing comparison is still like for like;
- **the ceiling**: Pyro's time divided by the time our step's matrix products alone would take at
  the machine's rate: the most any step doing those products could gain over Pyro;
- **the machine**: one large ``torch.mm`` (n × n by n × n, 2n³ FLOPs).  The step's matmul FLOPs
  (every ``mm``/``addmm``/``bmm`` in the forward and backward pass, counted by
  ``torch.utils.flop_counter``) divided by the step's time is the rate the step attains.

Times are medians over ``--repeats`` steps after ``--warmup`` steps.  They are CPU time of this
thread (``time.thread_time``) by default, which other people's jobs on a shared machine inflate
far less than elapsed time (they still compete for caches and memory bandwidth), with one
intra-op thread; ``--clock wall`` uses elapsed time instead.  Ours, Pyro's steps and the large
``torch.mm`` are interleaved in rounds so that a slow patch of the machine hits all of them.
Subnormal floats are flushed to zero for both sides (see ``main``).

Ends with the key lines (:func:`print_key_lines`): ``rws_step_share_of_matmul`` and
``rws_step_vs_pyro`` (SBN 784-200, RWS) and ``iwae_step_share_of_matmul`` (Gaussian IWAE), of the
compiled step where ``--compile`` is given, else of the eager step; a comment line says which.
With ``--profile`` the script also times **the step's matrix products alone** (recorded from one
step, replayed back to back on operands of the same shapes and layouts): their rate over the big
``torch.mm``'s is the highest share any step doing them can reach (key lines
``rws_step_products_alone_share``, ``iwae_step_products_alone_share``), and it prints each side's
per-op profile (``torch.profiler``), grouped into products, random numbers, the optimiser,
compiled kernels and the rest.

    PYTHONPATH=src python benchmarks/rws_step.py                 # all three models
    PYTHONPATH=src python benchmarks/rws_step.py --models sbn1 --compile
    PYTHONPATH=src python benchmarks/rws_step.py --models sbn1 gauss --compile --no-pyro --profile
    PYTHONPATH=src python benchmarks/rws_step.py --device cuda --clock wall
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.flop_counter import FlopCounterMode

import wakesleep as ws
from wakesleep import fused
from wakesleep.training import TrainConfig, build_optimizer, compile_estimator, train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pyro_counterpart import pyro_svi  # noqa: E402  (benchmarks/pyro_counterpart.py, shared with time_to_quality.py)

B, K = 100, 5
MODELS = {
    # name: (builder, estimator, Pyro's matching algorithm or None)
    "sbn1": (lambda: ws.HelmholtzMachine.sbn([784, 200]), lambda: ws.RWS(k=K), "rws"),
    "sbn2": (lambda: ws.HelmholtzMachine.sbn([784, 200, 200]), lambda: ws.RWS(k=K), "rws"),
    "gauss": (lambda: ws.HelmholtzMachine.gaussian([784, 50], hidden=(200, 200)), lambda: ws.IWAE(k=K), "iwae"),
    "sbn1-ws": (lambda: ws.HelmholtzMachine.sbn([784, 200]), lambda: ws.WakeSleep(), None),
}
LABELS = {
    "sbn1": "SBN 784-200, RWS",
    "sbn2": "SBN 784-200-200, RWS",
    "gauss": "Gaussian 784-[200,200]-50, IWAE",
    "sbn1-ws": "SBN 784-200, wake-sleep (no Pyro counterpart)",
}


# ------------------------------------------------------------------ Pyro's side


def pyro_step(model: ws.HelmholtzMachine, algorithm: str, x: torch.Tensor):
    """A Pyro model and guide with the same layers (copies of ``model``'s parameters) and an SVI step
    (:func:`pyro_counterpart.pyro_svi`)."""
    counterpart = pyro_svi(model, algorithm, K, lr=1e-3)
    return lambda: counterpart.step(x)


# ------------------------------------------------------------------ ours


def our_step(model, estimator, x, compiled: bool = False):
    """The trainer's step (:func:`wakesleep.training.train_step`): loss, backward, finiteness check, Adam.

    With ``compiled`` it is the step of ``TrainConfig(compile=True)``: the estimator through
    :func:`wakesleep.training.compile_estimator` and the compiled Bernoulli kernels switched on (and
    off again after each step, so that the eager side, interleaved with it, stays eager).
    """
    opt = build_optimizer(model, estimator, TrainConfig())
    if not compiled:
        return lambda: train_step(model, estimator, opt, x)
    if not fused.use_compiled_kernels(True):
        raise SystemExit("--compile: torch.compile is unavailable here (see the warning above)")
    forward = compile_estimator(estimator)

    def step():
        fused.use_compiled_kernels(True)
        try:
            train_step(model, estimator, opt, x, forward)
        finally:
            fused.use_compiled_kernels(False)

    return step


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
RANDOM_OPS = ("aten::uniform_", "aten::normal_", "aten::bernoulli_", "aten::random_")


class Operand(NamedTuple):
    """A recorded tensor argument of a matrix product: its shape and strides (elements)."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]


def record_products(step) -> list:
    """The matrix products one call of ``step`` runs, as (op, arguments with each tensor replaced
    by its :class:`Operand`, keyword arguments), recorded by a ``TorchDispatchMode`` (forward and backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    wanted = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}
    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in wanted:
                seen.append((func, [Operand(tuple(t.shape), tuple(t.stride())) if torch.is_tensor(t) else t for t in args], kwargs or {}))
            return func(*args, **(kwargs or {}))

    with Record():
        step()
    return seen


def replay_products(products, device):
    """A function that runs the recorded products alone, back to back, on fresh operands with the
    same shapes and memory layouts (transposed operands stay transposed): what the step's matrix
    products cost at their own shapes, with nothing else around them."""
    calls = []
    for func, args, kwargs in products:
        operands = [torch.empty_strided(a.shape, a.stride, device=device).normal_() if isinstance(a, Operand) else a for a in args]
        calls.append((func, operands, kwargs))
    return lambda: [func(*operands, **kwargs) for func, operands, kwargs in calls]


def op_profile(step, steps: int) -> list[tuple[str, float]]:
    """(op, CPU ms per step of its own time) for every op ``torch.profiler`` sees over ``steps``
    calls of ``step``, largest first; compiled regions appear as their ``CompiledFxGraph`` calls."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    rows = [(e.key, e.self_cpu_time_total / 1e3 / steps) for e in prof.key_averages()]
    return sorted(rows, key=lambda r: -r[1])


def print_profile(label: str, rows: list[tuple[str, float]], step_ms: float, top: int = 12, unit: str = "step") -> None:
    """The per-op profile of one side: the top ops, then the step grouped into matrix products,
    random numbers, the optimiser, compiled kernels and the rest (ms per ``unit``, share)."""
    total = sum(ms for _, ms in rows)
    groups = {"matrix products": 0.0, "random numbers": 0.0, "optimiser (Adam)": 0.0, "compiled kernels (Inductor)": 0.0, "everything else": 0.0}
    for name, ms in rows:
        if name in MATMUL_OPS:
            groups["matrix products"] += ms
        elif name in RANDOM_OPS:
            groups["random numbers"] += ms
        elif "adam" in name.lower() or "zero_grad" in name.lower():
            groups["optimiser (Adam)"] += ms
        elif "CompiledFxGraph" in name:
            groups["compiled kernels (Inductor)"] += ms
        else:
            groups["everything else"] += ms
    print(f"\nper-op profile, {label} (torch.profiler; {total:.2f} ms per {unit} under the profiler, {step_ms:.2f} ms without):")
    print(f"| op | ms per {unit} | share |")
    print("|---|---|---|")
    for name, ms in rows[:top]:
        print(f"| {name[:60]} | {ms:.3f} | {ms / total:.2f} |")
    print("| **grouped** | | |")
    for name, ms in groups.items():
        print(f"| {name} | {ms:.3f} | {ms / total:.2f} |")


def matmul_flops(step) -> int:
    """FLOPs of every matrix product in one call of ``step`` (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


MM_N = 2048


def big_mm(device):
    """One n × n by n × n ``torch.mm`` (2n³ FLOPs), n = ``MM_N``."""
    a = torch.randn(MM_N, MM_N, device=device)
    b = torch.randn(MM_N, MM_N, device=device)
    return lambda: torch.mm(a, b)


def sample_times(fn, clock, device, repeats: int) -> list[float]:
    now = time.thread_time if clock == "cpu" else time.perf_counter
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = []
    for _ in range(repeats):
        sync()
        t0 = now()
        fn()
        sync()
        out.append(now() - t0)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: a shared machine)")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="cpu: this thread's CPU time; wall: elapsed")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=60, help="timed steps per side (in rounds of 10)")
    p.add_argument("--compile", action="store_true", help="also time our step as TrainConfig(compile=True) runs it (torch.compile)")
    p.add_argument("--no-pyro", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--profile",
        action="store_true",
        help="also print each side's per-op profile and the step's matrix products timed alone (what bounds the share)",
    )
    a = p.parse_args(argv)
    if a.clock == "cpu" and a.threads != 1:
        p.error("--clock cpu measures one thread; use --threads 1 or --clock wall")
    torch.set_num_threads(a.threads)
    # Pyro's per-batch weights send gradients into the subnormal range, where a CPU matmul runs
    # 10x slower; flushing subnormals to zero (both sides) times the arithmetic, not that trap.
    torch.set_flush_denormal(True)
    device = torch.device(a.device)
    warnings.filterwarnings("ignore", category=FutureWarning)

    mm = big_mm(device)
    mm()  # warm-up
    mm_times = []
    rows, profiles = [], []
    for name in a.models:
        build, make_est, algorithm = MODELS[name]
        torch.manual_seed(a.seed)
        model = build().to(device)
        estimator = make_est().to(device)
        x = (torch.rand(B, 784, device=device) < 0.3).float()
        sides = {"ours": our_step(model, estimator, x)}
        flops = matmul_flops(sides["ours"])
        if a.profile:
            sides["products alone"] = replay_products(record_products(sides["ours"]), device)
        if a.compile:
            sides["ours, compiled"] = our_step(model, estimator, x, compiled=True)
        if not a.no_pyro and algorithm is not None:
            sides["pyro"] = pyro_step(model, algorithm, x)
        for fn in sides.values():
            for _ in range(a.warmup):
                fn()
        times = {k: [] for k in sides}
        for _ in range(max(1, a.repeats // 10)):
            mm_times += sample_times(mm, a.clock, device, 2)
            for k, fn in sides.items():
                times[k] += sample_times(fn, a.clock, device, 10)
        med = {k: statistics.median(v) for k, v in times.items()}
        pyro_flops = matmul_flops(sides["pyro"]) if "pyro" in sides else None
        rows.append((name, flops, pyro_flops, med))
        if a.profile:
            profiles.append((name, {k: op_profile(fn, 50) for k, fn in sides.items() if k in ("ours", "ours, compiled")}))

    rate = 2 * MM_N**3 / statistics.median(mm_times)
    print(f"torch {torch.__version__}, device {device}, {a.threads} thread(s), clock={a.clock}")
    print(f"machine: torch.mm {MM_N}x{MM_N}: {rate / 1e9:.1f} GFLOP/s (median of {len(mm_times)}, interleaved with the steps)")
    print()
    print(
        f"| model, estimator | ours, ms | step GFLOP/s (matmul) | / machine | Pyro, ms | Pyro / ours | ceiling |{' compiled, ms |' if a.compile else ''}"
    )
    print(f"|---|---|---|---|---|---|---|{'---|' if a.compile else ''}")
    for name, flops, pyro_flops, med in rows:
        ours = med["ours"]
        step_rate = flops / ours
        pyro = med.get("pyro")
        cells = [
            LABELS[name],
            f"{ours * 1e3:.2f}",
            f"{step_rate / 1e9:.1f} ({flops / 1e6:.0f} MFLOP)",
            f"{step_rate / rate:.2f}",
            f"{pyro * 1e3:.2f}" if pyro else "n/a",
            f"{pyro / ours:.1f}x" if pyro else "n/a",
            # Pyro's time over the time of our matmuls alone at the machine's rate: no step that
            # does these products can beat Pyro by more than this.
            f"{pyro / (flops / rate):.1f}x (Pyro: {pyro_flops / 1e6:.0f} MFLOP)" if pyro else "n/a",
        ]
        if a.compile:
            c = med["ours, compiled"]
            cells.append(f"{c * 1e3:.2f} ({flops / c / rate:.2f} of machine" + (f", {pyro / c:.1f}x Pyro)" if pyro else ")"))
        print("| " + " | ".join(cells) + " |")
    if a.profile:
        print_bound(rows, profiles, rate)
    print_key_lines(rows, rate, a.compile)


def print_bound(rows, profiles, rate: float) -> None:
    """What bounds the step's share of the machine's matmul rate: the step's own products, timed
    alone at their shapes, reach only ``alone`` of the big ``torch.mm``'s rate, so no step doing them
    can exceed that share; the per-op profiles say where the rest of the step goes."""
    print("\nthe bound: the step's matrix products alone, at their own shapes and layouts, back to back")
    print("| model, estimator | products alone, ms | alone / machine (the share's ceiling) | ours, ms | compiled, ms | not products, compiled, ms |")
    print("|---|---|---|---|---|---|")
    for name, flops, _, med in rows:
        alone = med["products alone"]
        comp = med.get("ours, compiled")
        cells = [
            LABELS[name],
            f"{alone * 1e3:.2f}",
            f"{flops / alone / rate:.2f}",
            f"{med['ours'] * 1e3:.2f}",
            f"{comp * 1e3:.2f}" if comp else "n/a",
            f"{(comp - alone) * 1e3:.2f}" if comp else "n/a",
        ]
        print("| " + " | ".join(cells) + " |")
    by_name = {name: med for name, _, _, med in rows}
    for name, sides in profiles:
        for side, ops in sides.items():
            print_profile(f"{LABELS[name]}, {side}", ops, by_name[name][side] * 1e3)


def print_key_lines(rows, rate: float, compiled: bool) -> None:
    """The headline figures, one per line as ``key: value``: the SBN 784-200 RWS step's share of
    the machine's matmul rate and Pyro's time over ours (the compiled step where ``--compile`` was
    given, else the eager one), and the Gaussian IWAE step's share.  Figures of models not run (or
    Pyro with ``--no-pyro``) are left out, and a comment line says so."""
    side = "ours, compiled" if compiled else "ours"
    by_name = {name: (flops, med) for name, flops, _, med in rows}
    print()
    print(
        f"# key lines: the {'compiled step (TrainConfig(compile=True))' if compiled else 'eager step (no --compile)'}, one thread's CPU time unless --clock wall"
    )
    missing = []
    if "sbn1" in by_name:
        flops, med = by_name["sbn1"]
        print(f"rws_step_share_of_matmul: {flops / med[side] / rate:.3f}")
        if "products alone" in med:
            print(f"rws_step_products_alone_share: {flops / med['products alone'] / rate:.3f}")
        if "pyro" in med:
            print(f"rws_step_vs_pyro: {med['pyro'] / med[side]:.3f}")
        else:
            missing.append("rws_step_vs_pyro (--no-pyro)")
    else:
        missing += ["rws_step_share_of_matmul", "rws_step_vs_pyro (model sbn1 not run)"]
    if "gauss" in by_name:
        flops, med = by_name["gauss"]
        print(f"iwae_step_share_of_matmul: {flops / med[side] / rate:.3f}")
        if "products alone" in med:
            print(f"iwae_step_products_alone_share: {flops / med['products alone'] / rate:.3f}")
    else:
        missing.append("iwae_step_share_of_matmul (model gauss not run)")
    if missing:
        print(f"# not measured: {', '.join(missing)}")


if __name__ == "__main__":
    main()
