"""What ``wakesleep train``'s options mean: the run spec they make (the model table, the
estimator's settings), which options define a run and which a ``--resume`` may change, and the form
``config.json`` records them in (what ``--resume`` compares its options with).

A new estimator takes the command line's settings without code here: each option of
:data:`ESTIMATOR_OPTIONS` goes to every estimator whose constructor takes a parameter of that name.
"""

from __future__ import annotations

import argparse

from wakesleep.cli.options import UsageError
from wakesleep.config import build_model, dataset_record, estimator_parameters
from wakesleep.data import DataError, validate
from wakesleep.models.contract import has_proposal
from wakesleep.models.loading import is_user_spec, resolve_spec

# `train` options that define a run (model, estimator, data, data order, what validation means):
# --resume refuses them where they differ from what the run recorded.
RUN_OPTIONS = (
    "data_from",
    "model",
    "layers",
    "hidden",
    "q_hidden",
    "likelihood",
    "layer",
    "q_layer",
    "nade_hidden",
    "prior",
    "algorithm",
    "k",
    "q_update",
    "defensive",
    "memory_size",
    "continuous_k",
    "memory_weighting",
    "samples",
    "temperature",
    "density",
    "control_hidden",
    "sleep_samples",
    "kernel",
    "krr",
    "num_features",
    "num_inducing",
    "lam",
    "features",
    "dataset",
    "data_dir",
    "batch_size",
    "seed",
    "valid_k",
    "clock",
)
# `train` options a resumed run may change (recorded in config.json's "changes"): option -> its key
# in config.json's "train" ("test_k" is top level).  The others (--device, --no-progress, …) are
# this invocation's alone.
ADJUSTABLE = {
    "epochs": "epochs",
    "max_seconds": "max_seconds",
    "patience": "patience",
    "lr_p": "lr_p",
    "lr_q": "lr_q",
    "lr_kernel": "lr_estimator",
    "checkpoint_every": "checkpoint_every",
    "skip_nonfinite": "nan_policy",
    "compile": "compile",
    "test_k": "test_k",
}
# `train` options that are estimator settings: each goes to every estimator whose constructor takes
# a parameter of that name (:func:`wakesleep.config.estimator_parameters`), so that a new estimator
# takes them without code here.  The data width goes as ``data_dim`` likewise.
ESTIMATOR_OPTIONS = ("sleep_samples", "kernel", "krr", "num_features", "num_inducing", "lam", "features")  # ALWS's
ESTIMATOR_OPTIONS += ("k", "q_update", "samples", "defensive", "memory_size", "continuous_k", "memory_weighting")  # the particle estimators'
ESTIMATOR_OPTIONS += ("temperature", "density", "control_hidden")  # the relaxations'


def _nonbinary(data) -> str:
    """Where ``data`` (a :class:`~wakesleep.data.Dataset`) first has a value outside {0, 1}: split, row, column."""
    for split in ("train", "valid", "test"):
        try:
            validate(getattr(data, split), binary=True, dim=None, source=data.name, split=split)
        except DataError as e:
            return str(e).split("; a Bernoulli")[0]
    return data.name


def model_table(a: argparse.Namespace, binary: bool, data=None) -> dict:
    """The model table (:mod:`wakesleep.config`) the arguments name: a Helmholtz machine's kind,
    layers and settings, or the user's factory (``--model FILE.py:FACTORY``).  ``data`` (the
    Dataset, optional) names where non-binary data is in the error.

    Raises:
        UsageError: an unknown model, or a likelihood that does not fit the data.
    """
    if is_user_spec(a.model):
        return {"spec": a.model}
    if a.model not in ("sbn", "gaussian"):
        raise UsageError(f"--model must be sbn, gaussian, FILE.py:FACTORY or package.module:FACTORY, got {a.model!r}")
    likelihood = a.likelihood or ("bernoulli" if binary else "gaussian")
    if a.model == "sbn":
        likelihood = a.likelihood or "bernoulli"
    if likelihood == "bernoulli" and not binary:
        where = f" ({_nonbinary(data)})" if data is not None else ""
        raise UsageError(
            f"this data is not binary{where}, but the model's likelihood is Bernoulli (values in {{0, 1}}): "
            "binarise the data (e.g. x > 0.5), or use --model gaussian --likelihood gaussian"
        )
    if a.model == "sbn":
        if likelihood != "bernoulli":
            raise UsageError("--model sbn has a Bernoulli likelihood; use --model gaussian --likelihood gaussian for real-valued data")
        return {"kind": "sbn", "layers": list(a.layers), "q_hidden": list(a.q_hidden or ()), "p_hidden": list(a.hidden or ()), **_layer_settings(a)}
    if any(getattr(a, name, None) is not None for name in ("layer", "q_layer", "nade_hidden", "prior")):
        raise UsageError("--layer, --q-layer, --nade-hidden and --prior choose the layers of --model sbn; a gaussian model's layers are Gaussian")
    hidden = (200, 200) if a.hidden is None else a.hidden
    return {"kind": "gaussian", "layers": list(a.layers), "hidden": list(hidden), "likelihood": likelihood}


def _layer_settings(a: argparse.Namespace) -> dict:
    """The sbn model table's layer kinds from --layer/--q-layer/--nade-hidden/--prior: ``p_layers``,
    ``q_layers`` (each one kind, or one per latent layer), ``nade_hidden`` and ``prior``; nothing
    where every layer and the prior are factorial, so that such a model's table (and record) is the
    plain SBN's.

    Raises:
        UsageError: a list of kinds whose length is neither 1 nor the number of latent layers.
    """
    p_kinds = list(getattr(a, "layer", None) or ["sbn"])
    q_kinds = list(getattr(a, "q_layer", None) or p_kinds)
    for flag, kinds in (("--layer", p_kinds), ("--q-layer", q_kinds)):
        if len(kinds) not in (1, len(a.layers)):
            raise UsageError(f"{flag} names {len(kinds)} kinds for {len(a.layers)} latent layers (--layers): give one kind, or one per layer")
    prior = getattr(a, "prior", None) or "sbn"
    out: dict = {} if prior == "sbn" else {"prior": prior}
    if set(p_kinds + q_kinds) != {"sbn"}:
        out.update(p_layers=p_kinds if len(p_kinds) > 1 else p_kinds[0], q_layers=q_kinds if len(q_kinds) > 1 else q_kinds[0])
    if not out:
        return {}
    if getattr(a, "nade_hidden", None) is not None:
        out["nade_hidden"] = a.nade_hidden
    return out


def model_from_args(a: argparse.Namespace, data_dim: int, binary: bool, data=None):
    """The model the arguments name (:func:`model_table`), built by :func:`wakesleep.config.build_model`.

    Raises:
        UsageError: an unknown model, or a likelihood that does not fit the data.
        wakesleep.models.loading.ModelSpecError: a user's factory that does not load.
    """
    return build_model(model_table(a, binary, data), data_dim)


def estimator_settings(a: argparse.Namespace, data_dim: int | None = None, model=None) -> dict:
    """The estimator's settings from the arguments: each of :data:`ESTIMATOR_OPTIONS` its constructor
    takes, and ``data_dim`` where it takes that; ``--defensive`` only when on.  ALWS trains the
    proposal by sleep-phase updates (for evaluation) when the model has one, and leaves q alone when
    it has none.

    Raises:
        UsageError: --algorithm vimco with --k 1.
    """
    if a.algorithm == "vimco" and a.k < 2:
        raise UsageError("--algorithm vimco needs --k 2 or more (its control variate leaves one particle out)")
    takes = estimator_parameters(a.algorithm)
    # ALWS's q_update is not --q-update's (rws: wake/sleep/both): it follows from the model
    own = {"q_update": "sleep" if model is None or has_proposal(model) else None} if a.algorithm == "alws" else {}
    settings = {name: getattr(a, name) for name in ESTIMATOR_OPTIONS if name in takes and name not in own}
    if not getattr(a, "defensive", 0.0):
        settings.pop("defensive", None)  # off: recorded as runs made before --defensive existed were
    if "data_dim" in takes:
        settings["data_dim"] = data_dim  # e.g. NVIL's input-dependent baseline reads x
    return {**settings, **own}


def run_options(a: argparse.Namespace, data_dim: int | None = None, binary: bool = True) -> dict:
    """The values of ``RUN_OPTIONS`` in force for arguments ``a``, in the form
    config.json records them (lists, absolute paths, the model's effective hidden sizes and likelihood)."""
    o = {name: getattr(a, name, None) for name in RUN_OPTIONS}
    o["layers"] = list(a.layers)
    o["dataset"] = dataset_record(a.dataset)
    o["data_from"] = resolve_spec(a.data_from) if getattr(a, "data_from", None) else None
    for name in ("layer", "q_layer", "nade_hidden", "prior"):  # recorded where given, so that runs without them keep their record
        if getattr(a, name, None) is None:
            o.pop(name)
        elif name in ("layer", "q_layer"):
            o[name] = list(o[name])
    if is_user_spec(a.model):
        o["model"], o["hidden"], o["q_hidden"], o["likelihood"] = resolve_spec(a.model), None, None, None
    elif a.model == "sbn":
        o["hidden"], o["q_hidden"], o["likelihood"] = list(a.hidden or []), list(a.q_hidden or []), "bernoulli"
    else:
        o["hidden"] = [200, 200] if a.hidden is None else list(a.hidden)
        o["q_hidden"] = None
        o["likelihood"] = a.likelihood or ("bernoulli" if binary else "gaussian")
    return o


def recorded_options(config: dict) -> dict:
    """The ``RUN_OPTIONS`` a run was started with: recorded in config.json ("options"), or, for a
    run written before they were, read back from its model, estimator, data and trainer records."""
    if "options" in config:
        return {"layer": None, "q_layer": None, "nade_hidden": None, "prior": None, "data_from": None, **config["options"]}
    m, t = config["model"], config["train"]
    o = {
        "algorithm": config["algorithm"],
        "dataset": config["data"]["dataset"],
        "data_dir": config["data"].get("data_dir"),
        **{k: t.get(k) for k in ("batch_size", "seed", "valid_k", "clock")},
        **{k: v for k, v in config["estimator"].items() if k in RUN_OPTIONS},
        "layer": None,  # such runs predate the layer kinds: their SBNs are factorial
        "q_layer": None,
        "nade_hidden": None,
        "prior": None,
        "data_from": None,
    }
    if m.get("kind") == "user":
        o.update(model=m["spec"], hidden=None, q_hidden=None, likelihood=None)
    elif m.get("kind") == "sbn":
        o.update(model="sbn", layers=m["sizes"][1:], hidden=m["p_hidden"], q_hidden=m["q_hidden"], likelihood="bernoulli")
    elif m.get("kind") == "gaussian":
        o.update(model="gaussian", layers=m["sizes"][1:], hidden=m["hidden"], q_hidden=None, likelihood=m["likelihood"])
    return o


def flag(name: str, value=None) -> str:
    """Option ``name`` (``"lr_p"``) as the command line writes it, with ``value`` where one is
    given and not True: ``--lr-p 0.01``, ``--layers 200 200``, ``--compile``."""
    text = "--" + name.replace("_", "-")
    if value is None or value is True:
        return text
    return f"{text} {' '.join(map(str, value)) if isinstance(value, list) else value}"
