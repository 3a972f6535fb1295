"""wakesleep.runs.read_run (both kinds of run directory in one form) and wakesleep.io's one rule for
the files it writes (atomic, the usual permissions)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from wakesleep import io
from wakesleep.estimators import RWS
from wakesleep.models import HelmholtzMachine
from wakesleep.runs import CHECKPOINT, COMPARE_RUN, CONFIG, CheckpointError, read_run
from wakesleep.training import train


def test_a_train_run_reads_back_as_its_config(tmp_path):
    config = {"model": {"kind": "sbn", "sizes": [4, 2]}, "data": {"dataset": "digits", "data_dir": None}, "test_k": 5}
    (tmp_path / CONFIG).write_text(json.dumps(config))
    assert read_run(tmp_path) == (config, tmp_path / CONFIG)


def test_a_compare_run_reads_back_in_the_same_form(tmp_path):
    torch.manual_seed(0)
    model = HelmholtzMachine.sbn([64, 4])
    train(model, RWS(k=2), torch.bernoulli(torch.full((20, 64), 0.5)), epochs=1, batch_size=10, progress=False, run_dir=tmp_path)
    (tmp_path / COMPARE_RUN).write_text(json.dumps({"data": ["digits", None], "model": {"layers": [4]}}))
    config, path = read_run(tmp_path)
    assert path == tmp_path / COMPARE_RUN
    assert config == {"model": model.config, "data": {"dataset": "digits", "data_dir": None}}


def test_what_is_not_a_run_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="not a run directory"):
        read_run(tmp_path)
    (tmp_path / CONFIG).write_text("{")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_run(tmp_path)
    (tmp_path / CONFIG).unlink()
    (tmp_path / COMPARE_RUN).write_text("[]")
    with pytest.raises(CheckpointError, match="damaged"):
        read_run(tmp_path)
    assert not (tmp_path / CHECKPOINT).exists()


def test_every_atomic_write_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    io.atomic_write_text(tmp_path / "a.txt", "x")
    io.atomic_savez(tmp_path / "b.npz", {"x": np.zeros(3)})
    io.write_jsonl(tmp_path / "c.jsonl", [{"a": 1}])
    for name in ("a.txt", "b.npz", "c.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert (tmp_path / "c.jsonl").read_text() == '{"a": 1}\n'


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    io.atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), io.atomic_file(tmp_path / "a.txt") as f:
        f.write(b"new, half")
        raise RuntimeError("interrupted")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
