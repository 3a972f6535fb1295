"""Estimators: each turns (model, batch) into one surrogate loss whose gradient is the estimator."""

from wakesleep.estimators.alws import ALWS, build_kernel_ridge, train_proposal
from wakesleep.estimators.base import Estimator, EstimatorOutput
from wakesleep.estimators.concrete import Concrete
from wakesleep.estimators.hmws import HybridMemoisedWakeSleep
from wakesleep.estimators.iwae import IWAE
from wakesleep.estimators.mws import MemoisedWakeSleep
from wakesleep.estimators.reinforce import NVIL, Reinforce
from wakesleep.estimators.relax import RELAX
from wakesleep.estimators.rws import RWS
from wakesleep.estimators.tvo import TVO
from wakesleep.estimators.vae import VAE
from wakesleep.estimators.vimco import VIMCO
from wakesleep.estimators.ws import SleepPhase, WakeSleep, sleep_phase_loss

ESTIMATORS = {
    "ws": WakeSleep,
    "rws": RWS,
    "alws": ALWS,
    "vae": VAE,
    "iwae": IWAE,
    "vimco": VIMCO,
    "reinforce": Reinforce,
    "nvil": NVIL,
    "tvo": TVO,
    "mws": MemoisedWakeSleep,
    "concrete": Concrete,
    "relax": RELAX,
    "hmws": HybridMemoisedWakeSleep,
}

__all__ = [
    "ALWS",
    "build_kernel_ridge",
    "Concrete",
    "train_proposal",
    "ESTIMATORS",
    "Estimator",
    "EstimatorOutput",
    "HybridMemoisedWakeSleep",
    "IWAE",
    "MemoisedWakeSleep",
    "NVIL",
    "RELAX",
    "RWS",
    "Reinforce",
    "SleepPhase",
    "TVO",
    "VIMCO",
    "VAE",
    "WakeSleep",
    "sleep_phase_loss",
]
