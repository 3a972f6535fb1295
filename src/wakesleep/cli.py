"""The command line: ``wakesleep train``, ``wakesleep evaluate RUN``, ``wakesleep sample RUN``
(and ``wakesleep diagnose``, ``wakesleep compare CONFIG``: :mod:`wakesleep.cli_tools`).

A run directory holds ``config.json`` (everything needed to rebuild the run), ``metrics.jsonl``,
``checkpoint.pt`` (last epoch) and ``best.pt`` (best validation), ``summary.json`` (final test
log-likelihood: mean, standard error, K), ``samples.png`` and ``curves.png``.

``--device cpu|cuda|auto`` picks where training and evaluation run.  Under ``torchrun`` the same
``train`` command trains data-parallel (:mod:`wakesleep.distributed`): rank 0 sets up the run
directory, prints, checkpoints and evaluates; every rank trains on its shard.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from wakesleep import cli_tools, distributed, layers, plots
from wakesleep.compare import RUN as COMPARE_RUN
from wakesleep.data import DataError, load_dataset
from wakesleep.estimators import ESTIMATORS
from wakesleep.evaluate import DEFAULT_MAX_MEMORY_MIB, report_log_likelihood
from wakesleep.models import HelmholtzMachine, ModelContractError
from wakesleep.models.contract import device_dtype, has_proposal
from wakesleep.models.loading import ModelSpecError, build_user_model, is_user_spec, model_config, model_from_config, user_model_config
from wakesleep.train import (
    BEST, CHECKPOINT, METRICS, CheckpointError, TrainConfig, TrainingError, atomic_write_text, check_model_for_training, fault_point, load_checkpoint, load_model_state, train,
)

CONFIG, SUMMARY, SAMPLES, CURVES = "config.json", "summary.json", "samples.png", "curves.png"


class UsageError(ValueError):
    """Bad command-line input (the message names the fix)."""


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return v


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"``/``"cuda:N"`` checked for availability.

    Raises:
        UsageError: CUDA asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("CUDA is not available on this machine; use --device cpu (or auto)")
    return device


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda (cuda:N) or auto: CUDA when available (default: cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wakesleep", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and evaluate it", description="Train a model with a wake-sleep-family estimator, then evaluate its test log-likelihood and draw pictures.")
    t.add_argument("--algorithm", choices=sorted(ESTIMATORS), default="rws", help="estimator (default: rws)")
    t.add_argument("--k", type=_positive_int, default=5, help="particles per datapoint for rws/iwae/vae (default: 5)")
    t.add_argument("--q-update", choices=["wake", "sleep", "both"], default="both", help="rws: how q is trained (default: both)")
    t.add_argument("--samples", type=_positive_int, default=1, help="ws: wake-phase samples L per datapoint (default: 1)")
    alws = t.add_argument_group("alws", "amortised learning by wake-sleep (--algorithm alws; q is then trained by sleep-phase updates only, for evaluation)")
    alws.add_argument("--sleep-samples", type=_positive_int, default=2000, help="sleep samples N per step (default: 2000)")
    alws.add_argument("--kernel", choices=["gaussian", "matern12", "matern32", "matern52"], default="gaussian", help="kernel on features of x (default: gaussian)")
    alws.add_argument("--krr", choices=["exact", "nystrom", "rff"], default="exact", help="kernel ridge regression solver (default: exact)")
    alws.add_argument("--num-features", type=_positive_int, default=1000, help="random Fourier features F for --krr rff (even; default: 1000)")
    alws.add_argument("--num-inducing", type=_positive_int, default=500, help="inducing points m for --krr nystrom (default: 500)")
    alws.add_argument("--lam", type=_positive_float, default=1e-3, help="initial ridge lambda, learned (default: 1e-3)")
    alws.add_argument("--features", choices=["identity", "mlp"], default="identity", help="kernel features: x itself or a learned MLP (default: identity)")
    alws.add_argument("--lr-kernel", type=_positive_float, default=1e-3, help="Adam learning rate for the kernel's bandwidth, lambda and features (default: 1e-3)")
    t.add_argument("--model", default="sbn", metavar="sbn|gaussian|FILE.py:FACTORY|package.module:FACTORY",
                   help="sbn: binary latents; gaussian: Gaussian latents with MLPs; or your own model: a factory "
                        "(called with data_dim=D if it takes it) returning a module that meets the model contract, "
                        "see docs/your-own-model.md; --layers, --hidden, --q-hidden and --likelihood are then unused (default: sbn)")
    t.add_argument("--layers", type=_positive_int, nargs="+", default=[200], help="latent layer sizes, bottom to top (default: 200)")
    t.add_argument("--hidden", type=int, nargs="*", default=None, help="hidden sizes inside each layer (gaussian default: 200 200; sbn default: none)")
    t.add_argument("--q-hidden", type=int, nargs="*", default=None, help="sbn: hidden sizes inside recognition layers (default: none)")
    t.add_argument("--likelihood", choices=["bernoulli", "gaussian"], default=None, help="p(x | z): bernoulli for binary data (default), gaussian for grey levels")
    t.add_argument("--dataset", default="digits", help="digits (embedded), binarized-mnist, mnist-gray, or a .npz path (default: digits)")
    t.add_argument("--data-dir", default=None, help="directory with data files (default: $WAKESLEEP_DATA_DIR or ~/.cache/wakesleep)")
    t.add_argument("--epochs", type=_positive_int, default=100)
    t.add_argument("--batch-size", type=_positive_int, default=100)
    t.add_argument("--lr-p", type=_positive_float, default=1e-3, help="Adam learning rate for the generative model")
    t.add_argument("--lr-q", type=_positive_float, default=1e-3, help="Adam learning rate for the recognition model")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--valid-k", type=_positive_int, default=100, help="particles for the validation log-likelihood each epoch")
    t.add_argument("--patience", type=_positive_int, default=10, help="epochs without validation improvement before stopping")
    t.add_argument("--max-seconds", type=_positive_float, default=None, help="wall-clock training budget, seconds")
    t.add_argument("--checkpoint-every", type=_positive_int, default=None, help="also checkpoint every this many steps within an epoch")
    t.add_argument("--clock", choices=["wall", "process"], default="wall", help="what --max-seconds counts: elapsed time, or this process's CPU time")
    t.add_argument("--test-k", type=_positive_int, default=5000, help="particles for the final test log-likelihood (default: 5000)")
    t.add_argument("--run-dir", default=None, help="where to write the run (default: runs/<dataset>-<algorithm>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a previous run in --run-dir (its files are deleted)")
    t.add_argument("--skip-nonfinite", action="store_true", help="skip (and count) steps with a NaN/inf loss or gradient instead of stopping")
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")
    t.add_argument("--compile", action="store_true", help="torch.compile the training step and the log-density kernels (needs a C++ compiler; faster for long runs, see docs/benchmarks.md)")
    _add_device(t)

    e = sub.add_parser("evaluate", help="importance-sampled log-likelihood of a trained run", description="Evaluate a trained run's log-likelihood with K importance samples (nats, mean ± s.e.).")
    e.add_argument("run", help="run directory")
    e.add_argument("--k", type=_positive_int, default=5000, help="particles per datapoint (default: 5000)")
    e.add_argument("--split", choices=["test", "valid", "train"], default="test")
    e.add_argument("--batch-size", type=_positive_int, default=100)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--max-memory-mib", type=_positive_float, default=DEFAULT_MAX_MEMORY_MIB,
                   help=f"cap on the evaluation's working memory, MiB (default: {DEFAULT_MAX_MEMORY_MIB:.0f})")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--compile", action="store_true", help="torch.compile the Bernoulli log-density kernels (needs a C++ compiler)")
    _add_device(e)

    s = sub.add_parser("sample", help="draw samples from a trained run", description="Draw samples from a trained run's generative model and write them as a PNG grid.")
    s.add_argument("run", help="run directory")
    s.add_argument("--n", type=_positive_int, default=64, help="number of samples (default: 64)")
    s.add_argument("--out", default=None, help="PNG path (default: RUN/samples.png)")
    s.add_argument("--seed", type=int, default=0)
    cli_tools.add_subcommands(sub, _positive_int, _positive_float)  # diagnose, compare
    return parser


# ------------------------------------------------------------------ helpers


def model_from_args(a: argparse.Namespace, data_dim: int, binary: bool):
    """The model the arguments name: a Helmholtz machine, or the user's factory (``--model FILE.py:FACTORY``).

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
        raise UsageError("this data is not binary, but the model's likelihood is Bernoulli (values in {0, 1}): "
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
        return {"k": a.k, "q_update": a.q_update}
    if a.algorithm in ("iwae", "vae"):
        return {"k": a.k}
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
    if best.is_file():
        try:
            state = torch.load(best, map_location="cpu", weights_only=False)["model"]
        except Exception as e:
            raise CheckpointError(f"{best} is unreadable ({type(e).__name__}); it is truncated or not a checkpoint") from None
    else:
        state = load_checkpoint(run / CHECKPOINT)["model"]
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


def _prepare_run(a: argparse.Namespace, run: Path, data) -> tuple[dict, bool]:
    """Rank 0's part of starting a run: read or write ``config.json``; returns (config, resume)."""
    if a.resume:
        if not (run / CONFIG).is_file():
            raise CheckpointError(f"cannot resume: {run} has no {CONFIG}; start the run without --resume")
        try:
            config = json.loads((run / CONFIG).read_text())
            model_from_config(config["model"])
        except ModelSpecError:
            raise
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"cannot resume: {run / CONFIG} is damaged ({e}); start a new run") from None
        if not (run / CHECKPOINT).is_file():
            # Stopped before its first checkpoint: nothing was trained yet, so start from the beginning.
            print(f"{run} has no checkpoint yet; starting it from the beginning")
            return config, False
        return config, True
    else:
        torch.manual_seed(a.seed)
        model = model_from_args(a, data.dim, data.binary)
        config = {
            "model": model_config(model, a.model if is_user_spec(a.model) else None, data.dim),
            "algorithm": a.algorithm,
            "estimator": estimator_settings(a, data.dim, model),
            # a data file by its absolute path, so that the run opens from any directory
            "data": {"dataset": str(Path(a.dataset).resolve()) if Path(str(a.dataset)).is_file() else str(a.dataset), "data_dir": a.data_dir},
            "train": {
                "epochs": a.epochs, "batch_size": a.batch_size, "lr_p": a.lr_p, "lr_q": a.lr_q, "lr_estimator": a.lr_kernel, "seed": a.seed,
                "valid_k": a.valid_k, "patience": a.patience, "max_seconds": a.max_seconds, "clock": a.clock, "checkpoint_every": a.checkpoint_every,
                "nan_policy": "skip" if a.skip_nonfinite else "error", "compile": a.compile,
            },
            "test_k": a.test_k,
        }
        # Refuse a model the estimator cannot train before anything is written.
        train_x = torch.as_tensor(data.train).to(dtype=device_dtype(model)[1])
        check_model_for_training(model, estimator_from(a.algorithm, config["estimator"]), train_x, None)
        if (run / CHECKPOINT).exists() or (run / CONFIG).exists():
            if not a.overwrite:
                raise UsageError(f"{run} already holds a run; pass --resume to continue it, --overwrite to replace it, or choose another --run-dir")
            for name in (CONFIG, CHECKPOINT, BEST, METRICS, SUMMARY, SAMPLES, CURVES):
                (run / name).unlink(missing_ok=True)
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run / CONFIG, json.dumps(config, indent=2))
        return config, False


def _train(a: argparse.Namespace, device: torch.device) -> int:
    run = Path(a.run_dir or f"runs/{Path(str(a.dataset)).stem}-{a.algorithm}")
    data = None if a.resume else load_dataset(a.dataset, data_dir=a.data_dir)
    main = distributed.is_main()
    try:
        prepared = _prepare_run(a, run, data) if main else None
    except (CheckpointError, UsageError, ValueError) as e:
        prepared = e
    config, resume = distributed.broadcast_object(prepared)  # an error on rank 0 stops every rank
    if data is None:  # a resumed run trains on the data it was started with
        data = _dataset(config)
    torch.manual_seed(a.seed)
    model = model_from_config(config["model"]).to(device)
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
    test_k = config.get("test_k", a.test_k)
    fault_point("evaluate")
    ll = report_log_likelihood(model, data.test, k=test_k, progress=not a.no_progress, seed=a.seed)
    summary = {
        "test_log_likelihood": ll.mean, "test_stderr": ll.stderr, "test_k": ll.k, "test_n": ll.n,
        "best_valid_log_likelihood": fit.best_valid, "best_epoch": fit.best_epoch,
        "epochs": len(fit.history), "stopped": fit.stopped, "train_seconds": fit.seconds, "skipped_steps": fit.skipped_steps,
    }
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
    ll = report_log_likelihood(model, getattr(data, a.split), k=a.k, batch_size=a.batch_size, max_memory_mib=a.max_memory_mib,
                        progress=not a.no_progress, seed=a.seed)
    print(f"{a.split} log-likelihood: {ll}")
    path = run / SUMMARY
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.setdefault("evaluations", []).append({"split": a.split, **ll.as_dict()})
    atomic_write_text(path, json.dumps(summary, indent=2))
    return 0


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
    out = draw_samples(model, a.n, shape, data, Path(a.out) if a.out else run / SAMPLES)
    print(f"samples: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample, **cli_tools.COMMANDS}
    try:
        return commands[args.command](args)
    except (DataError, CheckpointError, UsageError, TrainingError, ValueError, ModelContractError) as e:
        rank = f" (rank {os.environ.get('RANK', '?')})" if distributed.launched_by_torchrun() else ""
        print(f"wakesleep {args.command}{rank}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wakesleep {args.command}: interrupted; the last checkpoint is kept (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
