"""What the command-line tests share: running ``wakesleep`` in-process, checking a one-line refusal,
and the small RWS run on digits that the fault, soak and distributed tests stop and resume."""

from __future__ import annotations

import contextlib
import io

from wakesleep.cli import main


def load_script(path):
    """A script of ``experiments/`` or ``benchmarks/`` (``path``) as a module, without running its main."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: A run of a few seconds on the embedded digits.
TINY = ["--dataset", "digits", "--layers", "5", "--epochs", "1", "--valid-k", "2", "--test-k", "5", "--no-progress"]


def run(argv):
    """``wakesleep ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def rejected(argv, *needles):
    """Assert ``wakesleep ARGV`` exits 2 with one line of error (no traceback) holding every needle; returns it."""
    code, _, err = run(argv)
    assert code == 2, (code, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


def rws_digits(epochs: int, seed: int, test_k: int = 20) -> list[str]:
    """``train`` arguments of an RWS run (K = 3) on digits in batches of 200, checkpointed every 2 steps."""
    return [
        *("train", "--algorithm", "rws", "--k", "3", "--dataset", "digits", "--layers", "10", "--epochs", str(epochs)),
        *("--batch-size", "200", "--valid-k", "5", "--test-k", str(test_k), "--checkpoint-every", "2", "--no-progress", "--seed", str(seed)),
    ]
