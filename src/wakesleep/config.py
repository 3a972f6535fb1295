"""One grammar and one registry for models and estimators, used by the command line, compare's TOML
files and diagnose's ``"rws:k=8"`` strings; and the one run-directory record they all write.

Estimators: :data:`ESTIMATORS` (name -> class, :mod:`wakesleep.estimators`) is the registry; an
estimator's settings are its constructor's keyword arguments (:func:`estimator_parameters`), so a
new estimator is added by adding its class to that registry.  A setting is written
``Setting.of("rws", k=8)`` or parsed from ``"rws:k=8,q_update=wake"`` (:meth:`Setting.parse`);
the command line's options and compare's ``[[estimators]]`` tables give the same ``(algorithm,
settings)`` pair, and :func:`build_estimator` builds every one of them.

Models: a model table is what compare's ``[model]`` table holds, ``{"kind": "sbn" | "gaussian",
"layers": [...], <builder settings>}`` or a user's ``{"spec": "FILE.py:FACTORY"}``; the command
line's ``--model/--layers/--hidden/--q-hidden/--likelihood`` are read into one.  For data of width
D, :func:`model_record` turns it into the record a run directory keeps (``config.json``'s
"model": a Helmholtz machine's own ``config``, or the user spec) and :func:`build_model` builds the
model from that record (:func:`wakesleep.models.loading.model_from_config`): one path, whether the
model is new or rebuilt from a run.

A run directory (``wakesleep train``'s, or one ``OUT/LABEL/seedS`` of ``wakesleep compare``)
records itself in ``config.json`` (:func:`run_record`) and is read back by
:func:`wakesleep.runs.load_run`.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wakesleep.data import DataError, fingerprint, load_dataset
from wakesleep.estimators import ESTIMATORS
from wakesleep.models import HelmholtzMachine
from wakesleep.models.loading import model_from_config, resolve_spec, user_model_config
from wakesleep.training.stream import stream_dataset

#: The built-in model kinds of a model table: kind -> builder (its keyword arguments are the table's settings).
MODEL_KINDS = {"sbn": HelmholtzMachine.sbn, "gaussian": HelmholtzMachine.gaussian}
#: The most units one layer of a model table may have (``--layers``, ``--hidden``, compare's
#: ``layers``, ...): far beyond any memory, and small enough that products of two sizes stay within
#: torch's 64-bit sizes, so that a too-large model meets a memory error rather than an overflow
#: inside torch.
MAX_WIDTH = 2**30


# ------------------------------------------------------------------ estimators


def estimator_parameters(algorithm: str) -> dict[str, inspect.Parameter]:
    """The settings of estimator ``algorithm``: its constructor's parameters (name -> parameter,
    with ``default`` and ``annotation``), in the constructor's order.

    Raises:
        ValueError: an unknown algorithm.
    """
    if algorithm not in ESTIMATORS:
        raise ValueError(f"unknown estimator {algorithm!r}; available: {sorted(ESTIMATORS)}")
    params = inspect.signature(ESTIMATORS[algorithm]).parameters
    return {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def build_estimator(algorithm: str, settings: dict[str, Any]):
    """The estimator ``ESTIMATORS[algorithm](**settings)``: every estimator of a run, a comparison or
    a diagnosis is built here.

    Raises:
        ValueError: an unknown algorithm, or settings the estimator rejects; TypeError: a setting
            the estimator does not take.
    """
    if algorithm not in ESTIMATORS:
        raise ValueError(f"unknown estimator {algorithm!r}; available: {sorted(ESTIMATORS)}")
    return ESTIMATORS[algorithm](**settings)


@dataclass(frozen=True)
class Setting:
    """One estimator configuration: a registry name and constructor arguments.

    Attributes:
        algorithm: a key of ``wakesleep.estimators.ESTIMATORS`` (``ws``, ``rws``, ``vae``, ``iwae``, ``alws``).
        params: constructor keyword arguments, as sorted ``(name, value)`` pairs.
    """

    algorithm: str
    params: tuple = ()

    @classmethod
    def of(cls, algorithm: str, **params) -> Setting:
        """The setting ``algorithm`` with constructor arguments ``params`` (stored sorted by name)."""
        return cls(algorithm, tuple(sorted(params.items())))

    @classmethod
    def parse(cls, text: str) -> Setting:
        """Parse ``"rws:k=8,q_update=wake"`` (values: int, float, bool, else string).

        Raises:
            ValueError: an unknown algorithm or a malformed ``name=value``.
        """
        algorithm, _, rest = text.strip().partition(":")
        algorithm = algorithm.strip().lower()
        if algorithm not in ESTIMATORS:
            raise ValueError(f"unknown estimator {algorithm!r} in {text!r}; available: {sorted(ESTIMATORS)}")
        params = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"estimator setting {item!r} in {text!r} is not name=value (e.g. rws:k=8,q_update=wake)")
            params[key.strip()] = _parse_value(value.strip())
        return cls.of(algorithm, **params)

    @property
    def kwargs(self) -> dict:
        return dict(self.params)

    @property
    def label(self) -> str:
        return self.algorithm + ("(" + ",".join(f"{k}={v}" for k, v in self.params) + ")" if self.params else "")

    def build(self):
        """The estimator ``ESTIMATORS[algorithm](**params)``.

        Raises:
            ValueError: an unknown algorithm, or arguments the estimator rejects (the message names them).
        """
        try:
            return build_estimator(self.algorithm, self.kwargs)
        except TypeError as e:
            raise ValueError(f"{self.label}: {e}") from None


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


# ------------------------------------------------------------------ models


def model_record(table: dict[str, Any], data_dim: int) -> dict[str, Any]:
    """The run-directory record of model table ``table`` for data of width ``data_dim``: a user's
    spec (:func:`~wakesleep.models.loading.user_model_config`) or a Helmholtz machine's ``config``
    (the data width prepended to ``layers`` as ``sizes``)."""
    if "spec" in table:
        return user_model_config(table["spec"], data_dim)
    settings = {k: v for k, v in table.items() if k not in ("kind", "layers")}
    return {"kind": table["kind"], "sizes": [data_dim, *table["layers"]], **settings}


def build_model(table: dict[str, Any], data_dim: int):
    """The (untrained; seed torch first) model of model table ``table`` for data of width
    ``data_dim``: a Helmholtz machine, or the user's factory (``{"spec": "FILE.py:FACTORY"}``).

    Raises:
        wakesleep.models.loading.ModelSpecError: a user's factory that does not load.
    """
    return model_from_config(model_record(table, data_dim))


# ------------------------------------------------------------------ the run record


def dataset_record(dataset: str) -> str:
    """A data file by its absolute path, so that the run opens from any directory; a name as it is."""
    return str(Path(dataset).resolve()) if Path(str(dataset)).is_file() else str(dataset)


def run_record(
    model: dict,
    algorithm: str,
    settings: dict,
    dataset: str,
    data_dir: str | None,
    train: dict,
    test_k: int,
    fingerprint: str | None = None,
    data_from: str | None = None,
    stream_seed: int | None = None,
) -> dict:
    """A run directory's ``config.json``: the model's record, the estimator, the data (with its
    ``fingerprint``, :func:`wakesleep.data.fingerprint`, where given: :func:`check_same_data`
    holds a resumed run to it; or ``data_from``, the factory of a stream, and ``stream_seed``, the
    seed its validation and test sets were drawn with), the trainer's settings
    (:class:`~wakesleep.training.TrainConfig` keyword arguments) and the test's particles."""
    data = {"dataset": dataset_record(dataset), "data_dir": data_dir}
    if fingerprint is not None:
        data["fingerprint"] = fingerprint
    if data_from is not None:
        data["data_from"] = data_from
        if stream_seed is not None:
            data["stream_seed"] = stream_seed
    return {
        "model": model,
        "algorithm": algorithm,
        "estimator": settings,
        "data": data,
        "train": train,
        "test_k": test_k,
    }


def run_dataset(config: dict, data_from: str | None = None):
    """The data set a run's record names, or its stream (:func:`wakesleep.training.stream.stream_dataset`,
    drawn with the seed the run drew it with).  A stream's factory is the user's code: it runs only
    when the command line names it too (``data_from``, ``--data-from``), never because a run's
    ``config.json`` names it.

    Raises:
        wakesleep.data.DataError: a data set that does not load; a stream whose factory is not
            named, or named otherwise than recorded (the message names the option to pass).
        wakesleep.models.loading.ModelSpecError, ValueError: a named factory that does not load or
            returns no source.
    """
    d = config["data"]
    recorded = d.get("data_from")
    if recorded:
        if data_from is None or resolve_spec(data_from) != recorded:
            raise DataError(
                f"the run streams its data from your {recorded}, and opening a run runs no code it names: "
                f"pass --data-from {recorded} to run that code (if you trust it)"
            )
        return stream_dataset(recorded, d.get("stream_seed", config["train"]["seed"]))
    return load_dataset(d["dataset"], data_dir=d.get("data_dir"))


def check_same_data(config: dict, data, run: str | Path) -> None:
    """Refuse to go on with run ``run`` (its ``config``) on ``data`` (a
    :class:`~wakesleep.data.Dataset`) other than the data it started on: the SHA-256 it recorded
    (``config["data"]["fingerprint"]``) against ``data``'s now.  Runs recorded without one pass.

    Raises:
        wakesleep.data.DataError: another fingerprint; the message names the data source and both.
    """
    recorded = config.get("data", {}).get("fingerprint")
    if recorded is None:
        return
    now = fingerprint(data)
    if now != recorded:
        raise DataError(
            f"cannot resume {run}: its data {config['data'].get('data_from') or config['data']['dataset']} is not the data it started on "
            f"(SHA-256 {recorded} then, {now} now); restore that data, or start a new run on this data (another run directory)"
        )


def read_summary(path: Path) -> dict:
    """A run's ``summary.json``, or {} when it is missing or unreadable."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}
