"""The command line: ``wakesleep train``, ``wakesleep evaluate RUN``, ``wakesleep sample RUN``
(and ``wakesleep diagnose``, ``wakesleep compare CONFIG``: :mod:`wakesleep.cli.lab`; ``wakesleep fid SOURCE``:
:mod:`wakesleep.cli.quality`).

One module per job: :mod:`wakesleep.cli.train` (``train``: a new run, or ``--resume``; what its
options mean is :mod:`wakesleep.cli.run_spec`, its checks and record before the first step
:mod:`wakesleep.cli.prepare`), :mod:`wakesleep.cli.results` (``evaluate`` and ``sample`` of a
trained run), :mod:`wakesleep.cli.lab` (``diagnose`` and ``compare``), :mod:`wakesleep.cli.quality`
(``fid``: FID and KID of images), :mod:`wakesleep.cli.options` (what their options share).  Each
command module adds its parsers (``add_parser``/``add_parsers``) and names its commands
(``COMMANDS``); a new command is a new module listed in :data:`JOBS`.  This module is the entry
point: :func:`main`.

A run directory holds ``config.json`` (everything needed to rebuild the run), ``metrics.jsonl``,
``checkpoint.pt`` (last epoch) and ``best.pt`` (best validation), ``summary.json`` (final test
log-likelihood: mean, standard error, K, and later ``evaluate`` results), ``samples.png`` and
``curves.png``, and ``.lock`` with ``.lock-owner.json`` (who is writing it, while a run is live).

Every expected failure (bad options, data, files, memory, a busy run directory) ends with one line
on stderr naming the fix and exit status 2; Ctrl-C exits 130 and SIGTERM 143, keeping the last
checkpoint.  Nothing is written before a new run's whole configuration has been checked.

``--device cpu|cuda|auto`` picks where training and evaluation run.  Under ``torchrun`` the same
``train`` command trains data-parallel (:mod:`wakesleep.training.distributed`): rank 0 sets up the run
directory, prints, checkpoints and evaluates; every rank trains on its shard.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading

import torch

from wakesleep import fused
from wakesleep.cli import lab, quality, results, train
from wakesleep.cli.options import UsageError, _Parser, resolve_device
from wakesleep.cli.run_spec import estimator_settings, model_from_args  # public names of the command line
from wakesleep.data import DataError
from wakesleep.models import ModelContractError
from wakesleep.runs import CheckpointError, RunDirectoryBusy
from wakesleep.training import TrainingError, distributed

__all__ = ["UsageError", "build_parser", "estimator_settings", "load_run", "main", "model_from_args", "resolve_device"]

#: The command modules, in the order ``wakesleep --help`` lists them.
JOBS = (train, results, lab, quality)


def build_parser() -> argparse.ArgumentParser:
    """The ``wakesleep`` argument parser."""
    return _build_parsers()[0]


def _build_parsers(only_given: bool = False) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """(the ``wakesleep`` parser, its ``train`` sub-parser).  With ``only_given``, ``train``'s
    options have no defaults, so that parsing sets only the options named on the command line."""
    parser = _Parser(prog="wakesleep", description=__doc__.splitlines()[0].replace("``", ""))
    sub = parser.add_subparsers(dest="command", required=True)
    t = train.add_parser(sub, only_given)
    results.add_parsers(sub)  # evaluate, sample
    lab.add_parsers(sub)  # diagnose, compare
    quality.add_parsers(sub)  # fid
    return parser, t


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
    if (
        isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError))
        or isinstance(e, RuntimeError)
        and any(m in str(e) for m in ("can't allocate memory", "not enough memory", "out of memory"))
    ):
        return f"out of memory ({fused.first_line(e)}); use a smaller model, --batch-size or --k"
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        where = f"write {e.filename}" if e.filename else "write"
        return f"no space left on the device to {where}; free some space there, or write elsewhere (files written before are kept whole)"
    if isinstance(e, OSError):
        where = f" {e.filename}" if e.filename else ""
        return f"cannot use{where}: {e.strerror or e}; check the path, its permissions and the free space"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.command == "train":
        args.given = _given_options(argv)
    commands = {name: command for job in JOBS for name, command in job.COMMANDS.items()}
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
