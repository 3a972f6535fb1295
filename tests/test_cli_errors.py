"""Corrupt or mismatched files get a clear error naming the file and what is wrong: exit status 2,
one line on stderr, never a traceback from inside torch, never a silent wrong run."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess

import numpy as np
import pytest
import torch
from cli_helpers import TINY, rejected, run


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


@pytest.mark.parametrize(
    "arrays, needle",
    [
        ({"data": np.zeros((50, 3, 4, 2))}, "2-D array"),
        ({"train": np.zeros((5, 4)), "valid": np.zeros((5, 5)), "test": np.zeros((5, 4))}, "width"),
        ({"train": np.full((5, 4), 0.5), "valid": np.zeros((5, 4)), "test": np.zeros((5, 4))}, "binar"),
        ({"data": np.array(["a", "b"])}, "mine.npz"),
    ],
)
def test_data_files_with_wrong_shape_or_values(tmp_path, arrays, needle):
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    err = rejected(
        ["train", "--dataset", str(path), "--model", "sbn", "--layers", "2", "--epochs", "1", "--run-dir", str(tmp_path / "r"), "--no-progress"],
        needle,
    )
    assert not (tmp_path / "r" / "checkpoint.pt").exists(), err


def test_corrupt_data_file(tmp_path):
    path = tmp_path / "mine.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip")
    rejected(["train", "--dataset", str(path), "--run-dir", str(tmp_path / "r"), "--no-progress"], "mine.npz")


# ------------------------------------------------------------------ issue 11: one line, not a traceback


@contextlib.contextmanager
def unwritable(d):
    """``d`` cannot be written in, for this user: chmod for a user, the immutable attribute for root
    (whom permissions do not stop)."""
    if os.geteuid() != 0:
        d.chmod(0o555)
        try:
            yield
        finally:
            d.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
        pytest.skip("root cannot make a directory unwritable here (chattr +i failed)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(d)], check=True)


def test_run_directories_that_cannot_hold_a_run(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    rejected(["train", *TINY, "--run-dir", str(afile)], "is a file")
    rejected(["train", *TINY, "--run-dir", str(afile / "sub")], "lies under", "afile")
    rejected(["train", *TINY, "--run-dir", str(tmp_path / ("x" * 300))], "too long")
    locked = tmp_path / "locked"
    locked.mkdir()
    with unwritable(locked):
        rejected(["train", *TINY, "--run-dir", str(locked / "run")], "not writable")
    assert afile.read_text() == "x" and list(locked.iterdir()) == []


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--hidden", "-5"], ["--hidden", ">= 1"]),
        (["--q-hidden", "-2"], ["--q-hidden", ">= 1"]),
        (["--device", "tpu"], ["--device", "cpu, cuda"]),
        (["--seed", str(2**70)], ["--seed", "2**32 - 1"]),
        (["--layers", "1000000000"], ["needs about", "available on cpu", "would fit"]),  # refused before allocating
        (["--layers", "3", "99999999999999999999"], ["--layers", "at most 2**30", "99999999999999999999"]),  # not an overflow inside torch
        (["--model", "gaussian", "--hidden", "1073741825"], ["--hidden", "at most 2**30"]),
    ],
)
def test_bad_option_values_are_one_line(tmp_path, extra, needles):
    rejected(["train", *TINY, *extra, "--run-dir", str(tmp_path / "r")], *needles)
    assert not (tmp_path / "r").exists()


def test_a_plain_npy_file_as_dataset(tmp_path):
    np.save(tmp_path / "mine.npy", np.zeros((10, 4)))
    rejected(["train", "--dataset", str(tmp_path / "mine.npy"), "--run-dir", str(tmp_path / "r"), "--no-progress"], "mine.npy", "numpy.savez")


def test_non_binary_data_names_the_split(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, train=np.zeros((5, 4)), valid=np.full((5, 4), 0.5), test=np.zeros((5, 4)))
    rejected(["train", "--dataset", str(path), "--run-dir", str(tmp_path / "r"), "--no-progress"], "split 'valid'", "row 0, column 0")


def test_truncated_best_when_resuming_a_finished_run(copy):
    raw = (copy / "best.pt").read_bytes()
    (copy / "best.pt").write_bytes(raw[: len(raw) // 3])
    rejected(["train", "--run-dir", str(copy), "--resume", "--no-progress"], "best.pt", "truncated")


def test_evaluate_in_a_read_only_run_directory(copy):
    with unwritable(copy):
        code, out, err = run(["evaluate", str(copy), "--k", "2", "--no-progress"])
    assert code == 2 and "test log-likelihood" in out, (code, err)
    assert "Traceback" not in err and err.count("\n") == 1 and "not recorded" in err and "writable" in err, err


def test_help_shows_defaults_and_no_markup():
    code, out, _ = run(["train", "--help"])
    assert code == 0
    text = " ".join(out.split())
    for default in ("passes over the training data (default: 100", "datapoints per step (default: 100)", "(default: 0)"):
        assert default in text, default
    code, out, _ = run(["--help"])
    assert code == 0 and "``" not in out and "wakesleep train" in out


def test_sample_keeps_the_grid_training_drew(copy):
    before = (copy / "samples.png").read_bytes()
    code, out, err = run(["sample", str(copy), "--n", "4", "--seed", "3"])
    assert code == 0, err
    assert (copy / "samples-4-seed3.png").is_file() and (copy / "samples.png").read_bytes() == before


def test_a_long_evaluation_says_how_long_it_will_take(trained, monkeypatch):
    import wakesleep.cli.results as cli  # evaluate's module (the command line is split by job)

    real = cli.report_log_likelihood

    def pilot_only(model, data, k, **kw):
        if k > cli.PILOT_K:  # the full evaluation: stop it as Ctrl-C would
            raise KeyboardInterrupt
        return real(model, data, k=k, **kw)

    monkeypatch.setattr(cli, "report_log_likelihood", pilot_only)
    code, out, err = run(["evaluate", str(trained), "--k", str(10**9), "--no-progress"])
    assert code == 130, err
    assert "will take about" in out and "K=1000000000" in out, out


@pytest.mark.parametrize(
    "option, needle",
    [("--algorithm=--", "invalid choice: '--'"), ("--q-update=--", "invalid choice: '--'"), ("--seed=--", "got '--'"), ("--lr-p=--", "got '--'")],
)
def test_a_value_of_two_dashes_is_checked_like_any_other(option, needle):
    # argparse hands `--opt=--` to the action as an empty list; found by test_properties' fuzzing
    rejected(["train", option, "--no-progress"], needle)


# ------------------------------------------------------------------ issue 23: files that are not what they say


@pytest.mark.parametrize(
    "write, needles",
    [
        (lambda p: np.save(p, np.zeros((3, 784))), ["plain .npy", "np.savez"]),
        (lambda p: p.write_bytes(b""), ["is empty"]),
        (lambda p: (np.savez(p, images=np.zeros((30, 784))), p.write_bytes(p.read_bytes()[:200])), ["truncated or not an .npz"]),
        (lambda p: p.write_text("hello"), ["truncated or not an .npz"]),
    ],
    ids=["npy", "empty", "truncated", "text"],
)
def test_fid_names_a_file_that_is_not_an_npz_of_images(tmp_path, write, needles):
    path = tmp_path / "images.npz"
    write(path)
    if not path.exists():  # np.save adds .npy to a name without it
        (tmp_path / "images.npz.npy").rename(path)
    rejected(["fid", str(path), "--cache-dir", str(tmp_path)], str(path), *needles)


def test_complex_data_is_refused_not_made_real(tmp_path):
    path = tmp_path / "waves.npz"
    x = np.exp(1j * np.linspace(0, 6, 40)).reshape(20, 2)
    np.savez(path, train=x[:10], valid=x[10:15], test=x[15:])
    rejected(
        ["train", "--dataset", str(path), "--model", "gaussian", "--run-dir", str(tmp_path / "r"), "--no-progress"], "waves.npz", "complex", "x.imag"
    )
    assert not (tmp_path / "r").exists()
    import wakesleep as ws

    with pytest.raises(ValueError, match="complex"):
        ws.train(ws.HelmholtzMachine.gaussian([2, 2]), ws.RWS(k=2), torch.as_tensor(x, dtype=torch.complex64), epochs=1, progress=False)


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path, monkeypatch):
    import errno

    import wakesleep.io

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    real = wakesleep.io.os.fsync
    written = []

    def full_at_the_checkpoint(fd):  # the disk fills up once the run has started: its first checkpoint
        written.append(os.readlink(f"/proc/self/fd/{fd}"))
        if ".checkpoint.pt." in written[-1]:
            full(fd)
        real(fd)

    monkeypatch.setattr(wakesleep.io.os, "fsync", full)
    rejected(["train", *TINY, "--run-dir", str(tmp_path / "r")], "no space left", str(tmp_path / "r" / ".lock-owner.json"), "free some space")
    monkeypatch.setattr(wakesleep.io.os, "fsync", full_at_the_checkpoint)
    rejected(["train", *TINY, "--run-dir", str(tmp_path / "s")], "no space left on the device to write", str(tmp_path / "s" / "checkpoint.pt"))
    assert not list((tmp_path / "s").glob(".*.tmp"))  # the temporary is removed
