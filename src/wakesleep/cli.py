"""The command line: ``wakesleep train``, ``wakesleep evaluate RUN``, ``wakesleep sample RUN``
(and ``wakesleep diagnose``, ``wakesleep compare CONFIG``: :mod:`wakesleep.cli_tools`).

A run directory holds ``config.json`` (everything needed to rebuild the run), ``metrics.jsonl``,
``checkpoint.pt`` (last epoch) and ``best.pt`` (best validation), ``summary.json`` (final test
log-likelihood: mean, standard error, K, and later ``evaluate`` results), ``samples.png`` and
``curves.png``, and ``.lock`` with ``.lock-owner.json`` (who is writing it, while a run is live).

Every expected failure (bad options, data, files, memory, a busy run directory) ends with one line
on stderr naming the fix and exit status 2; Ctrl-C exits 130 and SIGTERM 143, keeping the last
checkpoint.  Nothing is written before a new run's whole configuration has been checked.

``--device cpu|cuda|auto`` picks where training and evaluation run.  Under ``torchrun`` the same
``train`` command trains data-parallel (:mod:`wakesleep.distributed`): rank 0 sets up the run
directory, prints, checkpoints and evaluates; every rank trains on its shard.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import threading
from datetime import datetime
from pathlib import Path

import torch

from wakesleep import cli_tools, distributed, layers, plots
from wakesleep.compare import RUN as COMPARE_RUN
from wakesleep.data import DataError, load_dataset, validate
from wakesleep.estimators import ESTIMATORS
from wakesleep.evaluate import DEFAULT_MAX_MEMORY_MIB, report_log_likelihood
from wakesleep.models import HelmholtzMachine, ModelContractError
from wakesleep.models.contract import device_dtype, has_proposal
from wakesleep.models.loading import ModelSpecError, build_user_model, is_user_spec, model_config, model_from_config, resolve_spec, user_model_config
from wakesleep.train import (
    BEST, CHECKPOINT, MAX_SEED, METRICS, CheckpointError, RunDirectoryBusy, TrainConfig, TrainingError, atomic_write_text,
    check_memory, check_model_for_training, clean_temporary_files, ends_at, fault_point, load_best, load_checkpoint, load_model_state, run_lock, train,
)

CONFIG, SUMMARY, SAMPLES, CURVES = "config.json", "summary.json", "samples.png", "curves.png"

# `train` options that define a run (model, estimator, data, data order, what validation means):
# --resume refuses them where they differ from what the run recorded.
RUN_OPTIONS = ("model", "layers", "hidden", "q_hidden", "likelihood", "algorithm", "k", "q_update", "defensive", "samples", "sleep_samples",
               "kernel", "krr", "num_features", "num_inducing", "lam", "features", "dataset", "data_dir", "batch_size", "seed",
               "valid_k", "clock")
# `train` options a resumed run may change (recorded in config.json's "changes"): option -> its key
# in config.json's "train" ("test_k" is top level).  The others (--device, --no-progress, …) are
# this invocation's alone.
ADJUSTABLE = {"epochs": "epochs", "max_seconds": "max_seconds", "patience": "patience", "lr_p": "lr_p", "lr_q": "lr_q",
              "lr_kernel": "lr_estimator", "checkpoint_every": "checkpoint_every", "skip_nonfinite": "nan_policy",
              "compile": "compile", "test_k": "test_k"}


class UsageError(ValueError):
    """Bad command-line input (the message names the fix)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # one line, not the usage block: the mistake and where the options are listed
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def _unit_interval(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return v


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {MAX_SEED}, got {text!r}") from None
    if not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**32 - 1 = {MAX_SEED}, got {v}")
    return v


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cpu"``, or ``"cuda"``/``"cuda:N"`` checked
    for availability.

    Raises:
        UsageError: an unknown device, or CUDA (or that GPU) asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r} is not a device wakesleep runs on; use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("CUDA is not available on this machine; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


DEVICE_OPTION = (("--device",), {"default": "cpu", "help": "cpu, cuda (cuda:N) or auto: CUDA when available (default: cpu)"})


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(*DEVICE_OPTION[0], **DEVICE_OPTION[1])


def build_parser() -> argparse.ArgumentParser:
    """The ``wakesleep`` argument parser."""
    return _build_parsers()[0]


def _build_parsers(only_given: bool = False) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """(the ``wakesleep`` parser, its ``train`` sub-parser).  With ``only_given``, ``train``'s
    options have no defaults, so that parsing sets only the options named on the command line."""

    def adder(group):
        def add(*names, **kw):
            if only_given:
                kw["default"] = argparse.SUPPRESS
            return group.add_argument(*names, **kw)
        return add

    parser = _Parser(prog="wakesleep", description=__doc__.splitlines()[0].replace("``", ""))
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and evaluate it", description="Train a model with a wake-sleep-family estimator, then evaluate its test log-likelihood and draw pictures.")
    t_add = adder(t)
    t_add("--algorithm", choices=sorted(ESTIMATORS), default="rws", help="estimator (default: rws)")
    t_add("--k", type=_positive_int, default=5, help="particles per datapoint for rws/iwae/vae/vimco/reinforce/nvil/tvo (default: 5; vimco needs >= 2)")
    t_add("--q-update", choices=["wake", "sleep", "both"], default="both", help="rws: how q is trained (default: both)")
    t_add("--defensive", type=_unit_interval, default=0.0,
          help="rws: defensive importance sampling, particles from (1 - d) q + d uniform (Le et al. 2019 use 0.2; default: 0, off)")
    t_add("--samples", type=_positive_int, default=1, help="ws: wake-phase samples L per datapoint (default: 1)")
    alws = t.add_argument_group("alws", "amortised learning by wake-sleep (--algorithm alws; q is then trained by sleep-phase updates only, for evaluation)")
    alws_add = adder(alws)
    alws_add("--sleep-samples", type=_positive_int, default=2000, help="sleep samples N per step (default: 2000)")
    alws_add("--kernel", choices=["gaussian", "matern12", "matern32", "matern52"], default="gaussian", help="kernel on features of x (default: gaussian)")
    alws_add("--krr", choices=["exact", "nystrom", "rff"], default="exact", help="kernel ridge regression solver (default: exact)")
    alws_add("--num-features", type=_positive_int, default=1000, help="random Fourier features F for --krr rff (even; default: 1000)")
    alws_add("--num-inducing", type=_positive_int, default=500, help="inducing points m for --krr nystrom (default: 500)")
    alws_add("--lam", type=_positive_float, default=1e-3, help="initial ridge lambda, learned (default: 1e-3)")
    alws_add("--features", choices=["identity", "mlp"], default="identity", help="kernel features: x itself or a learned MLP (default: identity)")
    alws_add("--lr-kernel", type=_positive_float, default=1e-3, help="Adam learning rate for the kernel's bandwidth, lambda and features (default: 1e-3)")
    t_add("--model", default="sbn", metavar="sbn|gaussian|FILE.py:FACTORY|package.module:FACTORY",
                   help="sbn: binary latents; gaussian: Gaussian latents with MLPs; or your own model: a factory "
                        "(called with data_dim=D if it takes it) returning a module that meets the model contract, "
                        "see docs/your-own-model.md; --layers, --hidden, --q-hidden and --likelihood are then unused (default: sbn)")
    t_add("--layers", type=_positive_int, nargs="+", default=[200], help="latent layer sizes, bottom to top (default: 200)")
    t_add("--hidden", type=_positive_int, nargs="*", default=None, help="hidden sizes inside each layer (gaussian default: 200 200; sbn default: none)")
    t_add("--q-hidden", type=_positive_int, nargs="*", default=None, help="sbn: hidden sizes inside recognition layers (default: none)")
    t_add("--likelihood", choices=["bernoulli", "gaussian"], default=None, help="p(x | z): bernoulli for binary data (default), gaussian for grey levels")
    t_add("--dataset", default="digits", help="digits (embedded), binarized-mnist, mnist-gray, or a .npz path (default: digits)")
    t_add("--data-dir", default=None, help="directory with data files (default: $WAKESLEEP_DATA_DIR or ~/.cache/wakesleep)")
    t_add("--epochs", type=_positive_int, default=100, help="passes over the training data (default: 100; with --resume, more extend the run)")
    t_add("--batch-size", type=_positive_int, default=100, help="datapoints per step (default: 100)")
    t_add("--lr-p", type=_positive_float, default=1e-3, help="Adam learning rate for the generative model (default: 1e-3)")
    t_add("--lr-q", type=_positive_float, default=1e-3, help="Adam learning rate for the recognition model (default: 1e-3)")
    t_add("--seed", type=_seed, default=0, help=f"seeds initialisation, data order and sampling, 0 to {MAX_SEED} (default: 0)")
    t_add("--valid-k", type=_positive_int, default=100, help="particles for the validation log-likelihood each epoch (default: 100)")
    t_add("--patience", type=_positive_int, default=10, help="epochs without validation improvement before stopping (default: 10)")
    t_add("--max-seconds", type=_positive_float, default=None, help="training budget, seconds of --clock (default: none)")
    t_add("--checkpoint-every", type=_positive_int, default=None, help="also checkpoint every this many steps within an epoch (default: only each epoch)")
    t_add("--clock", choices=["wall", "process"], default="wall", help="what --max-seconds counts: elapsed time, or this process's CPU time (default: wall)")
    t_add("--test-k", type=_positive_int, default=5000, help="particles for the final test log-likelihood (default: 5000)")
    t_add("--run-dir", default=None, help="where to write the run (default: runs/<dataset>-<algorithm>)")
    t_add("--resume", action="store_true",
                   help="continue the run in --run-dir from its checkpoint, with its recorded settings; of the others only "
                        f"{', '.join('--' + o.replace('_', '-') for o in ADJUSTABLE)} may be given, and change the run (recorded in config.json)")
    t_add("--overwrite", action="store_true", help="replace a previous run in --run-dir (its files are deleted; refused while it runs)")
    t_add("--skip-nonfinite", action="store_true", help="skip (and count) steps with a NaN/inf loss or gradient instead of stopping")
    t_add("--no-progress", action="store_true", help="hide progress bars")
    t_add("--compile", action="store_true", help="torch.compile the training step and the log-density kernels (needs a C++ compiler; faster for long runs, see docs/benchmarks.md)")
    t_add(*DEVICE_OPTION[0], **DEVICE_OPTION[1])

    e = sub.add_parser("evaluate", help="importance-sampled log-likelihood of a trained run", description="Evaluate a trained run's log-likelihood with K importance samples (nats, mean ± s.e.).")
    e.add_argument("run", help="run directory")
    e.add_argument("--k", type=_positive_int, default=5000, help="particles per datapoint (default: 5000)")
    e.add_argument("--split", choices=["test", "valid", "train"], default="test", help="(default: test)")
    e.add_argument("--batch-size", type=_positive_int, default=100, help="datapoints per evaluation batch (default: 100)")
    e.add_argument("--seed", type=_seed, default=0, help="seeds the particles (default: 0)")
    e.add_argument("--max-memory-mib", type=_positive_float, default=DEFAULT_MAX_MEMORY_MIB,
                   help=f"cap on the evaluation's working memory, MiB (default: {DEFAULT_MAX_MEMORY_MIB:.0f})")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--compile", action="store_true", help="torch.compile the Bernoulli log-density kernels (needs a C++ compiler)")
    _add_device(e)

    s = sub.add_parser("sample", help="draw samples from a trained run", description="Draw samples from a trained run's generative model and write them as a PNG grid.")
    s.add_argument("run", help="run directory")
    s.add_argument("--n", type=_positive_int, default=64, help="number of samples (default: 64)")
    s.add_argument("--out", default=None, help="PNG path (default: RUN/samples-N-seedS.png; training's RUN/samples.png is kept)")
    s.add_argument("--seed", type=_seed, default=0, help="(default: 0)")
    cli_tools.add_subcommands(sub, _positive_int, _positive_float)  # diagnose, compare
    return parser, t


# ------------------------------------------------------------------ helpers


def _nonbinary(data) -> str:
    """Where ``data`` (a :class:`~wakesleep.data.Dataset`) first has a value outside {0, 1}: split, row, column."""
    for split in ("train", "valid", "test"):
        try:
            validate(getattr(data, split), binary=True, dim=None, source=data.name, split=split)
        except DataError as e:
            return str(e).split("; a Bernoulli")[0]
    return data.name


def model_from_args(a: argparse.Namespace, data_dim: int, binary: bool, data=None):
    """The model the arguments name: a Helmholtz machine, or the user's factory (``--model FILE.py:FACTORY``).
    ``data`` (the Dataset, optional) names where non-binary data is in the error.

    Raises:
        UsageError: an unknown model, or a likelihood that does not fit the data.
        wakesleep.models.loading.ModelSpecError: a user's factory that does not load.
    """
    if is_user_spec(a.model):
        return build_user_model(a.model, data_dim)
    if a.model not in ("sbn", "gaussian"):
        raise UsageError(f"--model must be sbn, gaussian, FILE.py:FACTORY or package.module:FACTORY, got {a.model!r}")
    sizes = [data_dim, *a.layers]
    likelihood = a.likelihood or ("bernoulli" if binary else "gaussian")
    if a.model == "sbn":
        likelihood = a.likelihood or "bernoulli"
    if likelihood == "bernoulli" and not binary:
        where = f" ({_nonbinary(data)})" if data is not None else ""
        raise UsageError(f"this data is not binary{where}, but the model's likelihood is Bernoulli (values in {{0, 1}}): "
                         "binarise the data (e.g. x > 0.5), or use --model gaussian --likelihood gaussian")
    if a.model == "sbn":
        if likelihood != "bernoulli":
            raise UsageError("--model sbn has a Bernoulli likelihood; use --model gaussian --likelihood gaussian for real-valued data")
        return HelmholtzMachine.sbn(sizes, q_hidden=a.q_hidden or (), p_hidden=a.hidden or ())
    hidden = (200, 200) if a.hidden is None else a.hidden
    return HelmholtzMachine.gaussian(sizes, hidden=hidden, likelihood=likelihood)


def estimator_from(name: str, settings: dict):
    cls = ESTIMATORS[name]
    return cls(**settings)


def estimator_settings(a: argparse.Namespace, data_dim: int | None = None, model=None) -> dict:
    """The estimator's settings from the arguments.  ALWS trains the proposal by sleep-phase
    updates (for evaluation) when the model has one, and leaves q alone when it has none."""
    if a.algorithm == "alws":
        q_update = "sleep" if model is None or has_proposal(model) else None
        return {"sleep_samples": a.sleep_samples, "kernel": a.kernel, "krr": a.krr, "num_features": a.num_features,
                "num_inducing": a.num_inducing, "lam": a.lam, "features": a.features, "data_dim": data_dim,
                "q_update": q_update}
    if a.algorithm == "rws":
        return {"k": a.k, "q_update": a.q_update, **({"defensive": a.defensive} if a.defensive else {})}
    if a.algorithm in ("iwae", "vae", "vimco", "reinforce", "tvo"):
        if a.algorithm == "vimco" and a.k < 2:
            raise UsageError("--algorithm vimco needs --k 2 or more (its control variate leaves one particle out)")
        return {"k": a.k}
    if a.algorithm == "nvil":
        return {"k": a.k, "data_dim": data_dim}  # the input-dependent baseline reads x
    if a.algorithm == "ws":
        return {"samples": a.samples}
    return {}


def _compare_run_config(run: Path) -> dict:
    """The ``config.json`` equivalent of one ``wakesleep compare`` run (``NAME/LABEL/seedS``): its data
    from ``run.json``, its model from the checkpoint's recorded model config."""
    try:
        recorded = json.loads((run / COMPARE_RUN).read_text())
        dataset, data_dir = recorded["data"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{run / COMPARE_RUN} is damaged ({e}); rerun the comparison") from None
    model_config = load_checkpoint(run / CHECKPOINT).get("model_config")
    if not model_config and isinstance(recorded.get("model"), dict) and "spec" in recorded["model"]:
        model_config = user_model_config(recorded["model"]["spec"], load_dataset(dataset, data_dir=data_dir).dim)
    if not model_config:
        raise CheckpointError(f"{run / CHECKPOINT} does not record its model; rerun the comparison")
    return {"model": model_config, "data": {"dataset": dataset, "data_dir": data_dir}}


def load_run(run: Path):
    """Rebuild (model, config) of a run directory, with the best parameters loaded.

    A run directory is what ``wakesleep train`` writes (``config.json``), or one run of
    ``wakesleep compare`` (``OUT/LABEL/seedS`` with ``run.json``).

    Raises:
        CheckpointError: a missing or damaged config or checkpoint.
    """
    run = Path(run)
    cfg_path = run / CONFIG
    if not cfg_path.is_file() and (run / COMPARE_RUN).is_file():
        config, cfg_path = _compare_run_config(run), run / COMPARE_RUN
    elif not cfg_path.is_file():
        raise CheckpointError(f"{run} is not a run directory (no {CONFIG}); train one with `wakesleep train --run-dir {run}`")
    else:
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_path} is corrupt: {e}") from None
    try:
        model = model_from_config(config["model"])
    except ModelSpecError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path} does not describe a model: {e}") from None
    best = run / BEST
    state = load_best(best) if best.is_file() else load_checkpoint(run / CHECKPOINT)["model"]  # as data: no code runs
    try:
        load_model_state(model, state, run)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; the parameters do not fit the model in {cfg_path}") from None
    return model, config


def _dataset(config: dict):
    d = config["data"]
    return load_dataset(d["dataset"], data_dir=d.get("data_dir"))


def draw_samples(model, n: int, image_shape, data, path: Path) -> Path:
    """Model samples as a picture: image grids of E[x | z] for Helmholtz machines; for a user's
    model, x ~ p(x) as images when the data are images, else against the data (histograms or a
    scatter, :func:`wakesleep.plots.samples_against_data`)."""
    if hasattr(model, "sample_mean"):
        return plots.sample_grid(model.sample_mean(n).cpu(), image_shape, path, title="model samples (means of p(x | z))")
    x = model.sample(n)[1].detach().cpu()
    if image_shape is not None:
        return plots.sample_grid(x, image_shape, path, title="model samples x ~ p(x)")
    return plots.samples_against_data(x, data, path)


def write_pictures(run: Path, model, image_shape, n: int = 64, data=None) -> tuple[Path, Path | None]:
    samples = draw_samples(model, n if hasattr(model, "sample_mean") or image_shape is not None else 2000, image_shape, data, run / SAMPLES)
    curves = None
    if (run / METRICS).is_file():
        records = plots.read_jsonl(run / METRICS)
        if records:
            keys = [k for k in ("train_objective", "valid_log_likelihood", "train_ess", "train_wake_log_joint", "train_sleep_log_q") if any(k in r for r in records)]
            curves = plots.learning_curves(records, run / CURVES, keys=keys or None)
    return samples, curves


# ------------------------------------------------------------------ commands


def cmd_train(a: argparse.Namespace) -> int:
    if not isinstance(a.dataset, str) or not a.dataset.strip("- "):
        raise UsageError(f"--dataset needs a data set name (digits, binarized-mnist, mnist-gray) or a .npz path, got {a.dataset!r}")
    device = resolve_device(a.device)
    if not distributed.launched_by_torchrun():
        return _train(a, device)
    device = distributed.setup(device)
    main = distributed.is_main()
    try:
        code = _train(a, device)
    finally:
        distributed.teardown()
    if not main:
        # A worker has written nothing and has nothing left to do.  Its interpreter shutdown
        # sometimes aborted in C++ ("terminate called without an active exception", with no
        # Python frame on the stack: about 1 run in 15 on a loaded machine), after which torchrun
        # killed rank 0 mid-evaluation; leaving without the interpreter's teardown avoids that.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _check_run_dir(run: Path) -> None:
    """Refuse, before any work, a --run-dir that cannot hold a run: a file, a path under a file,
    a name too long for the file system, or a place this user cannot write."""
    try:
        name_max, path_max = os.pathconf(Path.cwd().anchor, "PC_NAME_MAX"), os.pathconf(Path.cwd().anchor, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    long = [part for part in run.parts if len(os.fsencode(part)) > name_max]
    if long or len(os.fsencode(str(run.absolute()))) >= path_max:
        what = f"its name {long[0][:20]}… has {len(os.fsencode(long[0]))} bytes, over the {name_max} this file system allows" if long \
            else f"its path has over the {path_max} bytes this file system allows"
        raise UsageError(f"--run-dir is too long ({what}): choose a shorter --run-dir")
    if run.exists() and not run.is_dir():
        raise UsageError(f"--run-dir {run} is a file, not a directory: choose another --run-dir")
    existing = run
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--run-dir {run} lies under {existing}, which is a file: choose another --run-dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--run-dir {run}: {existing} is not writable by this user: choose a --run-dir you can write, or make it writable")


def _read_config(run: Path) -> dict:
    """The recorded config of the run to resume, with its model checked to rebuild."""
    if not (run / CONFIG).is_file():
        raise CheckpointError(f"cannot resume: {run} has no {CONFIG}; start the run without --resume")
    try:
        config = json.loads((run / CONFIG).read_text())
        model_from_config(config["model"])
    except ModelSpecError:
        raise
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot resume: {run / CONFIG} is damaged ({e}); start a new run") from None
    return config


def _dataset_record(dataset: str) -> str:
    """A data file by its absolute path, so that the run opens from any directory; a name as it is."""
    return str(Path(dataset).resolve()) if Path(str(dataset)).is_file() else str(dataset)


def _run_options(a: argparse.Namespace, data_dim: int | None = None, binary: bool = True) -> dict:
    """The values of ``RUN_OPTIONS`` in force for arguments ``a``, in the form
    config.json records them (lists, absolute paths, the model's effective hidden sizes and likelihood)."""
    o = {name: getattr(a, name) for name in RUN_OPTIONS}
    o["layers"] = list(a.layers)
    o["dataset"] = _dataset_record(a.dataset)
    if is_user_spec(a.model):
        o["model"], o["hidden"], o["q_hidden"], o["likelihood"] = resolve_spec(a.model), None, None, None
    elif a.model == "sbn":
        o["hidden"], o["q_hidden"], o["likelihood"] = list(a.hidden or []), list(a.q_hidden or []), "bernoulli"
    else:
        o["hidden"] = [200, 200] if a.hidden is None else list(a.hidden)
        o["q_hidden"] = None
        o["likelihood"] = a.likelihood or ("bernoulli" if binary else "gaussian")
    return o


def _recorded_options(config: dict) -> dict:
    """The ``RUN_OPTIONS`` a run was started with: recorded in config.json ("options"), or, for a
    run written before they were, read back from its model, estimator, data and trainer records."""
    if "options" in config:
        return config["options"]
    m, t = config["model"], config["train"]
    o = {"algorithm": config["algorithm"], "dataset": config["data"]["dataset"], "data_dir": config["data"].get("data_dir"),
         **{k: t.get(k) for k in ("batch_size", "seed", "valid_k", "clock")},
         **{k: v for k, v in config["estimator"].items() if k in RUN_OPTIONS}}
    if m.get("kind") == "user":
        o.update(model=m["spec"], hidden=None, q_hidden=None, likelihood=None)
    elif m.get("kind") == "sbn":
        o.update(model="sbn", layers=m["sizes"][1:], hidden=m["p_hidden"], q_hidden=m["q_hidden"], likelihood="bernoulli")
    elif m.get("kind") == "gaussian":
        o.update(model="gaussian", layers=m["sizes"][1:], hidden=m["hidden"], q_hidden=None, likelihood=m["likelihood"])
    return o


def _flag(name: str, value=None) -> str:
    text = "--" + name.replace("_", "-")
    if value is None or value is True:
        return text
    return f"{text} {' '.join(map(str, value)) if isinstance(value, list) else value}"


def _resume_changes(a: argparse.Namespace, config: dict, run: Path) -> dict:
    """Check the options given with --resume against the run's record.  Options that define the
    run must equal what it recorded; the adjustable ones may differ.

    Returns:
        {config.json "train" key (or "test_k"): [recorded, new]} for each adjustable option changed.

    Raises:
        UsageError: an option that would change the run (all named, with the recorded values), or
            --epochs below the epochs already done.
    """
    given = getattr(a, "given", set())
    if a.overwrite:
        raise UsageError("--resume continues the run in --run-dir and --overwrite deletes it: give one of them")
    recorded = _recorded_options(config)
    # What the given options mean for this run (effective values, as recorded): the options not
    # given are the run's, so that e.g. --likelihood is read for the run's model, not the default one.
    merged = argparse.Namespace(**vars(a))
    for name in RUN_OPTIONS:
        if name not in given and recorded.get(name) is not None:
            setattr(merged, name, recorded[name])
    mine = _run_options(merged, binary=recorded.get("likelihood") != "gaussian")
    differ = []
    for name in RUN_OPTIONS:
        if name in given and (name not in recorded or mine[name] != recorded[name]):
            differ.append(f"{_flag(name, mine[name])} (the run has {_flag(name, recorded[name]) if recorded.get(name) is not None else 'none'})")
    if differ:
        raise UsageError(f"--resume continues {run} with the settings it was started with, and these differ: {'; '.join(differ)}. "
                         "Drop them to resume, or start a new run with them (another --run-dir, or --overwrite)")
    changes = {}
    train_cfg = config["train"]
    for name, key in ADJUSTABLE.items():
        if name not in given:
            continue
        new = "skip" if name == "skip_nonfinite" else getattr(a, name)  # a flag given is a flag set
        old = config.get("test_k") if key == "test_k" else train_cfg.get(key)
        if new != old:
            changes[key] = [old, new]
    if "epochs" in changes and (run / CHECKPOINT).is_file():
        done = load_checkpoint(run / CHECKPOINT)["epoch"]
        if a.epochs < done:
            raise UsageError(f"--epochs {a.epochs} is fewer than the {done} epochs {run} has trained: give --epochs {done} or more")
    return changes


def _build_checked(a: argparse.Namespace, data, device: torch.device):
    """The model and estimator of a new run, refused before anything is allocated when one
    training step would not fit in memory (a built-in model is first built on the ``meta``
    device, which allocates nothing), then checked against the estimator on two datapoints."""
    fix = "smaller --layers/--hidden, or a smaller --batch-size or --k"
    if not is_user_spec(a.model):
        with torch.device("meta"):
            sized = model_from_args(a, data.dim, data.binary, data)
        check_memory(sized, estimator_from(a.algorithm, estimator_settings(a, data.dim, sized)), a.batch_size, device, fix)
    torch.manual_seed(a.seed)
    model = model_from_args(a, data.dim, data.binary, data)
    estimator = estimator_from(a.algorithm, estimator_settings(a, data.dim, model))
    if is_user_spec(a.model):  # the user's factory has run: its parameters exist; check one step
        check_memory(model, estimator, a.batch_size, device, "a smaller model, --batch-size or --k")
    train_x = torch.as_tensor(data.train).to(dtype=device_dtype(model)[1])
    check_model_for_training(model, estimator, train_x, None)
    return model


def _prepare_run(a: argparse.Namespace, run: Path, device: torch.device, held: contextlib.ExitStack):
    """Rank 0's part of starting a run: validate everything, then take the run directory's lock
    (kept in ``held``), remove temporaries of killed runs and write ``config.json``.  Nothing is
    written before the configuration, the data and the model have passed every check.

    Returns:
        (config, resume, data, model): ``model`` is the new run's, built; None on resume.
    """
    _check_run_dir(run)
    if a.resume:
        config = _read_config(run)
        changes = _resume_changes(a, config, run)
        data = _dataset(config)
        held.enter_context(run_lock(run))
        clean_temporary_files(run)
        if changes:
            done = load_checkpoint(run / CHECKPOINT)["epoch"] if (run / CHECKPOINT).is_file() else 0
            for key, (old, new) in changes.items():
                if key == "test_k":
                    config["test_k"] = new
                else:
                    config["train"][key] = new
            config.setdefault("changes", []).append({"after_epoch": done, "time": datetime.now().isoformat(timespec="seconds"), "changed": changes})
            atomic_write_text(run / CONFIG, json.dumps(config, indent=2))
            option = {key: name for name, key in ADJUSTABLE.items()}
            print("resuming with " + ", ".join(f"{_flag(option[k], True if k in ('nan_policy', 'compile') else new)} (was {old})" for k, (old, new) in changes.items()))
        if not (run / CHECKPOINT).is_file():
            # Stopped before its first checkpoint: nothing was trained yet, so start from the beginning.
            print(f"{run} has no checkpoint yet; starting it from the beginning")
            return config, False, data, None
        ckpt = load_checkpoint(run / CHECKPOINT)
        if ends_at(ckpt, TrainConfig(**config["train"])):
            option = {"early": "patience", "time": "max_seconds"}.get(ckpt.get("stopped"), "epochs")
            print(f"{run} has finished ({ckpt['epoch']} epochs, stopped by {_flag(option, config['train'][option])}): nothing more to "
                  f"train; give a larger {_flag(option)} to go on. Evaluating it again")
        return config, True, data, None
    data = load_dataset(a.dataset, data_dir=a.data_dir)
    model = _build_checked(a, data, device)
    config = {
        "model": model_config(model, a.model if is_user_spec(a.model) else None, data.dim),
        "algorithm": a.algorithm,
        "estimator": estimator_settings(a, data.dim, model),
        "data": {"dataset": _dataset_record(a.dataset), "data_dir": a.data_dir},
        "train": {
            "epochs": a.epochs, "batch_size": a.batch_size, "lr_p": a.lr_p, "lr_q": a.lr_q, "lr_estimator": a.lr_kernel, "seed": a.seed,
            "valid_k": a.valid_k, "patience": a.patience, "max_seconds": a.max_seconds, "clock": a.clock, "checkpoint_every": a.checkpoint_every,
            "nan_policy": "skip" if a.skip_nonfinite else "error", "compile": a.compile,
        },
        "test_k": a.test_k,
        "options": _run_options(a, data.dim, data.binary),  # what --resume compares its options with
    }

    def refuse_existing() -> None:
        if ((run / CHECKPOINT).exists() or (run / CONFIG).exists()) and not a.overwrite:
            raise UsageError(f"{run} already holds a run; pass --resume to continue it, --overwrite to replace it, or choose another --run-dir")

    refuse_existing()  # before the lock, so that a refused run leaves no lock file behind
    held.enter_context(run_lock(run))
    refuse_existing()  # and under it: the directory may have changed meanwhile
    clean_temporary_files(run)
    for name in (CONFIG, CHECKPOINT, BEST, METRICS, SUMMARY, SAMPLES, CURVES):
        (run / name).unlink(missing_ok=True)
    atomic_write_text(run / CONFIG, json.dumps(config, indent=2))
    return config, False, data, model


def _read_summary(path: Path) -> dict:
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _train(a: argparse.Namespace, device: torch.device) -> int:
    run = Path(a.run_dir or f"runs/{Path(str(a.dataset)).stem}-{a.algorithm}")
    main = distributed.is_main()
    with contextlib.ExitStack() as held:  # rank 0 holds the run directory's lock until the end
        data = model = None
        try:
            if main:
                config, resume, data, model = _prepare_run(a, run, device, held)
                prepared = (config, resume)
            else:
                prepared = None
        except (CheckpointError, UsageError, ValueError, RunDirectoryBusy, OSError) as e:
            prepared = e
        config, resume = distributed.broadcast_object(prepared)  # an error on rank 0 stops every rank
        seed = config["train"]["seed"]
        if data is None:  # a resumed run, or another rank: the data the run was started with
            data = _dataset(config)
        if model is None:
            torch.manual_seed(seed)
            model = model_from_config(config["model"])
        model = model.to(device)
        estimator = estimator_from(config["algorithm"], config["estimator"]).to(device)
        tcfg = TrainConfig(**config["train"], progress=not a.no_progress)
        world_size = distributed.world()[1]
        if main:
            where = f"{device}" + (f", {world_size} processes" if world_size > 1 else "")
            print(f"training {config['algorithm']} {config['estimator']} on {data.name} "
                  f"({data.train.shape[0]} train, {data.valid.shape[0]} valid, {data.test.shape[0]} test, D={data.dim}) on {where}; run: {run}")
        fit = train(model, estimator, data.train, data.valid, tcfg, run_dir=run, resume=resume)
        # Every rank leaves the process group together now: the rest (evaluation, pictures) is rank
        # 0's alone and needs no collectives, and a rank that left alone could crash at exit.
        distributed.teardown(barrier=True)
        if not main:
            return 0
        model.eval()
        fault_point("evaluate")
        ll = report_log_likelihood(model, data.test, k=config.get("test_k", a.test_k), progress=not a.no_progress, seed=seed)
        summary = {
            "test_log_likelihood": ll.mean, "test_stderr": ll.stderr, "test_k": ll.k, "test_n": ll.n,
            "best_valid_log_likelihood": fit.best_valid, "best_epoch": fit.best_epoch,
            "epochs": len(fit.history), "stopped": fit.stopped, "train_seconds": fit.seconds, "skipped_steps": fit.skipped_steps,
        }
        earlier = _read_summary(run / SUMMARY).get("evaluations")
        if earlier:  # results of `wakesleep evaluate` on this run are kept
            summary["evaluations"] = earlier
        atomic_write_text(run / SUMMARY, json.dumps(summary, indent=2))
        samples, curves = write_pictures(run, model, data.image_shape, data=data.train)
        print(f"test log-likelihood: {ll}")
        print(f"samples: {samples}")
        if curves:
            print(f"learning curves: {curves}")
        print(f"summary: {run / SUMMARY}")
        return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    run = Path(a.run)
    model, config = load_run(run)
    model.to(resolve_device(a.device))
    data = _dataset(config)
    if a.compile:
        layers.use_compiled_kernels(True)
    _say_how_long(model, getattr(data, a.split), a)
    ll = report_log_likelihood(model, getattr(data, a.split), k=a.k, batch_size=a.batch_size, max_memory_mib=a.max_memory_mib,
                               progress=not a.no_progress, seed=a.seed)
    print(f"{a.split} log-likelihood: {ll}")
    path = run / SUMMARY
    try:
        with run_lock(run, "evaluate"):  # summary.json is the run's: written by one process at a time
            summary = _read_summary(path)
            summary.setdefault("evaluations", []).append({"split": a.split, **ll.as_dict()})
            atomic_write_text(path, json.dumps(summary, indent=2))
    except RunDirectoryBusy as e:
        print(f"note: the result is not recorded in {path}: {run} is in use by {e.holder}; evaluate again when it has finished", file=sys.stderr)
    except OSError as e:
        raise UsageError(f"the result above is not recorded: cannot write {path} ({e.strerror or e}); "
                         f"make {run} writable, or evaluate a copy of it") from None
    return 0


PILOT_ROWS, PILOT_K = 10, 2000


def _say_how_long(model, x, a: argparse.Namespace) -> None:
    """Before a large importance-sampled evaluation, time a pilot (``PILOT_ROWS`` datapoints ×
    ``PILOT_K`` particles; the time grows linearly in both) and print the estimate when it is over a minute."""
    n = x.shape[0]
    if not has_proposal(model) or n * a.k <= 10 * PILOT_ROWS * PILOT_K:
        return

    rows, k = min(n, PILOT_ROWS), min(a.k, PILOT_K)
    start = time.perf_counter()
    report_log_likelihood(model, x[:rows], k=k, batch_size=a.batch_size, max_memory_mib=a.max_memory_mib)
    seconds = (time.perf_counter() - start) * (n / rows) * (a.k / k)
    if seconds > 60:
        hours, minutes = divmod(round(seconds / 60), 60)
        print(f"evaluating {n} datapoints × K={a.k} particles will take about {f'{hours} h ' if hours else ''}{minutes} min "
              f"(timed on {rows} × {k}); a smaller --k gives a quicker, looser estimate (Ctrl-C stops)", flush=True)


def cmd_sample(a: argparse.Namespace) -> int:
    run = Path(a.run)
    model, config = load_run(run)
    torch.manual_seed(a.seed)
    shape, data = None, None
    try:
        dataset = _dataset(config)
        shape, data = dataset.image_shape, dataset.train
    except DataError:
        pass  # pictures without the data fall back to rows
    out = Path(a.out) if a.out else run / f"samples-{a.n}-seed{a.seed}.png"  # training's samples.png is kept
    try:
        out = draw_samples(model, a.n, shape, data, out)
    except OSError as e:
        raise UsageError(f"cannot write {out} ({e.strerror or e}); give --out a path you can write") from None
    print(f"samples: {out}")
    return 0


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler, ``docker stop``, ``kill``): handled like Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def _given_options(argv: list[str]) -> set[str]:
    """The ``train`` options named on the command line ``argv`` (not left at their defaults)."""
    return set(vars(_build_parsers(only_given=True)[0].parse_args(argv))) - {"command"}


# Failures that are the machine's, not the user's input: one line, with what to try.
def _resource_error(e: BaseException) -> str | None:
    if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)) or isinstance(e, RuntimeError) and any(
            m in str(e) for m in ("can't allocate memory", "not enough memory", "out of memory")):
        return f"out of memory ({layers.first_line(e)}); use a smaller model, --batch-size or --k"
    if isinstance(e, OSError):
        where = f" {e.filename}" if e.filename else ""
        return f"cannot use{where}: {e.strerror or e}; check the path, its permissions and the free space"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.command == "train":
        args.given = _given_options(argv)
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample, **cli_tools.COMMANDS}
    rank = f" (rank {os.environ.get('RANK', '?')})" if distributed.launched_by_torchrun() else ""
    kept = "; the last checkpoint is kept (resume with --resume)" if args.command == "train" else ""
    handling = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if handling else None
    try:
        return commands[args.command](args)
    except (DataError, CheckpointError, UsageError, TrainingError, ValueError, ModelContractError, RunDirectoryBusy) as e:
        print(f"wakesleep {args.command}{rank}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wakesleep {args.command}{rank}: interrupted{kept}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"wakesleep {args.command}{rank}: stopped by SIGTERM{kept}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except (OSError, MemoryError, RuntimeError) as e:
        message = _resource_error(e)
        if message is None:
            raise  # a genuine bug: its traceback
        print(f"wakesleep {args.command}{rank}: error: {message}", file=sys.stderr)
        return 2
    finally:
        if handling:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
