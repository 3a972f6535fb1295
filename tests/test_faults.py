"""Runs killed with SIGKILL at several points lose nothing already written, and ``--resume``
reproduces the uninterrupted run's parameters and metrics exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from wakesleep.plots import read_jsonl
from wakesleep.train import CHECKPOINT, FAULT_ENV, METRICS, load_checkpoint

ARGS = [
    "train", "--algorithm", "rws", "--k", "3", "--dataset", "digits", "--layers", "10", "--epochs", "3",
    "--batch-size", "200", "--valid-k", "5", "--test-k", "20", "--checkpoint-every", "2", "--no-progress", "--seed", "1",
]


def run_cli(run_dir, *extra, fault=None):
    env = dict(os.environ)
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-m", "wakesleep", *ARGS, "--run-dir", str(run_dir), *extra],
                          env=env, capture_output=True, text=True, timeout=300)


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
    a = load_checkpoint(reference / CHECKPOINT)["model"]
    b = load_checkpoint(tmp_path / CHECKPOINT)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), (fault, key)
    assert strip_time(read_jsonl(tmp_path / METRICS)) == strip_time(read_jsonl(reference / METRICS))
    sa = json.loads((reference / "summary.json").read_text())
    sb = json.loads((tmp_path / "summary.json").read_text())
    assert sa["test_log_likelihood"] == sb["test_log_likelihood"]
