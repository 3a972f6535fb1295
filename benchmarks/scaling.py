"""Steps per second of ``wakesleep train`` under ``torchrun`` with 1 and 2 (or more) processes, at the same global batch.

Each run is the command line a user types, ``torchrun --nproc-per-node N -m wakesleep train ...``
(launched as ``python -m torch.distributed.run``, one intra-op thread per process,
``OMP_NUM_THREADS=1``): RWS (K = 5, q by wake and sleep) on an SBN 784-200, global batch
``--batch-size`` (100), on the fixed-binarised MNIST training images (``--train-n``, default all
50,000; ``$WAKESLEEP_DATA_DIR``), for ``--epochs`` epochs, same seed.  Under N processes each rank
takes batch / N datapoints of its shard per step and the gradients are averaged
(``wakesleep.training.distributed``), so a step means the same global batch for every N and an
epoch has the same number of steps.

Steps per second come from the run's own ``metrics.jsonl`` (rank 0's elapsed time and step count
at the end of each epoch): (steps at the end of the last epoch − steps at the end of the first) /
(time between them), so the first epoch (process start-up, lazy initialisation, compiling with
``--compile``) is left out.  The per-epoch validation is kept small so that it does not count:
the runs get their own ``.npz`` with ``--valid-n`` (100) validation images scored with K = 10.

Efficiency with the global batch fixed: one step of N processes does the work of one step of one
process (the batch is split, plus an all-reduce of the gradients), so the speed-up is
S_N = (steps/s with N processes) / (steps/s with 1 process), and the efficiency is

    E_N = S_N / N  =  (steps/s with N) / (N · steps/s with 1)

(1: the step time falls as 1/N; 1/N: no gain at all).  It measures how well the step divides,
not more data per second: with a fixed global batch each rank's matrix products shrink by N,
which lowers their efficiency too.  A machine with fewer free cores than N processes gives
E_N < 1 whatever the code.

The result: each run ends with the test log-likelihood of its best model (``--test-k`` particles
on a fixed random ``--test-n`` of the test images, the same for every run).  The N-process runs
draw other random numbers (each rank its own particles), so their parameters are not bitwise
those of the 1-process run; the script prints each run's test log-likelihood and its difference
from the 1-process run's, with the standard error of that difference taking the two estimates as
independent (they share the test images, so this overstates it).  That a synchronised N-process
step is exactly the step on the union batch is tested in ``tests/test_distributed.py``.

    PYTHONPATH=src python benchmarks/scaling.py                              # 1 and 2 processes, 3 epochs of 50,000
    PYTHONPATH=src python benchmarks/scaling.py --nprocs 1 2 4 8             # a machine with more cores
    PYTHONPATH=src python benchmarks/scaling.py --train-n 1000 --epochs 2 --test-n 100 --test-k 10   # smoke test

Ends with ``torchrun_N_process_efficiency: VALUE`` for each N > 1 (``torchrun_2_process_efficiency``
the headline).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SRC = str(Path(__file__).resolve().parents[1] / "src")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_data(path: Path, a: argparse.Namespace) -> None:
    """The runs' data set: the first ``train_n`` training images, fixed random subsets of the validation and test images."""
    import torch

    from wakesleep.data import binarized_mnist
    from wakesleep.lab.compare import subset

    data = binarized_mnist(a.data_dir, download=False)
    train = data.train if a.train_n is None else data.train[: a.train_n]
    as_u8 = lambda t: t.to(torch.uint8).numpy()  # noqa: E731
    np.savez(path, train=as_u8(train), valid=as_u8(subset(data.valid, a.valid_n)), test=as_u8(subset(data.test, a.test_n)))


def run(nproc: int, data: Path, run_dir: Path, a: argparse.Namespace) -> dict:
    """One ``torchrun --nproc-per-node nproc -m wakesleep train`` run; its metrics and summary."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
    ]
    cmd += ["-m", "wakesleep", "train", "--dataset", str(data), "--algorithm", "rws", "--k", str(a.k), "--layers", "200"]
    cmd += ["--epochs", str(a.epochs), "--batch-size", str(a.batch_size), "--valid-k", "10", "--test-k", str(a.test_k)]
    cmd += ["--patience", "1000", "--seed", str(a.seed), "--run-dir", str(run_dir), "--no-progress"]
    cmd += ["--compile"] if a.compile else []
    print(f"running: torchrun --nproc-per-node {nproc} -m wakesleep train ... ({a.epochs} epochs)", flush=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"torchrun with {nproc} processes failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((run_dir / "summary.json").read_text())
    first, last = records[0], records[-1]
    steps, seconds = last["step"] - first["step"], last["time"] - first["time"]
    return {
        "nproc": nproc,
        "steps_per_second": steps / seconds if seconds > 0 else math.nan,
        "timed_steps": steps,
        "timed_seconds": seconds,
        "steps_per_epoch": first["step"],
        "test_log_likelihood": summary["test_log_likelihood"],
        "test_stderr": summary["test_stderr"],
        "last_train_objective": last.get("train_objective"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2], help="process counts; the first must be 1 (default: 1 2)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not timed (default 3)")
    p.add_argument("--train-n", type=int, default=None, help="the first N training images (default: all 50,000)")
    p.add_argument("--valid-n", type=int, default=100, help="validation images scored each epoch, K = 10 (default 100)")
    p.add_argument("--test-n", type=int, default=1000, help="test images of the final log-likelihood (default 1000)")
    p.add_argument("--test-k", type=int, default=100, help="particles of the final log-likelihood (default 100)")
    p.add_argument("--batch-size", type=int, default=100, help="the global batch (default 100)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="wakesleep train --compile")
    p.add_argument("--data-dir", default=None, help="default: $WAKESLEEP_DATA_DIR")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = p.parse_args(argv)
    if a.nprocs[0] != 1:
        p.error("--nprocs must start with 1 (the reference)")
    if a.epochs < 2:
        p.error("--epochs must be at least 2 (the first is not timed)")
    bad = [n for n in a.nprocs if n < 1 or a.batch_size % n]
    if bad:
        p.error(f"--batch-size {a.batch_size} must be divisible by every process count; not by {bad}")

    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        data = Path(tmp) / "mnist_scaling.npz"
        write_data(data, a)
        rows = [run(n, data, Path(tmp) / f"run{n}", a) for n in a.nprocs]

    one = rows[0]
    print()
    print(
        f"wakesleep train, RWS K = {a.k}, SBN 784-200, global batch {a.batch_size}, {a.epochs} epochs ({one['steps_per_epoch']} steps each; the first not timed), one thread per process, os.cpu_count() = {os.cpu_count()}"
    )
    print(f"| processes | steps/s | speed-up | efficiency | test log-likelihood (K = {a.test_k}, {a.test_n} images) | difference from 1 process |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        r["speedup"] = r["steps_per_second"] / one["steps_per_second"]
        r["efficiency"] = r["speedup"] / r["nproc"]
        diff = r["test_log_likelihood"] - one["test_log_likelihood"]
        se = math.hypot(r["test_stderr"], one["test_stderr"])
        print(
            f"| {r['nproc']} | {r['steps_per_second']:.2f} | {r['speedup']:.2f} | {r['efficiency']:.2f} | "
            f"{r['test_log_likelihood']:.2f} ± {r['test_stderr']:.2f} | {diff:+.2f} ± {se:.2f} |"
        )
    if a.json:
        Path(a.json).write_text(json.dumps({"settings": vars(a), "rows": rows}, indent=2))
    print()
    print("# key lines: efficiency = steps/s with N processes / (N x steps/s with 1), same global batch, elapsed time")
    for r in rows[1:]:
        print(f"torchrun_{r['nproc']}_process_efficiency: {r['efficiency']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
