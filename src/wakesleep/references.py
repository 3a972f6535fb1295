"""Moved to :mod:`wakesleep.models.exact` (issue 12); this module keeps the old import path working."""

from wakesleep.models.exact import *  # noqa: F401,F403  MOVED(shim)
from wakesleep.models.exact import reference_log_marginal as exact_log_marginal  # noqa: F401  MOVED(shim): renamed
