"""Bad input, tried systematically with hypothesis: every case gets a clear error before training
starts (exit status 2 and a one-line message from the command line, never a traceback; a
``ValueError``/``DataError`` naming the problem from the Python API).

Run with ``--hypothesis-show-statistics`` to see how many cases each property tried.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wakesleep.cli import main
from wakesleep.data import DataError, load_npz
from wakesleep.estimators import ESTIMATORS, IWAE, RWS, VAE, WakeSleep
from wakesleep.models import HelmholtzMachine
from wakesleep.training import TrainConfig, train

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run_cli(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse rejects bad values with exit status 2
            code = e.code
    return code, err.getvalue()


def assert_clean_rejection(code, err, *needles):
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    assert "error" in err.lower(), err
    for n in needles:
        assert n.lower() in err.lower(), (n, err)


not_positive_int = st.one_of(
    st.integers(max_value=0).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(min_size=1, max_size=8).filter(lambda s: not s.strip().lstrip("+").isdigit()),
)


@FAST
@given(
    option=st.sampled_from(["--k", "--epochs", "--batch-size", "--valid-k", "--test-k", "--samples", "--patience", "--checkpoint-every"]),
    value=not_positive_int,
)
def test_counts_must_be_positive_integers(option, value):
    with tempfile.TemporaryDirectory() as d:
        code, err = run_cli(["train", f"{option}={value}", "--run-dir", d, "--no-progress"])
        assert_clean_rejection(code, err, option)
        assert not (Path(d) / "checkpoint.pt").exists()


not_positive_float = st.one_of(
    st.floats(max_value=0.0, allow_nan=False).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "abc", ""]),
)


@FAST
@given(option=st.sampled_from(["--lr-p", "--lr-q", "--max-seconds"]), value=not_positive_float)
def test_rates_and_budgets_must_be_positive_finite(option, value):
    code, err = run_cli(["train", f"{option}={value}", "--no-progress"])
    assert_clean_rejection(code, err, option)


@FAST
@given(
    option=st.sampled_from(["--algorithm", "--model", "--q-update", "--likelihood", "--clock"]),
    name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=10),
)
def test_unknown_names_are_rejected_with_the_choices(option, name):
    valid = {
        "--algorithm": sorted(ESTIMATORS),
        "--model": ["sbn", "gaussian"],
        "--q-update": ["wake", "sleep", "both"],
        "--likelihood": ["bernoulli", "gaussian"],
        "--clock": ["wall", "process"],
    }
    if name in valid[option]:
        return
    code, err = run_cli(["train", f"{option}={name}", "--no-progress"])
    # --model also takes FILE.py:FACTORY, so it is not an argparse choice: its message lists the names
    assert_clean_rejection(code, err, *(["sbn, gaussian, FILE.py:FACTORY"] if option == "--model" else ["invalid choice"]))


@FAST
@given(name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12))
def test_unknown_dataset_names_list_the_valid_ones(name):
    if name in ("digits", "binarized-mnist", "mnist-gray"):
        return
    with tempfile.TemporaryDirectory() as d:
        code, err = run_cli(["train", f"--dataset={name}", "--run-dir", d, "--no-progress"])
        assert_clean_rejection(code, err, "digits")
        assert not (Path(d) / "checkpoint.pt").exists()


@FAST
@given(
    field=st.sampled_from(["epochs", "batch_size", "valid_k", "valid_every", "patience", "checkpoint_every"]),
    value=st.one_of(st.integers(max_value=0), st.floats(), st.booleans(), st.text(max_size=3)),
)
def test_trainer_counts_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


@FAST
@given(
    field=st.sampled_from(["lr_p", "lr_q", "lr_estimator"]),
    value=st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf), st.text(max_size=3)),
)
def test_trainer_rates_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


@FAST
@given(k=st.one_of(st.integers(max_value=0), st.floats(), st.booleans()))
def test_estimators_reject_bad_particle_counts(k):
    for cls in (RWS, IWAE, VAE):
        with pytest.raises(ValueError):
            cls(k=k)
    with pytest.raises(ValueError):
        WakeSleep(samples=k)


# ------------------------------------------------------------------ data arrays


@st.composite
def bad_binary_data(draw):
    """A [N, 12] array with one kind of fault: NaN/inf, a non-binary value, or an empty split."""
    n = draw(st.integers(1, 20))
    x = np.array(draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n * 12, max_size=n * 12)), dtype=np.float32).reshape(n, 12)
    fault = draw(st.sampled_from(["nan", "inf", "nonbinary", "empty"]))
    if fault == "empty":
        return fault, x[:0]
    i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, 11))
    x[i, j] = {
        "nan": np.nan,
        "inf": draw(st.sampled_from([np.inf, -np.inf])),
        "nonbinary": draw(st.floats(-1e6, 1e6).filter(lambda v: float(np.float32(v)) not in (0.0, 1.0))),
    }[fault]
    return fault, x


@FAST
@given(case=bad_binary_data())
def test_bad_arrays_are_rejected_before_training(case):
    fault, x = case
    model = HelmholtzMachine.sbn([12, 3])
    with pytest.raises(ValueError) as info:
        train(model, RWS(k=2), x, epochs=1, progress=False)
    msg = str(info.value).lower()
    assert {"nan": "nan", "inf": "nan/inf", "nonbinary": "binarise", "empty": "non-empty"}[fault] in msg


@settings(max_examples=25, deadline=None)
@given(case=bad_binary_data(), keyed=st.booleans())
def test_bad_npz_files_are_rejected_by_the_command_line(case, keyed):
    fault, x = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "mine.npz"
        good = np.zeros((30, 12), dtype=np.float32)
        if keyed:
            np.savez(path, train=good, valid=x, test=good)
        else:
            np.savez(path, data=x if fault != "empty" else x)
        code, err = run_cli(
            ["train", "--dataset", str(path), "--model", "sbn", "--layers", "3", "--epochs", "1", "--run-dir", str(Path(d) / "run"), "--no-progress"]
        )
        assert_clean_rejection(code, err)
        assert "mine.npz" in err or "binary" in err.lower() or "bernoulli" in err.lower(), err
        assert not (Path(d) / "run" / "checkpoint.pt").exists()


@FAST
@given(width=st.integers(1, 40).filter(lambda w: w != 12))
def test_wrong_widths_are_rejected(width):
    model = HelmholtzMachine.sbn([12, 3])
    with pytest.raises(ValueError, match="width"):
        train(model, RWS(k=2), np.zeros((5, width), dtype=np.float32), epochs=1, progress=False)
    with pytest.raises(DataError, match="width"):
        with tempfile.TemporaryDirectory() as d:
            np.savez(Path(d) / "w.npz", train=np.zeros((5, 12)), valid=np.zeros((5, width)), test=np.zeros((5, 12)))
            load_npz(Path(d) / "w.npz")
