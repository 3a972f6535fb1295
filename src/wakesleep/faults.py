"""Fault injection for the reliability tests (``tests/test_faults.py``, ``docs/reliability.md``)."""

from __future__ import annotations

import os
import signal

FAULT_ENV = "WAKESLEEP_INJECT_FAULT"
_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Fault injection for the reliability tests: ``WAKESLEEP_INJECT_FAULT=name:n`` makes the
    process kill itself (SIGKILL, no clean-up) the n-th time it reaches point ``name``.

    Points: ``step`` (after a step's backward, before the update), ``validate``,
    ``write-<file name>`` (half of an atomic write's bytes written, e.g. ``write-checkpoint.pt``),
    ``evaluate`` (the command line's final test evaluation).  Costs one dictionary lookup when the variable is unset.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, nth = spec.rpartition(":")
    if point != name:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
