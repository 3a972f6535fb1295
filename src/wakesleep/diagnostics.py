"""Moved to :mod:`wakesleep.lab.diagnostics`; this name is that module (private names included)."""
import sys

from wakesleep.lab import diagnostics as _moved  # MOVED(shim)

sys.modules[__name__] = _moved  # MOVED(shim)
