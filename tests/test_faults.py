"""Runs killed with SIGKILL at several points, or stopped by SIGTERM from outside at random moments,
lose nothing already written, leave no temporary file once resumed, and ``--resume`` reproduces the
uninterrupted run's parameters and metrics exactly."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from cli_helpers import rws_digits

from wakesleep.faults import FAULT_ENV
from wakesleep.plots import read_jsonl
from wakesleep.runs import CHECKPOINT, LOCK_OWNER, METRICS, load_checkpoint

ARGS = rws_digits(epochs=3, seed=1)


def command(run_dir, *extra):
    return [sys.executable, "-m", "wakesleep", *ARGS, "--run-dir", str(run_dir), *extra]


def environment(fault=None):
    env = dict(os.environ)
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return env


def run_cli(run_dir, *extra, fault=None):
    return subprocess.run(command(run_dir, *extra), env=environment(fault), capture_output=True, text=True, timeout=300)


def temporaries(run_dir):
    return sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp"))


STOPPED = "wakesleep train: stopped by SIGTERM; the last checkpoint is kept (resume with --resume)"


def assert_same_as(reference, run_dir, what):
    a = load_checkpoint(reference / CHECKPOINT)["model"]
    b = load_checkpoint(run_dir / CHECKPOINT)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), (what, key)
    assert strip_time(read_jsonl(run_dir / METRICS)) == strip_time(read_jsonl(reference / METRICS))
    sa = json.loads((reference / "summary.json").read_text())
    sb = json.loads((run_dir / "summary.json").read_text())
    assert sa["test_log_likelihood"] == sb["test_log_likelihood"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    r = run_cli(d)
    assert r.returncode == 0, r.stderr
    return d


def strip_time(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


# digits: 1297 rows / 200 = 7 steps an epoch, 21 in all; checkpoints every 2 steps and each epoch.
# Four points run by default; the rest with `-m slow` (each costs two process start-ups).
FAULTS = ["step:6", "write-checkpoint.pt:3", "validate:2", "evaluate:1"] + [
    pytest.param(f, marks=pytest.mark.slow) for f in ("step:1", "step:15", "write-metrics.jsonl:2", "write-best.pt:1")
]


@pytest.mark.parametrize("fault", FAULTS)
def test_killed_run_resumes_to_the_same_result(tmp_path, reference, fault):
    killed = run_cli(tmp_path, fault=fault)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    # What was written is readable: a complete checkpoint (if any) and whole metric lines.
    if (tmp_path / CHECKPOINT).exists():
        load_checkpoint(tmp_path / CHECKPOINT)
    if (tmp_path / METRICS).exists():
        read_jsonl(tmp_path / METRICS)
    resumed = run_cli(tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_as(reference, tmp_path, fault)
    assert temporaries(tmp_path) == []  # a kill mid-write leaves one; the resumed run removes it


def stop_at_random(run_dir, rng, sig, high=3.0):
    """Start the run (resuming it once it has a config); once it holds the run directory (its
    signal handler is in place by then), send ``sig`` after a random delay; return the process's
    (return code, stderr)."""
    extra = ["--resume"] if (run_dir / "config.json").exists() else []
    p = subprocess.Popen(command(run_dir, *extra), env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads((run_dir / LOCK_OWNER).read_text())["pid"] == p.pid:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, high))
    p.send_signal(sig)
    _, err = p.communicate(timeout=300)
    return p.returncode, err


def test_stopped_from_outside_at_random_moments(tmp_path, reference):
    """SIGTERM (as schedulers and `docker stop` send) and SIGKILL at random moments, three in a
    row, not at the built-in fault points; then the resumed run is the uninterrupted one.  A run that
    finished before its first signal (the delays are random, the run's length is the machine's) is
    started over with delays half as long, so that some SIGTERM lands inside the run."""
    rng = random.Random(11)
    high = 3.0
    for _ in range(5):
        codes = []
        for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGTERM):
            code, err = stop_at_random(tmp_path, rng, sig, high)
            codes.append(code)
            complete = (tmp_path / "summary.json").exists() and load_checkpoint(tmp_path / CHECKPOINT)["finished"]
            if code == 0 or code == -sig and complete:  # the signal came after main() returned: the run was complete
                break
            if sig == signal.SIGTERM:  # handled: one line, exit status 143
                assert code == 128 + signal.SIGTERM, (code, err[-2000:])
                assert "Traceback" not in err and err.splitlines()[-1] == STOPPED, err[-2000:]
            else:
                assert code == -signal.SIGKILL, (code, err[-2000:])
        if 128 + signal.SIGTERM in codes:
            break
        shutil.rmtree(tmp_path)  # every signal came too late: again, from nothing, with shorter delays
        tmp_path.mkdir()
        high /= 2
    assert 128 + signal.SIGTERM in codes, codes
    resumed = run_cli(tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_as(reference, tmp_path, f"random stops {codes}")
    assert temporaries(tmp_path) == []
