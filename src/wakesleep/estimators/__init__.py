"""Estimators: each turns (model, batch) into one surrogate loss whose gradient is the estimator."""

from wakesleep.estimators.alws import ALWS, build_kernel_ridge, train_proposal
from wakesleep.estimators.base import Estimator, EstimatorOutput
from wakesleep.estimators.rws import RWS
from wakesleep.estimators.vae import IWAE, VAE
from wakesleep.estimators.ws import WakeSleep, sleep_phase_loss

ESTIMATORS = {"ws": WakeSleep, "rws": RWS, "alws": ALWS, "vae": VAE, "iwae": IWAE}

__all__ = ["ALWS", "build_kernel_ridge", "train_proposal", "ESTIMATORS", "Estimator", "EstimatorOutput", "IWAE", "RWS", "VAE", "WakeSleep", "sleep_phase_loss"]
