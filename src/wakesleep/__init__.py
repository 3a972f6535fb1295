"""wakesleep: maximum-likelihood learning of latent-variable models by the wake-sleep family.

Classical wake-sleep (Hinton et al. 1995), reweighted wake-sleep (Bornschein & Bengio 2015) and
amortised learning by wake-sleep (Wenliang et al. 2020), with VAE and IWAE as baselines; every
estimator of :data:`wakesleep.estimators.ESTIMATORS` is here by its class name (``ws.VIMCO``,
``ws.NVIL``, ``ws.TVO``, ``ws.MemoisedWakeSleep``, ``ws.HybridMemoisedWakeSleep``, ...; ``ws.WS`` is ``ws.WakeSleep``).

>>> import wakesleep as ws
>>> model = ws.models.HelmholtzMachine.sbn([64, 20])
>>> est = ws.RWS(k=5)
"""

from wakesleep import data, estimators, evaluate, models
from wakesleep.estimators import (
    ALWS,
    IWAE,
    NVIL,
    RELAX,
    RWS,
    TVO,
    VAE,
    VIMCO,
    Concrete,
    HybridMemoisedWakeSleep,
    MemoisedWakeSleep,
    Reinforce,
    WakeSleep,
)
from wakesleep.evaluate import LogLikelihood, exact_log_likelihood, log_likelihood
from wakesleep.models import HelmholtzMachine
from wakesleep.training import FitResult, TrainConfig, distributed, train

#: Classical wake-sleep by its short name, as the command line's ``--algorithm ws`` calls it.
WS = WakeSleep

__version__ = "0.1.0"

__all__ = [
    "ALWS",
    "Concrete",
    "IWAE",
    "MemoisedWakeSleep",
    "HybridMemoisedWakeSleep",
    "NVIL",
    "RELAX",
    "RWS",
    "Reinforce",
    "TVO",
    "VAE",
    "VIMCO",
    "WS",
    "WakeSleep",
    "HelmholtzMachine",
    "LogLikelihood",
    "FitResult",
    "TrainConfig",
    "data",
    "distributed",
    "estimators",
    "evaluate",
    "models",
    "train",
    "log_likelihood",
    "exact_log_likelihood",
]
