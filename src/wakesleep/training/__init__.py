"""Training: :func:`train` and what it is made of.

``loop.py`` the loop (:func:`train`); ``step.py`` one step, the optimiser, the compile wrapper;
``checkpoint.py`` saving and resuming (RNG states included); ``distributed.py`` ranks under
torchrun; ``checks.py`` the checks before the first step; ``metrics.py`` each epoch's record and
where it goes (``metrics.jsonl``, TensorBoard); ``settings.py`` :class:`TrainConfig` and :class:`FitResult`.
"""

from wakesleep.runs import CheckpointError, RunDirectoryBusy, load_best, load_checkpoint, load_model_state, run_lock
from wakesleep.training.checkpoint import ends_at
from wakesleep.training.checks import InsufficientMemory, check_data, check_memory, check_model_for_training
from wakesleep.training.loop import train
from wakesleep.training.settings import MAX_SEED, FitResult, TrainConfig
from wakesleep.training.step import TrainingError, build_optimizer, compile_estimator, train_step

__all__ = [
    "train",
    "TrainConfig",
    "FitResult",
    "MAX_SEED",
    "TrainingError",
    "CheckpointError",
    "RunDirectoryBusy",
    "InsufficientMemory",
    "train_step",
    "build_optimizer",
    "compile_estimator",
    "ends_at",
    "load_checkpoint",
    "load_best",
    "load_model_state",
    "run_lock",
    "check_data",
    "check_model_for_training",
    "check_memory",
]
