"""Long runs (slow; run with `pytest -m slow tests/test_soak.py`): many epochs on `digits` with
periodic checkpoints, validation and resumption, where memory must not grow and metrics stay
finite; and the command line under random kills and rival writers."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from cli_helpers import rws_digits

from wakesleep.data import digits
from wakesleep.estimators import RWS
from wakesleep.faults import FAULT_ENV
from wakesleep.models import HelmholtzMachine
from wakesleep.plots import read_jsonl
from wakesleep.runs import CHECKPOINT, LOCK_OWNER, METRICS, load_checkpoint
from wakesleep.training import train


def rss_mib() -> float:
    """Current resident set size of this process, MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
def test_soak_memory_flat_and_metrics_finite(tmp_path):
    data = digits()
    torch.manual_seed(0)
    model = HelmholtzMachine.sbn([64, 50])
    rss = []
    for chunk in range(1, 9):  # 8 × 25 epochs, each chunk resuming the last one's checkpoint
        train(
            model,
            RWS(k=5),
            data.train,
            data.valid,
            epochs=25 * chunk,
            batch_size=50,
            run_dir=tmp_path,
            resume=chunk > 1,
            progress=False,
            valid_k=50,
            checkpoint_every=7,
            patience=None,
        )
        rss.append(rss_mib())
    records = read_jsonl(tmp_path / METRICS)
    assert [r["epoch"] for r in records] == list(range(1, 201))
    for r in records:
        for k, v in r.items():
            assert isinstance(v, (int, float)) and math.isfinite(v), (r["epoch"], k, v)
    # After warm-up (chunk 1: allocator pools, first imports), memory stays flat: 200 epochs, 5200
    # steps, 8 resumptions; growth under 25 MiB (one leaked [K,B,D] float tensor per step would be 60 MiB).
    assert max(rss[1:]) - rss[1] < 25, rss
    assert records[-1]["valid_log_likelihood"] > records[0]["valid_log_likelihood"]


# ------------------------------------------------------------------ the command line under random kills

SOAK_ARGS = rws_digits(epochs=3, seed=4)


def _cli(run_dir, *extra):
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    return subprocess.Popen(
        [sys.executable, "-m", "wakesleep", *SOAK_ARGS, "--run-dir", str(run_dir), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _holding(p, run_dir, timeout=120):
    """Wait until process ``p`` holds ``run_dir`` (or has ended)."""
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads((run_dir / LOCK_OWNER).read_text())["pid"] == p.pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)


RUNS = 5


def _complete(run_dir):
    return (run_dir / "summary.json").exists() and load_checkpoint(run_dir / CHECKPOINT)["finished"]


@pytest.mark.slow
def test_command_line_soak_random_kills_and_rival_writers(tmp_path):
    """Many short command-line runs, each stopped by SIGKILL or SIGTERM at random moments until it
    completes: every file stays readable, every run ends equal to the uninterrupted one, and no
    temporary file is left.  Then pairs of rival writers (``--overwrite``, so that only the lock
    can stop one) started together on one fresh directory: exactly one trains."""
    started = time.monotonic()
    reference = tmp_path / "reference"
    p = _cli(reference)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    want = load_checkpoint(reference / CHECKPOINT)["model"]
    want_metrics = [{k: v for k, v in r.items() if k != "time"} for r in read_jsonl(reference / METRICS)]

    rng = random.Random(2026)
    stops = {"SIGKILL": 0, "SIGTERM": 0}
    for trial in range(RUNS):
        d = tmp_path / f"run{trial}"
        while True:
            p = _cli(d, *(["--resume"] if (d / "config.json").exists() else []))
            _holding(p, d)
            time.sleep(rng.uniform(0.0, 5.0))
            sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
            if p.poll() is None:
                p.send_signal(sig)
            _, err = p.communicate(timeout=300)
            if p.returncode == 0 or p.returncode == -signal.SIGTERM and _complete(d):
                break  # (a SIGTERM after main() returned meets the default action: the run was complete)
            assert p.returncode in (-signal.SIGKILL, 128 + signal.SIGTERM), (p.returncode, err[-2000:])
            if p.returncode == 128 + signal.SIGTERM:
                assert "Traceback" not in err and err.count("\n") == 1, err[-2000:]
            stops[sig.name] += 1
            if (d / CHECKPOINT).exists():
                load_checkpoint(d / CHECKPOINT)
            if (d / METRICS).exists():
                read_jsonl(d / METRICS)
        got = load_checkpoint(d / CHECKPOINT)["model"]
        assert all(torch.equal(want[k], got[k]) for k in want), trial
        assert [{k: v for k, v in r.items() if k != "time"} for r in read_jsonl(d / METRICS)] == want_metrics
        assert [q.name for q in d.iterdir() if q.name.endswith(".tmp")] == []

    for pair in range(4):
        d = tmp_path / f"pair{pair}"
        rivals = [_cli(d, "--overwrite"), _cli(d, "--overwrite")]  # both pass the "already holds a run" check: the lock decides
        done = [(q.wait(timeout=300), q.stderr.read()) for q in rivals]
        codes = sorted(code for code, _ in done)
        assert codes == [0, 2], done
        loser = next(err for code, err in done if code == 2)
        assert "in use by process" in loser, loser
        assert load_checkpoint(d / CHECKPOINT)["model_config"] == json.loads((d / "config.json").read_text())["model"]
    print(
        f"\ncommand-line soak: {RUNS} runs completed through {stops['SIGKILL']} SIGKILLs and {stops['SIGTERM']} SIGTERMs; "
        f"4 rival pairs, one refused each; {time.monotonic() - started:.0f} s"
    )
    assert stops["SIGKILL"] + stops["SIGTERM"] >= RUNS  # the delays are drawn to land inside runs
