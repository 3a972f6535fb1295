"""``wakesleep evaluate RUN`` and ``wakesleep sample RUN``: a trained run's log-likelihood and samples.

A run is read back by :func:`wakesleep.runs.load_run`, whether ``wakesleep train`` or
``wakesleep compare`` made it; a run of a user's own model opens only with ``--model
FILE.py:FACTORY`` naming that model again (a run directory never runs code by itself).
``evaluate`` prints the exact log-likelihood beside the estimate where the model has one
(:func:`wakesleep.models.contract.has_exact_form`), and records both in ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from wakesleep import fused, plots
from wakesleep.cli.options import UsageError, _add_device, _positive_float, _positive_int, _seed, add_command, add_run, resolve_device
from wakesleep.config import read_summary, run_dataset
from wakesleep.data import DataError
from wakesleep.evaluate import DEFAULT_MAX_MEMORY_MIB, exact_log_likelihood, report_log_likelihood
from wakesleep.io import atomic_write_text
from wakesleep.models.contract import has_exact_form, has_proposal
from wakesleep.runs import RunDirectoryBusy, load_run, run_lock

SUMMARY = "summary.json"


def add_parsers(sub) -> None:
    """Add the ``evaluate`` and ``sample`` parsers to ``sub`` (an argparse subparsers object)."""
    e = add_command(
        sub,
        "evaluate",
        "importance-sampled log-likelihood of a trained run",
        "Evaluate a trained run's log-likelihood with K importance samples (nats, mean ± s.e.), "
        "and the exact log-likelihood beside it where the model has one.",
    )
    add_run(e)
    e.add_argument("--k", type=_positive_int, default=5000, help="particles per datapoint (default: 5000)")
    e.add_argument("--split", choices=["test", "valid", "train"], default="test", help="(default: test)")
    e.add_argument("--batch-size", type=_positive_int, default=100, help="datapoints per evaluation batch (default: 100)")
    e.add_argument("--seed", type=_seed, default=0, help="seeds the particles (default: 0)")
    e.add_argument(
        "--max-memory-mib",
        type=_positive_float,
        default=DEFAULT_MAX_MEMORY_MIB,
        help=f"cap on the evaluation's working memory, MiB (default: {DEFAULT_MAX_MEMORY_MIB:.0f})",
    )
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--compile", action="store_true", help="torch.compile the Bernoulli log-density and NADE kernels (needs a C++ compiler)")
    _add_device(e)

    s = add_command(
        sub, "sample", "draw samples from a trained run", "Draw samples from a trained run's generative model and write them as a PNG grid."
    )
    add_run(s)
    s.add_argument("--n", type=_positive_int, default=64, help="number of samples (default: 64)")
    s.add_argument("--out", default=None, help="PNG path (default: RUN/samples-N-seedS.png; training's RUN/samples.png is kept)")
    s.add_argument("--seed", type=_seed, default=0, help="(default: 0)")


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


def cmd_evaluate(a: argparse.Namespace) -> int:
    run = Path(a.run)
    model, config = load_run(run, a.model)
    model.to(resolve_device(a.device))
    data = run_dataset(config, a.data_from)
    if a.compile:
        fused.use_compiled_kernels(True)
    x = getattr(data, a.split)
    _say_how_long(model, x, a)
    ll = report_log_likelihood(model, x, k=a.k, batch_size=a.batch_size, max_memory_mib=a.max_memory_mib, progress=not a.no_progress, seed=a.seed)
    record = {"split": a.split, **ll.as_dict()}
    if ll.k and has_exact_form(model):  # an estimate, and the exact value to hold it against
        exact = exact_log_likelihood(model, x)
        record["exact"] = exact.mean
        print(f"{a.split} log-likelihood: {ll}; exact: {exact.mean:.3f} nats (the estimate is {ll.mean - exact.mean:+.3f} from it)")
    else:
        print(f"{a.split} log-likelihood: {ll}")
    path = run / SUMMARY
    try:
        with run_lock(run, "evaluate"):  # summary.json is the run's: written by one process at a time
            summary = read_summary(path)
            summary.setdefault("evaluations", []).append(record)
            atomic_write_text(path, json.dumps(summary, indent=2))
    except RunDirectoryBusy as e:
        print(f"note: the result is not recorded in {path}: {run} is in use by {e.holder}; evaluate again when it has finished", file=sys.stderr)
    except OSError as e:
        raise UsageError(
            f"the result above is not recorded: cannot write {path} ({e.strerror or e}); make {run} writable, or evaluate a copy of it"
        ) from None
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
        print(
            f"evaluating {n} datapoints × K={a.k} particles will take about {f'{hours} h ' if hours else ''}{minutes} min "
            f"(timed on {rows} × {k}); a smaller --k gives a quicker, looser estimate (Ctrl-C stops)",
            flush=True,
        )


def cmd_sample(a: argparse.Namespace) -> int:
    run = Path(a.run)
    model, config = load_run(run, a.model)
    torch.manual_seed(a.seed)
    shape, data = None, None
    try:
        dataset = run_dataset(config, a.data_from)
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


COMMANDS = {"evaluate": cmd_evaluate, "sample": cmd_sample}
