"""Corrupt or mismatched files get a clear error naming the file and what is wrong: exit status 2,
one line on stderr, never a traceback from inside torch, never a silent wrong run."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch

from wakesleep.cli import main

TINY = ["--dataset", "digits", "--layers", "5", "--epochs", "1", "--valid-k", "2", "--test-k", "5", "--no-progress"]


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    code, out, err = run(["train", *TINY, "--run-dir", str(d), "--overwrite"])
    assert code == 0, err
    return d


@pytest.fixture
def copy(trained, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(trained, d)
    return d


def rejected(argv, *needles):
    code, _, err = run(argv)
    assert code == 2, (code, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_trained_run_evaluates(trained):
    code, out, err = run(["evaluate", str(trained), "--k", "5", "--no-progress"])
    assert code == 0 and "test log-likelihood" in out, err


def test_missing_run_directory(tmp_path):
    rejected(["evaluate", str(tmp_path / "nope")], "nope", "not a run directory")


@pytest.mark.parametrize("name", ["best.pt", "checkpoint.pt"])
def test_truncated_checkpoint(copy, name):
    raw = (copy / name).read_bytes()
    (copy / name).write_bytes(raw[: len(raw) // 3])
    if name == "checkpoint.pt":
        (copy / "best.pt").unlink()
        rejected(["evaluate", str(copy)], "checkpoint.pt", "truncated")
        rejected(["train", *TINY, "--epochs", "2", "--run-dir", str(copy), "--resume"], "checkpoint.pt", "truncated")
    else:
        rejected(["evaluate", str(copy)], "best.pt", "truncated")


def test_foreign_checkpoint(copy):
    (copy / "best.pt").unlink()
    torch.save({"weights": torch.zeros(3)}, copy / "checkpoint.pt")
    rejected(["evaluate", str(copy)], "checkpoint.pt", "not a wakesleep checkpoint")
    (copy / "checkpoint.pt").write_text("hello")
    rejected(["sample", str(copy)], "checkpoint.pt")


def test_checkpoint_from_a_different_model(copy):
    cfg = json.loads((copy / "config.json").read_text())
    cfg["model"]["sizes"] = [64, 7]
    (copy / "config.json").write_text(json.dumps(cfg))
    rejected(["evaluate", str(copy)], "do not fit the model")
    rejected(["train", *TINY, "--epochs", "2", "--run-dir", str(copy), "--resume"], "checkpoint.pt", "model")


def test_corrupt_config(copy):
    (copy / "config.json").write_text("{ not json")
    rejected(["evaluate", str(copy)], "config.json", "corrupt")
    rejected(["train", *TINY, "--run-dir", str(copy), "--resume"], "config.json", "damaged")


def test_existing_run_is_not_overwritten_silently(trained):
    rejected(["train", *TINY, "--run-dir", str(trained)], "--resume", "--overwrite")


@pytest.mark.parametrize("arrays, needle", [
    ({"data": np.zeros((50, 3, 4, 2))}, "2-D array"),
    ({"train": np.zeros((5, 4)), "valid": np.zeros((5, 5)), "test": np.zeros((5, 4))}, "width"),
    ({"train": np.full((5, 4), 0.5), "valid": np.zeros((5, 4)), "test": np.zeros((5, 4))}, "binar"),
    ({"data": np.array(["a", "b"])}, "mine.npz"),
])
def test_data_files_with_wrong_shape_or_values(tmp_path, arrays, needle):
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    err = rejected(["train", "--dataset", str(path), "--model", "sbn", "--layers", "2", "--epochs", "1",
                    "--run-dir", str(tmp_path / "r"), "--no-progress"], needle)
    assert not (tmp_path / "r" / "checkpoint.pt").exists(), err


def test_corrupt_data_file(tmp_path):
    path = tmp_path / "mine.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip")
    rejected(["train", "--dataset", str(path), "--run-dir", str(tmp_path / "r"), "--no-progress"], "mine.npz")
