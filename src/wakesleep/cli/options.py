"""What every command's options share: the error a bad option raises, the argument types, and the device."""

from __future__ import annotations

import argparse

import torch

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
