"""Run Le et al. (ICLR 2022)'s own structured time-series code (tuananhle7/hmws,
``cmws/examples/timeseries``) from a checkout of it, and record log p(x) against CPU seconds as
JSON: the authors' side of ``experiments/hmws_timeseries.py``.  This project holds none of their
code: it imports their modules from ``PATH/cmws`` and calls their ``run.get_args_parser``,
``util.set_seed``, ``timeseries.util.init``, ``train.train`` and ``losses.get_log_p_and_kl``.

    python experiments/hmws_theirs.py data --hmws /tmp/hmws --out runs/hmws-timeseries/data.npz
    python experiments/hmws_theirs.py run --hmws /tmp/hmws --data runs/hmws-timeseries/data.npz \\
        --algorithm cmws_5 --seed 1 --iterations 300 --out runs/hmws-timeseries/theirs/hmws-seed1.json

``data``: their ``data.generate_synthetic_data(200, 20, 128, cpu, 0.02)`` after ``util.set_seed(0)``
(what their ``TimeseriesDataset(synthetic=True)`` does when its file is missing), saved as an .npz
with keys train/valid/test holding the same 200 series (their test loader reads the training file).

``run``: their ``run.main`` without its checkpoint resume: ``util.set_seed(seed)``, ``init`` (the
expression prior pretrained on 2000 PCFG batches of 10; HMWS's memory drawn from the prior), then
``train.train`` (100 sleep-pretraining iterations of batch 50, then training), with their sweep's
arguments (``sweep.py``, 2021_06_22): ``--synthetic-data --full-training-data --insomnia 0.5
--num-sleep-pretraining-iterations 100 --sleep-pretraining-batch-size 50 --lr 1e-3
--continuous-guide-lr 1e-3 --batch-size 5``; ``cmws_5``: ``--num-particles 5 --memory-size 5
--num-proposals-mws 5``; ``rws``: ``--num-particles 50``.  Training runs in chunks (``train.train``
resumes from ``len(stats.losses)``); between chunks log p(x) is their ``losses.get_log_p_and_kl``
with ``--eval-k`` particles on the first ``--eval-n`` series, timed apart from training.

Run-time patches (nothing in their checkout is edited or written):

1. ``cmws`` and ``cmws.examples`` are registered as bare packages: their ``__init__`` files import
   every example (stacking, CSG, scene understanding: pytorch3d and more), none needed here.
2. ``imageio`` and ``seaborn`` get empty stub modules where missing: imported at the top of their
   ``util.py`` / ``plot.py``, used only for GIFs and plots.
3. ``data.TimeseriesDataset``: replaced by a dataset of the same interface (``obs``, ``obs_id``,
   ``num_data``) over the series of ``--data``: theirs reads ``data/synthetic/0.02/train.pt``
   inside the checkout (written there on first use), and their ``init`` sizes HMWS's memory from
   the real-data set (``data.p``, absent from the repository) although the runs are synthetic.
4. ``losses.get_log_p_and_kl`` inside ``train.train`` returns NaN: their loop evaluates every
   ``--test-interval`` and at every chunk's last iteration on all 200 series with 100 particles
   (about 30 CPU-seconds here); the evaluation is done between chunks instead (above).
5. The working directory is a scratch folder under the output's: their checkpoints go to
   ``./save/…`` (``--save-interval`` and ``--checkpoint-interval`` are set past the run's end).
6. Their device is ``util.get_device()`` (CUDA when present): CPU here, one torch thread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import types
from pathlib import Path

ALGORITHMS = {"hmws": "cmws_5", "rws": "rws"}
PATCHES = (
    "cmws, cmws.examples: bare packages (their __init__ imports every example)",
    "imageio, seaborn: empty stubs where missing (GIFs and plots only)",
    "data.TimeseriesDataset: the series of --data (theirs writes into the checkout; memory sized from absent data.p)",
    "losses.get_log_p_and_kl in train.train: NaN (evaluation between chunks instead, timed apart)",
    "working directory: a scratch folder (their ./save checkpoints)",
    "device: CPU, one torch thread",
)


def load_hmws(path: str | os.PathLike) -> types.SimpleNamespace:
    """Import their time-series modules from ``path`` with patches 1–2 of the module docstring.

    Raises:
        SystemExit: when ``path/cmws/examples/timeseries/run.py`` is missing (not a checkout of tuananhle7/hmws).
    """
    root = Path(path).expanduser().resolve()
    if not (root / "cmws" / "examples" / "timeseries" / "run.py").is_file():
        raise SystemExit(f"{root}: not a checkout of tuananhle7/hmws (no cmws/examples/timeseries/run.py)")
    sys.path.insert(0, str(root))
    for name, sub in (("cmws", "cmws"), ("cmws.examples", "cmws/examples")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(root / sub)]
        sys.modules[name] = mod
    sys.modules["cmws"].examples = sys.modules["cmws.examples"]  # their code reaches modules as cmws.examples.…
    for name in ("imageio", "seaborn"):
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    import importlib

    ns = types.SimpleNamespace(root=root)
    ns.memory = importlib.import_module("cmws.memory")
    sys.modules["cmws"].memory = ns.memory  # their losses call cmws.memory.concat
    ns.util = importlib.import_module("cmws.util")
    ns.losses = importlib.import_module("cmws.losses")
    ns.data = importlib.import_module("cmws.examples.timeseries.data")  # first: their modules import each other in a cycle
    ns.ts_util = importlib.import_module("cmws.examples.timeseries.util")
    ns.run = importlib.import_module("cmws.examples.timeseries.run")
    ns.train = importlib.import_module("cmws.train")
    ns.timeseries = importlib.import_module("cmws.examples.timeseries.models.timeseries")
    return ns


def their_args(hmws, algorithm: str, seed: int, iterations: int):
    """Their parser with their sweep's settings for ``algorithm`` (hmws → cmws_5, rws)."""
    argv = ["--algorithm", ALGORITHMS[algorithm], "--seed", str(seed), "--num-iterations", str(iterations)]
    argv += ["--synthetic-data", "--full-training-data", "--insomnia", "0.5", "--num-sleep-pretraining-iterations", "100"]
    argv += ["--sleep-pretraining-batch-size", "50", "--lr", "1e-3", "--continuous-guide-lr", "1e-3", "--batch-size", "5"]
    argv += ["--num-particles", "5", "--memory-size", "5", "--num-proposals-mws", "5"] if algorithm == "hmws" else ["--num-particles", "50"]
    argv += ["--save-interval", str(10**9), "--checkpoint-interval", str(10**9), "--test-interval", str(10**9), "--experiment-name", "wakesleep"]
    return hmws.run.get_args_parser().parse_args(argv)


def patch_dataset(hmws, x) -> None:
    """Patch 3: their dataset class over the series x [N, 128]."""
    import torch

    class Series(torch.utils.data.Dataset):
        def __init__(self, device, *args, **kwargs):
            self.obs = x.to(device)
            self.num_data = len(self.obs)
            self.obs_id = torch.arange(self.num_data, device=device)

        def __getitem__(self, idx):
            return self.obs[idx], self.obs_id[idx]

        def __len__(self):
            return self.num_data

    hmws.data.TimeseriesDataset = Series


def make_data(hmws, out: Path) -> None:
    import numpy as np
    import torch

    hmws.util.set_seed(0)
    x = hmws.data.generate_synthetic_data(200, 20, 128, torch.device("cpu"), 0.02)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, train=x.numpy(), valid=x.numpy(), test=x.numpy())
    os.replace(tmp, out)


def evaluate(hmws, model, x, k: int) -> float:
    """Their ``get_log_p_and_kl`` on x [N, 128] in batches of 5, K particles: mean log p(x), nats."""
    import torch

    with torch.no_grad():
        return float(torch.cat([hmws.losses.get_log_p_and_kl(model["generative_model"], model["guide"], xb, k)[0] for xb in x.split(5)]).mean())


def run(hmws, data: Path, algorithm: str, seed: int, iterations: int, evals: int, eval_n: int, eval_k: int, scratch: Path, repeats: int = 1) -> dict:
    """One run of theirs (the module docstring); log p(x) evaluated ``repeats`` times at each point (recorded: their mean, and each)."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    x = torch.from_numpy(np.load(data)["train"]).float()
    patch_dataset(hmws, x)
    args = their_args(hmws, algorithm, seed, iterations)
    scratch.mkdir(parents=True, exist_ok=True)
    os.chdir(scratch)
    device = torch.device("cpu")
    t0 = time.process_time()
    hmws.util.set_seed(args.seed)
    model, optimizer, stats = hmws.ts_util.init(args, device)
    init_seconds = time.process_time() - t0
    real_eval = hmws.losses.get_log_p_and_kl

    def no_eval(generative_model, guide, obs, num_particles):  # patch 4
        nan = torch.full((obs.shape[0],), math.nan)
        return nan, nan

    hmws.losses.get_log_p_and_kl = no_eval
    try:
        t0 = time.process_time()
        args.num_iterations = 0  # sleep pretraining alone
        hmws.train.train(model, optimizer, stats, args)
        sleep_seconds = time.process_time() - t0
        hmws.losses.get_log_p_and_kl = real_eval
        ev = x[:eval_n]
        marks = sorted({round(iterations * i / evals) for i in range(evals + 1)})
        records, train_seconds = [], 0.0
        for mark in marks:
            if mark > len(stats.losses):
                hmws.losses.get_log_p_and_kl = no_eval
                args.num_iterations = mark
                t0 = time.process_time()
                hmws.train.train(model, optimizer, stats, args)
                train_seconds += time.process_time() - t0
                hmws.losses.get_log_p_and_kl = real_eval
            t0 = time.process_time()
            each = [evaluate(hmws, model, ev, eval_k) for _ in range(repeats)]
            log_p = sum(each) / repeats
            records.append(
                {
                    "iteration": len(stats.losses),
                    "train_cpu_seconds": train_seconds,
                    "log_p": log_p,
                    "log_p_each": each,
                    "eval_cpu_seconds": time.process_time() - t0,
                }
            )
            print(f"theirs {algorithm} seed {seed}: iteration {len(stats.losses)}, log p {log_p:.1f}, {train_seconds:.0f} CPU s", flush=True)
    finally:
        hmws.losses.get_log_p_and_kl = real_eval
    return {
        "source": "theirs",
        "algorithm": algorithm,
        "their_algorithm": args.algorithm,
        "seed": seed,
        "iterations": iterations,
        "batch_size": args.batch_size,
        "num_particles": args.num_particles,
        "memory_size": args.memory_size if algorithm == "hmws" else None,
        "num_proposals": args.num_proposals_mws if algorithm == "hmws" else None,
        "eval_n": eval_n,
        "eval_k": eval_k,
        "records": records,
        "losses": [float(v) for v in stats.losses],
        "init_cpu_seconds": init_seconds,
        "sleep_pretraining_cpu_seconds": sleep_seconds,
        "patches": list(PATCHES),
        "threads": torch.get_num_threads(),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="their synthetic series into --out (.npz)")
    d.add_argument("--hmws", required=True)
    d.add_argument("--out", required=True)
    r = sub.add_parser("run", help="one training run of theirs")
    r.add_argument("--hmws", required=True)
    r.add_argument("--data", required=True)
    r.add_argument("--algorithm", choices=sorted(ALGORITHMS), required=True)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--iterations", type=int, required=True)
    r.add_argument("--evals", type=int, default=4, help="evaluations after the start, evenly spaced")
    r.add_argument("--eval-n", type=int, default=25)
    r.add_argument("--eval-k", type=int, default=100)
    r.add_argument("--repeats", type=int, default=1, help="evaluations at each point (the metric's own spread)")
    r.add_argument("--out", required=True)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    hmws = load_hmws(a.hmws)
    out = Path(a.out).resolve()
    if a.cmd == "data":
        make_data(hmws, out)
        return
    rec = run(
        hmws, Path(a.data).resolve(), a.algorithm, a.seed, a.iterations, a.evals, a.eval_n, a.eval_k, out.parent / "scratch" / out.stem, a.repeats
    )
    from wakesleep.io import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(rec))


if __name__ == "__main__":
    main()
