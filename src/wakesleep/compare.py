"""Moved to :mod:`wakesleep.lab.compare`; this name is that module (so that monkeypatching it still works)."""
import sys

from wakesleep.lab import compare as _moved  # MOVED(shim)

sys.modules[__name__] = _moved  # MOVED(shim)
