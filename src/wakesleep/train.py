"""Moved: the trainer is the package :mod:`wakesleep.training`, files are written by
:mod:`wakesleep.io`, the run directory is :mod:`wakesleep.runs`, fault injection is
:mod:`wakesleep.faults`.  These re-exports keep the old imports working until they are updated."""

from wakesleep.faults import FAULT_ENV, fault_point  # MOVED(shim)
from wakesleep.io import atomic_torch_save, atomic_write_bytes, atomic_write_text, write_jsonl  # MOVED(shim)
from wakesleep.runs import (  # MOVED(shim)
    BEST, BEST_FORMAT, CHECKPOINT, CHECKPOINT_FORMAT, LOCK, LOCK_OWNER, METRICS, RUN_FILES, CheckpointError, RunDirectoryBusy,
    _owner, clean_temporary_files, load_best, load_checkpoint, run_lock,
)
from wakesleep.training.checkpoint import ends_at, load_model_state  # MOVED(shim)
from wakesleep.training.checks import (  # MOVED(shim)
    InsufficientMemory, available_memory, check_data, check_memory, check_model_for_training, training_memory,
)
from wakesleep.training.loop import train  # MOVED(shim)
from wakesleep.training.settings import MAX_SEED, FitResult, TrainConfig  # MOVED(shim)
from wakesleep.training.step import TrainingError, build_optimizer, compile_estimator, train_step  # MOVED(shim)
