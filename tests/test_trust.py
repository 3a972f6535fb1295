"""Trust (issue 11): a checkpoint cannot run code, one run directory has one writer, a rejected run
leaves the directory as it was, and --resume refuses options that would change the run while it
lets the adjustable ones extend it (recorded in config.json)."""

from __future__ import annotations

import builtins
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from cli_helpers import TINY, rejected, run

from wakesleep.faults import FAULT_ENV
from wakesleep.runs import CHECKPOINT, LOCK_OWNER, load_checkpoint
from wakesleep.training import TrainConfig
from wakesleep.training.checkpoint import ends_at


def snapshot(d):
    """Every file under ``d`` with its bytes and modification time (None: no such directory)."""
    if not d.exists():
        return None
    return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ a checkpoint is data


class Plant:
    """Unpickling this calls ``open(path, "w")``: a file appears if the loader runs code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


@pytest.mark.parametrize(
    "command, name",
    [
        ("evaluate", "best.pt"),
        ("evaluate", "checkpoint.pt"),
        ("sample", "best.pt"),
        ("resume", "checkpoint.pt"),
        ("resume", "best.pt"),
    ],
)
def test_a_crafted_checkpoint_runs_no_code(copy, tmp_path, command, name):
    marker = tmp_path / "planted"
    real = torch.load(copy / name, weights_only=True)
    torch.save({**real, "model": {"x": Plant(marker)}}, copy / name)  # right format key, poisoned contents
    if name == "checkpoint.pt" and command == "evaluate":
        (copy / "best.pt").unlink()  # evaluate then reads checkpoint.pt
    argv = {
        "evaluate": ["evaluate", str(copy), "--k", "2", "--no-progress"],
        "sample": ["sample", str(copy), "--n", "4"],
        "resume": ["train", "--run-dir", str(copy), "--resume", "--no-progress"],
    }[command]
    rejected(argv, name, "refused", "io.open")  # builtins.open pickles as io.open
    assert not marker.exists()


def test_checkpoints_of_the_earlier_format_still_load(copy):
    """best.pt written before it had a "format" key, and a config.json without recorded options."""
    best = torch.load(copy / "best.pt", weights_only=True)
    torch.save({"model": best["model"], "epoch": best["epoch"]}, copy / "best.pt")
    config = json.loads((copy / "config.json").read_text())
    del config["options"]
    (copy / "config.json").write_text(json.dumps(config))
    code, out, err = run(["evaluate", str(copy), "--k", "2", "--no-progress"])
    assert code == 0 and "test log-likelihood" in out, err
    rejected(["train", "--run-dir", str(copy), "--resume", "--layers", "7", "--no-progress"], "--layers 7", "the run has --layers 5")
    code, out, err = run(["train", "--run-dir", str(copy), "--resume", "--epochs", "2", "--layers", "5", "--no-progress"])
    assert code == 0, err
    assert load_checkpoint(copy / CHECKPOINT)["epoch"] == 2


# ------------------------------------------------------------------ a rejected run changes nothing


@pytest.fixture
def little_memory(monkeypatch):
    monkeypatch.setattr(sys.modules["wakesleep.training.checks"], "available_memory", lambda device: 2**16)  # 64 KiB: less than one step of TINY


def test_a_run_too_large_for_memory_is_refused_before_anything_is_written(tmp_path, little_memory):
    err = rejected(["train", *TINY, "--run-dir", str(tmp_path / "new")], "available on cpu", "would fit", "--layers")
    assert "needs about" in err
    assert not (tmp_path / "new").exists()


def test_a_rejected_overwrite_leaves_the_old_run_as_it_was(copy, little_memory):
    before = snapshot(copy)
    rejected(["train", *TINY, "--run-dir", str(copy), "--overwrite"], "would fit")
    assert snapshot(copy) == before


def test_a_rejected_run_leaves_a_fresh_directory_uncreated(tmp_path):
    rejected(["train", *TINY, "--algorithm", "vae", "--run-dir", str(tmp_path / "new")], "VAE")
    rejected(["train", *TINY, "--seed", str(2**70), "--run-dir", str(tmp_path / "new")], "--seed", "2**32")
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------ --resume with other options


@pytest.mark.parametrize("how", [["--resume"], [*TINY, "--overwrite"]])
def test_temporaries_of_killed_runs_are_removed_on_start(copy, how):
    planted = [copy / f".{name}.k1ll3d.tmp" for name in ("checkpoint.pt", "metrics.jsonl", "best.pt", "config.json")]
    for p in planted:
        p.write_bytes(b"half a file")
    code, out, err = run(["train", "--run-dir", str(copy), "--no-progress", *how])
    assert code == 0, err
    assert [p for p in planted if p.exists()] == []


def test_resume_refuses_options_that_change_the_run_and_leaves_it_as_it_was(copy):
    before = snapshot(copy)
    err = rejected(
        ["train", "--run-dir", str(copy), "--resume", "--layers", "50", "--algorithm", "ws", "--epochs", "3", "--no-progress"],
        "--layers 50 (the run has --layers 5)",
        "--algorithm ws (the run has --algorithm rws)",
    )
    assert "--epochs" not in err  # adjustable: not named as a difference
    rejected(["train", "--run-dir", str(copy), "--resume", "--overwrite", "--no-progress"], "--overwrite")
    assert snapshot(copy) == before


def test_resume_extends_a_finished_run_exactly_and_records_the_change(tmp_path, copy):
    code, out, err = run(["evaluate", str(copy), "--k", "2", "--no-progress"])  # a result the resumed run must keep
    assert code == 0, err
    code, out, err = run(["train", "--run-dir", str(copy), "--resume", "--epochs", "2", "--no-progress"])
    assert code == 0 and "--epochs 2 (was 1)" in out, err
    config = json.loads((copy / "config.json").read_text())
    assert config["train"]["epochs"] == 2
    assert config["changes"][0]["after_epoch"] == 1 and config["changes"][0]["changed"] == {"epochs": [1, 2]}
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["epochs"] == 2 and [e["k"] for e in summary["evaluations"]] == [2]
    # bit for bit the run that was asked for two epochs from the start
    code, out, err = run(["train", *TINY, "--epochs", "2", "--run-dir", str(tmp_path / "whole")])
    assert code == 0, err
    a, b = load_checkpoint(copy / CHECKPOINT), load_checkpoint(tmp_path / "whole" / CHECKPOINT)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert summary["test_log_likelihood"] == json.loads((tmp_path / "whole" / "summary.json").read_text())["test_log_likelihood"]
    # fewer epochs than done: refused
    rejected(["train", "--run-dir", str(copy), "--resume", "--epochs", "1", "--no-progress"], "--epochs 2 or more")


def test_resume_adjusts_learning_rates(copy):
    code, out, err = run(["train", "--run-dir", str(copy), "--resume", "--epochs", "2", "--lr-p", "0.02", "--no-progress"])
    assert code == 0, err
    groups = {g["name"]: g["lr"] for g in load_checkpoint(copy / CHECKPOINT)["optimizer"]["param_groups"]}
    assert groups == {"p": 0.02, "q": 1e-3}


def test_resuming_a_finished_run_says_there_is_nothing_to_train(copy):
    code, out, err = run(["train", "--run-dir", str(copy), "--resume", "--no-progress"])
    assert code == 0, err
    assert "nothing more to train" in out and "--epochs" in out


@pytest.mark.parametrize(
    "stopped, ckpt, settings, ends",
    [
        ("epochs", {"epoch": 2}, {"epochs": 2}, True),
        ("epochs", {"epoch": 2}, {"epochs": 4}, False),
        ("early", {"epoch": 2, "since_best": 3}, {"epochs": 9, "patience": 3}, True),
        ("early", {"epoch": 2, "since_best": 3}, {"epochs": 9, "patience": 5}, False),
        ("time", {"epoch": 2, "seconds": 10.0}, {"epochs": 9, "max_seconds": 10.0}, True),
        ("time", {"epoch": 2, "seconds": 10.0}, {"epochs": 9, "max_seconds": 30.0}, False),
        ("early", {"epoch": 9, "since_best": 3}, {"epochs": 9, "patience": 5}, True),
    ],
)
def test_a_finished_run_goes_on_when_the_setting_it_stopped_on_is_raised(stopped, ckpt, settings, ends):
    assert ends_at({**ckpt, "finished": True, "stopped": stopped}, TrainConfig(**settings)) is ends


# ------------------------------------------------------------------ one writer


def test_a_second_writer_is_refused_with_the_first_ones_process_id(tmp_path):
    d = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    first = subprocess.Popen(
        [sys.executable, "-m", "wakesleep", "train", *TINY, "--epochs", "100000", "--run-dir", str(d)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (d / CHECKPOINT).exists():  # the first is training
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        assert json.loads((d / LOCK_OWNER).read_text())["pid"] == first.pid
        config = (d / "config.json").read_bytes()
        pid = f"process {first.pid}"
        rejected(["train", *TINY, "--layers", "7", "--run-dir", str(d), "--overwrite"], pid)
        rejected(["train", "--run-dir", str(d), "--resume", "--no-progress"], pid)
        code, out, err = run(["evaluate", str(d), "--k", "2", "--no-progress"])  # reads, and does not record
        assert code == 0 and "test log-likelihood" in out and "not recorded" in err and pid in err, err
        assert not (d / "summary.json").exists()
        assert (d / "config.json").read_bytes() == config
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM, err
    assert err.splitlines()[-1] == "wakesleep train: stopped by SIGTERM; the last checkpoint is kept (resume with --resume)"
    assert not (d / LOCK_OWNER).exists()
    # The lock went with the process: the run continues, as the first one configured it.
    done = load_checkpoint(d / CHECKPOINT)["epoch"]
    code, out, err = run(["train", "--run-dir", str(d), "--resume", "--epochs", str(done + 1), "--no-progress"])
    assert code == 0, err
    assert load_checkpoint(d / CHECKPOINT)["epoch"] == done + 1


def test_a_killed_holders_stale_record_is_not_named(tmp_path):
    """A holder killed with SIGKILL leaves .lock-owner.json behind (its lock goes with it); the
    refusal names only a live process's record."""
    from wakesleep.runs import _owner

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"host": __import__("socket").gethostname(), "command": "train", "since": "then"}
    (tmp_path / LOCK_OWNER).write_text(json.dumps({**record, "pid": int(dead.stdout)}))
    assert _owner(tmp_path, wait=0.1) == "a process that is just starting or stopping"
    (tmp_path / LOCK_OWNER).write_text(json.dumps({**record, "pid": os.getpid()}))
    assert _owner(tmp_path, wait=0.1).startswith(f"process {os.getpid()} on ")


# ------------------------------------------------------------------ code runs only where the user names it (issue 23)

EVIL = """
open({marker!r}, "w").write("imported")


def f(data_dim=None):
    raise SystemExit("the factory ran")
"""


@pytest.mark.parametrize("command", ["evaluate", "sample", "fid", "resume"])
def test_a_run_directory_that_names_a_model_file_runs_no_code(copy, tmp_path, command):
    marker, evil = tmp_path / "imported", tmp_path / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    config = json.loads((copy / "config.json").read_text())
    config["model"] = {"kind": "user", "spec": f"{evil}:f", "data_dim": 64}  # an edited config.json
    (copy / "config.json").write_text(json.dumps(config))
    argv = {
        "evaluate": ["evaluate", str(copy), "--k", "2", "--no-progress"],
        "sample": ["sample", str(copy), "--n", "2"],
        "fid": ["fid", str(copy), "--cache-dir", str(tmp_path)],
        "resume": ["train", "--run-dir", str(copy), "--resume", "--epochs", "2", "--no-progress"],
    }[command]
    rejected(argv, "config.json", f"--model {evil}:f", "runs no code")
    assert not marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "sample"])
def test_a_run_directory_that_names_a_data_factory_runs_no_code(copy, tmp_path, command):
    """A config.json edited to stream its data from a file: evaluate and sample do not import it."""
    marker, evil = tmp_path / "imported", tmp_path / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    config = json.loads((copy / "config.json").read_text())
    config["data"]["data_from"] = f"{evil}:f"
    (copy / "config.json").write_text(json.dumps(config))
    if command == "evaluate":
        rejected(["evaluate", str(copy), "--k", "2", "--no-progress"], f"--data-from {evil}:f", "runs no code")
    else:  # sample draws its picture without the data
        assert run(["sample", str(copy), "--n", "2"])[0] == 0
    assert not marker.exists()


def test_a_compare_run_json_that_names_a_model_file_runs_no_code(copy, tmp_path):
    marker, evil = tmp_path / "imported", tmp_path / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    (copy / "config.json").unlink()  # a compare run as written before compare recorded config.json
    (copy / "best.pt").unlink()
    ckpt = torch.load(copy / CHECKPOINT, weights_only=True)
    torch.save({**ckpt, "model_config": None}, copy / CHECKPOINT)
    (copy / "run.json").write_text(json.dumps({"data": ["digits", None], "model": {"spec": f"{evil}:f"}}))
    rejected(["evaluate", str(copy), "--k", "2", "--no-progress"], "run.json", "--model")
    assert not marker.exists()


def test_a_run_of_a_users_model_opens_with_the_same_model_named(tmp_path):
    import numpy as np

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = f"{root}/examples/gmm.py:mixture"
    sys.path.insert(0, f"{root}/examples")
    import gmm

    np.savez(tmp_path / "gmm.npz", train=gmm.make_data(300).numpy(), valid=gmm.make_data(50, 1).numpy(), test=gmm.make_data(50, 2).numpy())
    d = tmp_path / "run"
    common = ["--dataset", str(tmp_path / "gmm.npz"), "--run-dir", str(d), "--no-progress"]
    code, _, err = run(["train", "--model", spec, "--algorithm", "rws", "--k", "5", "--epochs", "1", "--test-k", "10", "--valid-k", "5", *common])
    assert code == 0, err
    code, out, err = run(["evaluate", str(d), "--model", spec, "--k", "10", "--no-progress"])
    assert code == 0 and "exact:" in out, err  # the mixture's exact log p(x), beside the estimate
    rejected(["evaluate", str(d), "--model", f"{root}/examples/hmm.py:hmm", "--k", "10"], "is not the model", f"--model {spec}")
    rejected(["sample", str(d), "--n", "4"], f"--model {spec}")
    code, _, err = run(["sample", str(d), "--model", spec, "--n", "4"])
    assert code == 0, err
    rejected(["train", "--run-dir", str(d), "--resume", "--epochs", "2", "--no-progress"], f"--model {spec}")
    code, _, err = run(["train", "--model", spec, "--run-dir", str(d), "--resume", "--epochs", "2", "--no-progress"])
    assert code == 0, err


def test_a_builtin_models_run_refuses_a_model_named_for_it(trained, tmp_path):
    rejected(["evaluate", str(trained), "--model", "examples/gmm.py:mixture", "--k", "2"], "built-in sbn", "drop --model")


# ------------------------------------------------------------------ a run resumes on the data it started on (issue 23)


def test_resume_refuses_data_swapped_since_the_run_started(tmp_path):
    import numpy as np

    from wakesleep.data import digits, fingerprint

    data = digits()
    path = tmp_path / "mine.npz"
    np.savez(path, train=data.train.numpy(), valid=data.valid.numpy(), test=data.test.numpy())
    d = tmp_path / "run"
    code, _, err = run(["train", *TINY[2:], "--dataset", str(path), "--run-dir", str(d)])
    assert code == 0, err
    recorded = json.loads((d / "config.json").read_text())["data"]["fingerprint"]
    assert recorded == fingerprint(data)
    swapped = data.train.numpy().copy()
    swapped[0] = 1 - swapped[0]  # one datapoint differs: the same file name, shapes and dtype
    np.savez(path, train=swapped, valid=data.valid.numpy(), test=data.test.numpy())
    before = snapshot(d)
    err = rejected(["train", "--run-dir", str(d), "--resume", "--epochs", "2", "--no-progress"], str(path), recorded, "not the data it started on")
    from wakesleep.data import load_dataset

    assert fingerprint(load_dataset(path)) in err
    assert snapshot(d) == before
    np.savez(path, train=data.train.numpy(), valid=data.valid.numpy(), test=data.test.numpy())  # the data restored: it resumes
    code, _, err = run(["train", "--run-dir", str(d), "--resume", "--epochs", "2", "--no-progress"])
    assert code == 0, err
