"""Long runs (slow; run with `pytest -m slow tests/test_soak.py`): many epochs on `digits` with
periodic checkpoints, validation and resumption; memory must not grow and metrics stay finite."""

from __future__ import annotations

import math
import os

import pytest
import torch

from wakesleep.data import digits
from wakesleep.estimators import RWS
from wakesleep.models import HelmholtzMachine
from wakesleep.plots import read_jsonl
from wakesleep.train import METRICS, train


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
        train(model, RWS(k=5), data.train, data.valid, epochs=25 * chunk, batch_size=50, run_dir=tmp_path,
              resume=chunk > 1, progress=False, valid_k=50, checkpoint_every=7, patience=None)
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
