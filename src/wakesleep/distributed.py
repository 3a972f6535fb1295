"""Moved to :mod:`wakesleep.training.distributed`; this name is the same module object, so that
``from wakesleep import distributed`` and ``monkeypatch.setattr(distributed, ...)`` keep working."""

import sys

from wakesleep.training import distributed as _moved  # MOVED(shim)

sys.modules[__name__] = _moved  # MOVED(shim)
