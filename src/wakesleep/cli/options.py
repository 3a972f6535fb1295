"""What every command's options share: the error a bad option raises, the argument types, a
command's parser, the run directory a command opens (with ``--model``), and the device."""

from __future__ import annotations

import argparse
import textwrap

import torch

from wakesleep.config import MAX_WIDTH
from wakesleep.training import MAX_SEED


class UsageError(ValueError):
    """Bad command-line input (the message names the fix)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # one line, not the usage block: the mistake and where the options are listed
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")

    def _get_values(self, action, arg_strings):
        # argparse drops a value of "--" (``--algorithm=--``) and hands the action an empty list,
        # which no choice or type check expects: check "--" as the value it was given.
        if action.nargs is None and action.option_strings and arg_strings == ["--"]:
            value = self._get_value(action, "--")  # the type check: "expected ..., got '--'"
            self._check_value(action, value)  # the choices: "invalid choice: '--' (choose from ...)"
            return value
        return super()._get_values(action, arg_strings)


def _typed(text: str, cast, ok, unreadable: str, out_of_range: str):
    """``cast(text)`` when it reads and ``ok`` holds of it, else an argparse error: ``unreadable`` or
    ``out_of_range``, formatted with ``text`` and the value ``v``."""
    try:
        v = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(unreadable.format(text=text)) from None
    if not ok(v):
        raise argparse.ArgumentTypeError(out_of_range.format(text=text, v=v))
    return v


def _positive_int(text: str) -> int:
    return _typed(text, int, lambda v: v >= 1, "expected an integer >= 1, got {text!r}", "expected an integer >= 1, got {v}")


def _nonnegative_int(text: str) -> int:
    return _typed(text, int, lambda v: v >= 0, "expected an integer >= 0, got {text!r}", "expected an integer >= 0, got {v}")


def _width(text: str) -> int:
    """A layer's number of units: an integer from 1 to :data:`wakesleep.config.MAX_WIDTH`."""
    return _typed(
        text,
        int,
        lambda v: 1 <= v <= MAX_WIDTH,
        "expected a number of units, an integer >= 1, got {text!r}",
        "expected a number of units, an integer >= 1 and at most 2**30 = 1073741824, got {v}: give a layer size that fits in memory",
    )


def _unit_interval(text: str) -> float:
    return _typed(text, float, lambda v: 0.0 <= v < 1.0, "expected a number in [0, 1), got {text!r}", "expected a number in [0, 1), got {text!r}")


def _positive_float(text: str) -> float:
    return _typed(
        text,
        float,
        lambda v: v > 0 and v != float("inf"),
        "expected a positive number, got {text!r}",
        "expected a positive finite number, got {text!r}",
    )


def _seed(text: str) -> int:
    return _typed(
        text,
        int,
        lambda v: 0 <= v <= MAX_SEED,
        f"expected an integer from 0 to {MAX_SEED}, got {{text!r}}",
        f"expected an integer from 0 to 2**32 - 1 = {MAX_SEED}, got {{v}}",
    )


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cpu"``, or ``"cuda"``/``"cuda:N"`` checked
    for availability.

    Raises:
        UsageError: an unknown device, or CUDA (or that GPU) asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r} is not a device wakesleep runs on; use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("CUDA is not available on this machine; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


DEVICE_OPTION = (("--device",), {"default": "cpu", "help": "cpu, cuda (cuda:N) or auto: CUDA when available (default: cpu)"})


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(*DEVICE_OPTION[0], **DEVICE_OPTION[1])


def add_command(sub, name: str, summary: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """Add command ``name``'s parser to ``sub`` (an argparse subparsers object) and return it:
    ``summary`` is its line in ``wakesleep --help``, ``description`` heads its own ``--help``, and
    ``epilog`` (a file format, an example) ends it as written, line for line."""
    if epilog is None:
        return sub.add_parser(name, help=summary, description=description)
    return sub.add_parser(
        name, help=summary, description=textwrap.fill(description, 100), epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


#: ``--model`` of the commands that open a run (evaluate, sample, fid): a run trained on a user's
#: model opens only when the command line names that model again (:func:`wakesleep.runs.load_run`).
MODEL_HELP = (
    "the model the run was trained with, when it is your own (FILE.py:FACTORY or package.module:FACTORY, as given to train): "
    "a run directory names code but never runs it unless you name it here too"
)


def add_run(p: argparse.ArgumentParser, what: str = "run directory") -> None:
    """The run a command opens: the positional ``run`` (help ``what``), ``--model`` and ``--data-from``."""
    p.add_argument("run", help=what)
    p.add_argument("--model", default=None, metavar="FILE.py:FACTORY", help=MODEL_HELP)
    p.add_argument(
        "--data-from", default=None, metavar="FILE.py:FACTORY", help="the factory of the data a streamed run was trained on, named again to open it"
    )
