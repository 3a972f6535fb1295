"""TrainConfig(tensorboard=True): the metrics as TensorBoard scalars beside metrics.jsonl, read back
with TensorBoard's own reader; the same numbers after a resume; a clear error without the package."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from wakesleep.data import digits
from wakesleep.estimators import RWS
from wakesleep.models import HelmholtzMachine
from wakesleep.plots import read_jsonl
from wakesleep.runs import METRICS
from wakesleep.training import TrainConfig, train

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
CFG = {"batch_size": 100, "progress": False, "valid_k": 5, "seed": 3, "patience": None}


@pytest.fixture(scope="module")
def data():
    return digits()


def fit(run, data, epochs, resume=False):
    torch.manual_seed(1)
    model = HelmholtzMachine.sbn([64, 8])
    return train(model, RWS(k=3), data.train[:300], data.valid[:50], epochs=epochs, run_dir=run, resume=resume, tensorboard=True, **CFG)


def scalars(run) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def from_metrics(run) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as TensorBoard keeps it: (epoch, value as float32) per key other than the epoch."""
    records = read_jsonl(run / METRICS)
    keys = [k for k in records[0] if k != "epoch"]
    return {k: [(r["epoch"], float(np.float32(r[k]))) for r in records] for k in keys}


@needs_tensorboard
def test_scalars_equal_the_metrics_file(tmp_path, data):
    fit(tmp_path, data, epochs=3)
    assert list(tmp_path.glob("events.out.tfevents.*"))  # beside metrics.jsonl
    want = from_metrics(tmp_path)
    assert {"train_objective", "valid_log_likelihood", "time"} <= set(want)
    assert scalars(tmp_path) == want


@needs_tensorboard
def test_a_resumed_run_shows_each_epoch_once(tmp_path, data):
    fit(tmp_path, data, epochs=2)
    fit(tmp_path, data, epochs=4, resume=True)
    got, want = scalars(tmp_path), from_metrics(tmp_path)
    assert [step for step, _ in got["valid_log_likelihood"]] == [1, 2, 3, 4]
    assert got == want


def test_without_the_package_the_error_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ValueError, match="pip install tensorboard"):
        TrainConfig(tensorboard=True)


def test_tensorboard_needs_a_run_directory(data):
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip("tensorboard is not installed")
    with pytest.raises(ValueError, match="run_dir"):
        train(HelmholtzMachine.sbn([64, 8]), RWS(k=3), data.train[:100], epochs=1, tensorboard=True, progress=False)
