"""Data-parallel training: two gloo processes on the CPU.

- One synchronised step equals the single-process step on the union of the two shards.  Each
  rank draws its own particles and sleep samples; the test records every rank's RNG state before
  the step and replays both shards in one process with those states.  RWS's loss is a mean over
  the batch and over the sleep samples, so the mean of the two shard losses *is* the loss of the
  union batch (with the union of the particles and of the sleep samples); one Adam step on it from
  the same start must give the ranks' parameters to rounding (float64).
- The same for ALWS's step (model and kernel) with the same sleep samples on both ranks.
- A two-process run killed mid-epoch resumes from its checkpoint to exactly the parameters and
  metrics of an uninterrupted two-process run (every rank's RNG state and partial metric sums are
  saved): through the Python API with ``torch.multiprocessing``, and (``-m slow``) through
  ``torchrun -m wakesleep train``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cli_helpers import rws_digits

from wakesleep.estimators import ALWS, RWS
from wakesleep.faults import FAULT_ENV
from wakesleep.models import HelmholtzMachine
from wakesleep.plots import read_jsonl
from wakesleep.runs import CHECKPOINT, METRICS, load_checkpoint
from wakesleep.training import TrainConfig, build_optimizer, distributed, train_step

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _start(worker, *args) -> None:
    """Two worker processes, forked (no re-import of torch: seconds less per start than spawn)."""
    mp.start_processes(worker, args=args, nprocs=2, join=True, start_method="fork")


def _model():
    torch.manual_seed(0)
    return HelmholtzMachine.sbn([16, 6, 4]).double()


def _data():
    g = torch.Generator().manual_seed(1)
    return (torch.rand(8, 16, generator=g, dtype=torch.float64) < 0.4).double()


def _shard(x, rank):
    return x[rank::2]


def _step_worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model, est = _model(), RWS(k=3)
        opt = build_optimizer(model, est, TrainConfig(lr_p=1e-2, lr_q=1e-2))
        torch.manual_seed(100 + rank)  # each rank its own particles
        rng = torch.get_rng_state()
        _, bad = train_step(model, est, opt, _shard(_data(), rank))
        torch.save({"rng": rng, "bad": bad, "params": [p.detach().clone() for p in model.parameters()]}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_one_synchronised_rws_step_equals_the_step_on_the_union(tmp_path):
    _start(_step_worker, str(tmp_path / "store"), str(tmp_path / "rank"))
    ranks = [torch.load(tmp_path / f"rank.{r}", weights_only=False) for r in range(2)]
    assert ranks[0]["bad"] is None and ranks[1]["bad"] is None

    model, est = _model(), RWS(k=3)
    opt = build_optimizer(model, est, TrainConfig(lr_p=1e-2, lr_q=1e-2))
    start = [p.detach().clone() for p in model.parameters()]
    losses = []
    for r in range(2):
        torch.set_rng_state(ranks[r]["rng"])
        losses.append(est(model, _shard(_data(), r)).loss)
    opt.zero_grad()
    (0.5 * (losses[0] + losses[1])).backward()
    opt.step()
    moved = False
    for p, p0, a, b in zip(model.parameters(), start, ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)  # the ranks agree exactly (they apply the same averaged gradient)
        torch.testing.assert_close(a, p.detach(), rtol=1e-12, atol=1e-12)
        moved |= not torch.equal(a, p0)
    assert moved  # the step did something


def _alws_worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model, est = _model(), ALWS(sleep_samples=40, valid_samples=20, lam=1e-2).double()
        opt = build_optimizer(model, est, TrainConfig(lr_p=1e-2, lr_estimator=1e-2))
        torch.manual_seed(7)  # the same sleep samples on both ranks: only the wake batches differ
        _, bad = train_step(model, est, opt, _shard(_data(), rank))
        torch.save({"bad": bad, "params": [p.detach().clone() for p in list(model.parameters()) + list(est.parameters())]}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_one_synchronised_alws_model_step_with_fixed_sleep_samples_equals_the_union_step(tmp_path):
    """ALWS's loss is its kernel loss (a function of the sleep samples only) minus the mean over
    the wake batch of Ĵ(x_m); with the same sleep samples on both ranks, the mean of the two
    shard losses is the loss of the union wake batch."""
    _start(_alws_worker, str(tmp_path / "store"), str(tmp_path / "rank"))
    ranks = [torch.load(tmp_path / f"rank.{r}", weights_only=False) for r in range(2)]
    assert ranks[0]["bad"] is None and ranks[1]["bad"] is None

    model, est = _model(), ALWS(sleep_samples=40, valid_samples=20, lam=1e-2).double()
    opt = build_optimizer(model, est, TrainConfig(lr_p=1e-2, lr_estimator=1e-2))
    losses = []
    for r in range(2):
        torch.manual_seed(7)
        losses.append(est(model, _shard(_data(), r)).loss)
    opt.zero_grad()
    (0.5 * (losses[0] + losses[1])).backward()
    opt.step()
    for p, a, b in zip(list(model.parameters()) + list(est.parameters()), ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, p.detach(), rtol=1e-10, atol=1e-10)
    assert any(not torch.equal(a, p0) for a, p0 in zip(ranks[0]["params"], _model().parameters()))  # θ moved


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ARGS = rws_digits(epochs=2, seed=1, test_k=10)


def _torchrun(run_dir: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "wakesleep",
        *ARGS,
        "--run-dir",
        str(run_dir),
        *extra,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _train_worker(rank: int, store: str, run_dir: str, resume: bool, fault: str | None) -> None:
    from wakesleep.training import train

    torch.set_num_threads(1)
    if fault:
        os.environ[FAULT_ENV] = fault
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        g = torch.Generator().manual_seed(2)
        data = (torch.rand(120, 16, generator=g, dtype=torch.float64) < 0.4).double()
        train(
            _model(),
            RWS(k=2),
            data[:100],
            data[100:],
            run_dir=run_dir,
            resume=resume,
            epochs=2,
            batch_size=20,
            checkpoint_every=2,
            valid_k=3,
            seed=1,
            patience=None,
            progress=False,
        )
    finally:
        dist.destroy_process_group()


def _spawn_train(tmp_path, name: str, run_dir, resume=False, fault=None):
    _start(_train_worker, str(tmp_path / name), str(run_dir), resume, fault)


def _same_run(a_dir: Path, b_dir: Path) -> None:
    a, b = load_checkpoint(a_dir / CHECKPOINT), load_checkpoint(b_dir / CHECKPOINT)
    assert a["world_size"] == b["world_size"] == 2 and a["finished"] and b["finished"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]  # noqa: E731
    assert strip(read_jsonl(b_dir / METRICS)) == strip(read_jsonl(a_dir / METRICS))


def test_two_process_run_resumes_mid_epoch(tmp_path):
    _spawn_train(tmp_path, "store-ref", tmp_path / "ref")
    # 50 rows per rank, 10 per rank and step: 5 steps an epoch, checkpoints at steps 2, 4, 5, 6;
    # both ranks die at step 8, inside epoch 2, after the checkpoint of step 6.
    with pytest.raises(mp.ProcessExitedException):
        _spawn_train(tmp_path, "store-killed", tmp_path / "run", fault="step:8")
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert (ckpt["epoch"], ckpt["batch"]) == (1, 1) and len(ckpt["ranks"]) == 2
    _spawn_train(tmp_path, "store-resumed", tmp_path / "run", resume=True)
    _same_run(tmp_path / "ref", tmp_path / "run")


@pytest.mark.slow
def test_two_process_torchrun_run_resumes_from_its_checkpoint(tmp_path):
    ref = _torchrun(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "2 processes" in ref.stdout
    # digits: 1297 rows, 649 per rank, 100 per rank and step: 7 steps an epoch; killed at step 10
    # (epoch 2, after the mid-epoch checkpoint at step 8), both ranks at once.
    killed = _torchrun(tmp_path / "run", fault="step:10")
    assert killed.returncode != 0
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["batch"] == 1  # 7 + 1 steps done
    resumed = _torchrun(tmp_path / "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_run(tmp_path / "ref", tmp_path / "run")


def test_shards_are_equal_and_cover_the_data():
    order = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    parts = [distributed.shard(order, r, 3) for r in range(3)]
    assert {p.numel() for p in parts} == {4}
    assert set(torch.cat(parts).tolist()) == set(range(11))
    assert torch.equal(distributed.shard(order, 0, 1), order)


def test_batch_must_split_evenly_over_processes(monkeypatch):
    from wakesleep.training import train

    monkeypatch.setattr(distributed, "world", lambda: (0, 2))  # rank 0 of 2, without a process group
    with pytest.raises(ValueError, match="divisible"):
        train(_model().float(), RWS(k=2), _data().float(), batch_size=3, epochs=1, progress=False)
