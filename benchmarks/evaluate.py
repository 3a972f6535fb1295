"""Time and peak memory of the K = 5000 importance-sampled log-likelihood on binarised MNIST.

The evaluation (``wakesleep.evaluate.log_likelihood``) runs in a fresh child process so that its
memory is measured cleanly: the child loads only the test images, the model and torch, does a
tiny warm-up evaluation, then records its resident set size (RSS) as the baseline.  The peak
during the evaluation is the larger of ``getrusage(RUSAGE_SELF).ru_maxrss`` (when it rose during
the evaluation) and an RSS sampled every millisecond by a thread; the script reports peak −
baseline, the memory the evaluation itself took, against the cap it was given
(``max_memory_mib``).  Times are the child's wall time and CPU time with one intra-op thread; the
CPU time is the process's less the RSS sampler thread's own (it wakes every millisecond).

The matmul bound: the FLOPs of every matrix product of the evaluation (``mm``/``addmm``/``bmm``,
counted by ``torch.utils.flop_counter`` on the first batch of ``BATCH`` images with the eager
kernels, then scaled by n / ``BATCH``: the products per image do not depend on the batch, and
the recognition network's first layer runs once per image whatever K), divided by the machine's
matmul rate (one 2048 × 2048 ``torch.mm``, process CPU time, median of ``MM_REPEATS`` before and
``MM_REPEATS`` after the evaluation, in the child), is the least time any evaluation doing these
products could take.  ``evaluate_share_of_matmul_bound`` is that time over the evaluation's
actual CPU time (1 would be pure matrix products at the machine's rate).

    PYTHONPATH=src python benchmarks/evaluate.py --run runs/sbn200         # a trained run, full test set
    PYTHONPATH=src python benchmarks/evaluate.py --n 500                   # 500 test images, extrapolated
    PYTHONPATH=src python benchmarks/evaluate.py --max-memory-mib 64
    PYTHONPATH=src python benchmarks/evaluate.py --n 500 --compile        # with compiled kernels
    PYTHONPATH=src python benchmarks/evaluate.py --n 500 --compile --profile   # and where the time goes, per op

Without ``--run`` the model is an untrained one-layer SBN-200 (timing and memory do not depend
on training; the log-likelihood then means nothing).  Data: ``wakesleep.data.binarized_mnist()``
(``$WAKESLEEP_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BATCH = 100  # datapoints per evaluation batch (log_likelihood's default)
MM_N, MM_REPEATS = 2048, 5  # the machine's matmul rate: MM_N x MM_N torch.mm, timed MM_REPEATS times before and after


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def mm_times(repeats: int) -> list[float]:
    """Process CPU seconds of ``repeats`` MM_N x MM_N ``torch.mm`` calls (2 MM_N³ FLOPs each), after one warm-up."""
    import torch

    a, b = torch.randn(MM_N, MM_N), torch.randn(MM_N, MM_N)
    torch.mm(a, b)
    out = []
    for _ in range(repeats):
        t0 = time.process_time()
        torch.mm(a, b)
        out.append(time.process_time() - t0)
    return out


def evaluation_matmul_flops(model, x, k: int, max_memory_mib: float) -> float:
    """Matrix-product FLOPs of ``log_likelihood(model, x, k)``: counted on the first BATCH images
    (eager kernels: the products are the same with the compiled ones) and scaled by n / BATCH."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from wakesleep.evaluate import log_likelihood

    first = x[:BATCH]
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        log_likelihood(model, first, k=k, batch_size=BATCH, max_memory_mib=max_memory_mib, seed=0)
    return counter.get_total_flops() * x.shape[0] / first.shape[0]


def child(a: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from wakesleep.evaluate import chunk_sizes, log_likelihood
    from wakesleep.models import HelmholtzMachine
    from wakesleep.models.contract import particle_width
    from wakesleep.runs import load_run

    torch.set_num_threads(a.threads)
    x = torch.from_numpy(np.load(a.data))[: a.n]
    if a.run:
        model = load_run(Path(a.run))[0]
    else:
        torch.manual_seed(0)
        model = HelmholtzMachine.sbn([784, 200]) if a.model == "sbn" else HelmholtzMachine.gaussian([784, 50])
    model.eval()
    flops = evaluation_matmul_flops(model, x, a.k, a.max_memory_mib)  # before the compiled kernels are switched on
    alone = None
    if a.profile:  # the first BATCH images' products, recorded (eager) and replayed alone, back to back
        from rws_step import record_products, replay_products  # benchmarks/rws_step.py (this script's directory is on sys.path)

        with torch.random.fork_rng(devices=[]):
            replay = replay_products(
                record_products(lambda: log_likelihood(model, x[:BATCH], k=a.k, batch_size=BATCH, max_memory_mib=a.max_memory_mib, seed=0)),
                torch.device("cpu"),
            )
        replay()
        times = []
        for _ in range(3):
            t0 = time.process_time()
            replay()
            times.append(time.process_time() - t0)
        alone = statistics.median(times) * x.shape[0] / min(BATCH, x.shape[0])
    if a.compile:
        from wakesleep.fused import use_compiled_kernels

        if not use_compiled_kernels(True):
            raise SystemExit("--compile: torch.compile is unavailable here")
        # compile for the evaluation's chunk shapes first (a full batch: a batch of another size is
        # a new shape, which would recompile inside the timed evaluation)
        log_likelihood(model, x[:BATCH], k=a.k, batch_size=BATCH, max_memory_mib=a.max_memory_mib)
    log_likelihood(model, x[:10], k=10)  # warm-up: torch's lazy initialisation is not the evaluation's
    mm = mm_times(MM_REPEATS)  # before the baseline: its matrices are not the evaluation's memory
    baseline, peak_before = rss_mib(), max_rss_mib()
    sampled = [baseline]
    stop = threading.Event()

    sampler_cpu = [0.0]

    def sample():
        t0 = time.thread_time()
        while not stop.is_set():
            sampled[0] = max(sampled[0], rss_mib())
            time.sleep(0.001)
        sampler_cpu[0] = time.thread_time() - t0  # not the evaluation's: taken off its CPU time below

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0, c0 = time.perf_counter(), time.process_time()
    ll = log_likelihood(model, x, k=a.k, batch_size=BATCH, max_memory_mib=a.max_memory_mib, progress=a.progress, seed=0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stop.set()
    thread.join()
    cpu -= sampler_cpu[0]  # the RSS sampler's own CPU time (it wakes 1000 times a second)
    peak_after = max_rss_mib()
    mm += mm_times(MM_REPEATS)
    peak = max(sampled[0], peak_after if peak_after > peak_before else 0.0)
    b, kc = chunk_sizes(particle_width(model, x), x.shape[0], a.k, BATCH, a.max_memory_mib, x.element_size())
    profile = None
    if a.profile:  # after the timed evaluation, off its clock: the first BATCH images once more under torch.profiler
        from rws_step import op_profile  # benchmarks/rws_step.py (this script's directory is on sys.path)

        profile = op_profile(lambda: log_likelihood(model, x[:BATCH], k=a.k, batch_size=BATCH, max_memory_mib=a.max_memory_mib, seed=0), 1)
        profile = [(name, ms / min(BATCH, x.shape[0])) for name, ms in profile]  # ms per image
    print(
        json.dumps(
            {
                "n": ll.n,
                "k": ll.k,
                "mean": ll.mean,
                "stderr": ll.stderr,
                "wall_s": wall,
                "cpu_s": cpu,
                "baseline_mib": baseline,
                "peak_mib": peak,
                "eval_mib": peak - baseline,
                "chunk": [b, kc],
                "matmul_flops": flops,
                "mm_rate": 2 * MM_N**3 / statistics.median(mm),
                "profile": profile,
                "products_alone_s": alone,
            }
        )
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="a run directory with a trained model (default: an untrained SBN-200)")
    p.add_argument(
        "--model", choices=["sbn", "gaussian"], default="sbn", help="untrained model without --run: SBN 784-200, or Gaussian 784-[200,200]-50"
    )
    p.add_argument("--n", type=int, default=10000, help="test images (default: all 10,000)")
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--max-memory-mib", type=float, default=256.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--compile", action="store_true", help="with compiled kernels (wakesleep evaluate --compile)")
    p.add_argument("--profile", action="store_true", help="also print the per-op profile (ms per image) of the first 100 images' evaluation")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(a)

    import numpy as np

    from wakesleep.data import binarized_mnist

    test = binarized_mnist().test.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test.npy"
        np.save(path, test)
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--data",
            str(path),
            "--n",
            str(a.n),
            "--k",
            str(a.k),
            "--max-memory-mib",
            str(a.max_memory_mib),
            "--threads",
            str(a.threads),
        ]
        cmd += ["--run", a.run] if a.run else ["--model", a.model]
        cmd += ["--progress"] if a.progress else []
        cmd += ["--compile"] if a.compile else []
        cmd += ["--profile"] if a.profile else []
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    n_all = test.shape[0]
    print(
        f"model: {a.run or {'sbn': 'untrained SBN 784-200', 'gaussian': 'untrained Gaussian 784-[200,200]-50'}[a.model]}; K = {res['k']}; {res['n']} of {n_all} test images; "
        f"{a.threads} thread(s){', compiled kernels' if a.compile else ''}; chunks of {res['chunk'][0]} images x {res['chunk'][1]} particles"
    )
    print(f"log-likelihood: {res['mean']:.2f} ± {res['stderr']:.2f} nats")
    print(f"time: {res['wall_s']:.1f} s wall, {res['cpu_s']:.1f} s CPU ({res['n'] * res['k'] / res['cpu_s'] / 1e6:.2f} M particles per CPU second)")
    if res["n"] < n_all:
        f = n_all / res["n"]
        print(f"extrapolated to all {n_all} images (x{f:.0f}, linear in n): {res['wall_s'] * f:.0f} s wall, {res['cpu_s'] * f:.0f} s CPU")
    print(
        f"memory: baseline RSS {res['baseline_mib']:.0f} MiB, peak {res['peak_mib']:.0f} MiB: "
        f"the evaluation took {res['eval_mib']:.0f} MiB against a cap of {a.max_memory_mib:.0f} MiB "
        f"({'under' if res['eval_mib'] <= a.max_memory_mib else 'OVER'} the cap)"
    )
    bound = res["matmul_flops"] / res["mm_rate"]  # CPU seconds of the products alone at the machine's rate
    print(
        f"matmul bound: {res['matmul_flops'] / 1e12:.2f} TFLOP of matrix products at the machine's {res['mm_rate'] / 1e9:.1f} GFLOP/s "
        f"(torch.mm {MM_N}x{MM_N}, one thread, median of {2 * MM_REPEATS} around the evaluation) = {bound:.1f} CPU s"
    )
    if res["profile"]:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from rws_step import print_profile

        print_profile(
            f"the evaluation of {BATCH} images{', compiled kernels' if a.compile else ''}",
            [tuple(r) for r in res["profile"]],
            res["cpu_s"] / res["n"] * 1e3,
            unit="image",
        )
        print(
            f"the products at the machine's rate: {bound / res['n'] * 1e3:.2f} ms per image; the same products timed alone "
            f"(recorded from the first {BATCH} images, replayed back to back at their own shapes): {res['products_alone_s'] / res['n'] * 1e3:.2f} ms per image, "
            f"so no evaluation doing them can pass {bound / res['products_alone_s']:.2f} of the bound"
        )
    print()
    print("# key lines: the matmul bound's time over the evaluation's CPU time (1: nothing but matrix products at the machine's rate)")
    if res["products_alone_s"]:
        print("# and (--profile) over the time of the evaluation's own products alone: the most the first can reach")
        print(f"evaluate_products_alone_share: {bound / res['products_alone_s']:.3f}")
    print(f"evaluate_share_of_matmul_bound: {bound / res['cpu_s']:.3f}")


if __name__ == "__main__":
    main()
