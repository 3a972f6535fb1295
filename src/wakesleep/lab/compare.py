"""Like-for-like comparison of estimators: same model, data, seeds and budget; test log-likelihood with time.

A comparison is described by a TOML file (``experiments/compare_*.toml``)::

    name = "digits-ws-vs-rws"
    seeds = [0, 1]                  # every estimator runs once per seed; seed s initialises the
                                    # model identically for every estimator
    threads = 1                     # torch CPU threads (optional; 1 makes CPU-time budgets honest)

    [data]
    dataset = "digits"              # digits, binarized-mnist, mnist-gray, or a .npz path
    # data_dir = "/path/to/data"
    # or data that streams instead of dataset (wakesleep.training.stream): FACTORY() returns
    # sample(n, generator) or an iterable of batches; fixed validation and test sets are drawn
    # from it once; [train] steps_per_epoch = 100 sets the steps between validations
    # data_from = "examples/simulator.py:make"

    [model]                         # HelmholtzMachine builder; the data width is prepended to layers
    kind = "sbn"                    # "sbn" or "gaussian"
    layers = [20]
    # hidden = [200, 200]; likelihood = "bernoulli"; q_hidden = []; p_hidden = []; learn_prior = false
    # sbn's layer kinds (one, or one per latent layer): p_layers = "nade"; q_layers = ["darn"]; nade_hidden = 200
    # sbn's top-layer prior: prior = "nade" (the RWS authors' NADETop; default "sbn", factorial)
    # or your own model instead of kind/layers (docs/your-own-model.md; a path from the working directory):
    # spec = "examples/gmm.py:mixture"

    [train]                         # TrainConfig, shared by every estimator: the equal budget
    epochs = 10
    batch_size = 100
    max_seconds = 300               # optional time budget per run ...
    clock = "process"               # ... on this clock ("process" = CPU time; "wall")

    [evaluate]
    test_k = 5000                   # particles for the final test log-likelihood (default 5000)
    test_n = 1000                   # a fixed random subset of n test points (default: all)
    valid_n = 500                   # validate each epoch on a fixed random subset of n validation points

    [[estimators]]
    label = "WS"
    algorithm = "ws"                # a key of wakesleep.estimators.ESTIMATORS
    settings = { samples = 1 }      # constructor arguments
    # train = { lr_q = 3e-4 }       # per-estimator learning rates etc. (never the budget)
    # proposal_epochs = 5           # after training, fit q alone by sleep-phase updates (for ALWS,
                                    # which learns θ only: ALGORITHMS.md §4)

Each (estimator, seed) run lives in ``OUT/<label>/seed<s>/`` (``config.json``, the record every
run directory keeps (:func:`wakesleep.config.run_record`), so that ``wakesleep evaluate`` and
``sample`` open it; the trainer's metrics and checkpoints, and ``summary.json`` when finished): an
interrupted comparison resumes where it stopped.  Results: ``OUT/per_seed.csv``, ``OUT/summary.csv`` and ``OUT/summary.md`` (test
log-likelihood mean ± s.e. across seeds, nats, with training time on the budget's clock) and
``OUT/curves.png`` (validation log-likelihood against training time).  Where validation records
more (the model's optional ``metrics(x)``, and ``valid_q_grad_std`` with ``[train]
q_grad_std_repeats = R``: :func:`wakesleep.training.metrics.validation_metrics`), the CSV tables
carry each one's last value (per seed; mean and ``_stderr`` across seeds) and
``OUT/curves-NAME.png`` plots it against training iterations.

The test log-likelihood follows the IWAE protocol (``../shared/reference/ALGORITHMS.md`` §5):
log (1/K) Σ_k w_k with K = ``test_k`` proposal samples per test point, averaged over test points.
"""

from __future__ import annotations

import inspect
import json
import math
import textwrap
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from wakesleep import plots
from wakesleep.config import ESTIMATORS, MAX_WIDTH, MODEL_KINDS, build_estimator, check_same_data, run_record
from wakesleep.config import build_model as build_table_model
from wakesleep.data import SPLITS, DataError, load_dataset
from wakesleep.data import fingerprint as data_fingerprint
from wakesleep.estimators import SleepPhase
from wakesleep.evaluate import log_likelihood, mean_stderr
from wakesleep.io import atomic_write_text
from wakesleep.lab.tables import csv_text, markdown_table, torch_threads
from wakesleep.models.contract import device_dtype
from wakesleep.models.helmholtz import PRIOR_KINDS
from wakesleep.models.loading import ModelSpecError, is_user_spec, model_config, resolve_spec
from wakesleep.runs import CHECKPOINT, CONFIG, METRICS
from wakesleep.runs import COMPARE_RUN as RUN
from wakesleep.training import TrainConfig, train
from wakesleep.training.checks import check_data, check_model_for_training
from wakesleep.training.stream import stream_dataset

SUMMARY = "summary.json"
#: TrainConfig fields that make up the budget: shared by every estimator, never overridden.
BUDGET_KEYS = ("epochs", "max_seconds", "clock")

#: The seed of a streamed comparison's validation and test sets: the same for every seed of the
#: comparison, and recorded in each run's config.json so that evaluate draws them again.
STREAM_SEED = 0


def config_format() -> str:
    """The TOML layout of a comparison config, as this module's docstring shows it (what
    ``wakesleep compare --help`` prints), dedented: one place that states the format."""
    block = __doc__.split("::\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip("\n")


class ConfigError(ValueError):
    """A comparison config is invalid; the message names the file and the key."""


@dataclass
class EstimatorSpec:
    """One estimator of a comparison: a label, a registry name, constructor arguments, overrides."""

    label: str
    algorithm: str
    settings: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    proposal_epochs: int = 0


@dataclass
class CompareConfig:
    """A validated comparison config (see the module docstring for the TOML layout)."""

    name: str
    dataset: str
    model: dict[str, Any]
    train: dict[str, Any]
    estimators: list[EstimatorSpec]
    seeds: list[int] = field(default_factory=lambda: [0])
    data_dir: str | None = None
    test_k: int = 5000
    test_n: int | None = None
    valid_n: int | None = None
    threads: int | None = None
    out_dir: str | None = None
    data_from: str | None = None

    def train_config(self, spec: EstimatorSpec, seed: int, progress: bool = True) -> TrainConfig:
        """The :class:`TrainConfig` of ``spec`` at ``seed``: [train], then the estimator's overrides (no early stopping by default)."""
        return TrainConfig.from_dict({"patience": None, **self.train, **spec.train, "seed": seed, "progress": progress})


# ------------------------------------------------------------------ config


def _err(where: str, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {key}: {msg}")


def _check_keys(where: str, section: str, table: Any, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(table, dict):
        raise _err(where, section, f"must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _err(where, f"{section}.{unknown[0]}" if section else unknown[0], f"unknown key; allowed keys: {sorted(allowed)}")
    missing = sorted(required - set(table))
    if missing:
        raise _err(where, f"{section}.{missing[0]}" if section else missing[0], "is required")
    return table


def _pos_int(where: str, key: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise _err(where, key, f"must be an integer >= {minimum}, got {v!r}")
    return v


def _check_builtin_model(where: str, raw_model) -> dict:
    """The [model] table of a built-in model kind, checked."""
    model = dict(
        _check_keys(
            where,
            "model",
            raw_model,
            {"kind", "layers", "hidden", "q_hidden", "p_hidden", "likelihood", "learn_prior", "p_layers", "q_layers", "nade_hidden", "prior"},
            {"kind", "layers"},
        )
    )
    kind = model["kind"]
    if kind not in MODEL_KINDS:
        raise _err(where, "model.kind", f"must be one of {sorted(MODEL_KINDS)}, got {kind!r}")
    accepted = set(inspect.signature(MODEL_KINDS[kind]).parameters) - {"sizes"}
    bad = sorted(set(model) - {"kind", "layers"} - accepted)
    if bad:
        raise _err(where, f"model.{bad[0]}", f"is not a setting of a {kind!r} model; its settings: {sorted(accepted)}")

    def widths(v) -> bool:
        return isinstance(v, list) and all(not isinstance(w, bool) and isinstance(w, int) and 1 <= w <= MAX_WIDTH for w in v)

    if not model["layers"] or not widths(model["layers"]):
        raise _err(where, "model.layers", f"must be a non-empty list of integers from 1 to 2**30, got {model['layers']!r}")
    for key in ("hidden", "q_hidden", "p_hidden"):
        if key in model and not widths(model[key]):
            raise _err(where, f"model.{key}", f"must be a list of integers from 1 to 2**30, got {model[key]!r}")
    if "nade_hidden" in model and not widths([model["nade_hidden"]]):
        raise _err(where, "model.nade_hidden", f"must be an integer from 1 to 2**30, got {model['nade_hidden']!r}")
    if "prior" in model and model["prior"] not in PRIOR_KINDS:
        raise _err(where, "model.prior", f"must be one of {list(PRIOR_KINDS)}, got {model['prior']!r}")
    return model


def parse_config(raw: dict, where: str = "config", only: list[str] | None = None) -> CompareConfig:
    """Validate a parsed TOML table into a :class:`CompareConfig`.

    Args:
        raw: the TOML document as a dict.
        where: the file name, for messages.
        only: keep only the estimators with these labels (checked to exist).

    Raises:
        ConfigError: naming the key, for a missing or unknown key, a wrong type, an unknown
            algorithm or model kind, constructor arguments the estimator rejects, a budget key
            in a per-estimator override, or duplicate labels.
    """
    top = {"name", "seeds", "threads", "out_dir", "data", "model", "train", "evaluate", "estimators"}
    _check_keys(where, "", raw, top, {"data", "model", "train", "estimators"})
    name = raw.get("name", Path(where).stem)
    if not isinstance(name, str) or not name:
        raise _err(where, "name", f"must be a non-empty string, got {name!r}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise _err(where, "seeds", f"must be a non-empty list of distinct integers, got {seeds!r}")
    threads = raw.get("threads")
    if threads is not None:
        _pos_int(where, "threads", threads)
    out_dir = raw.get("out_dir")
    if out_dir is not None and not isinstance(out_dir, str):
        raise _err(where, "out_dir", f"must be a string path, got {out_dir!r}")

    data = _check_keys(where, "data", raw["data"], {"dataset", "data_dir", "data_from"})
    if ("dataset" in data) == ("data_from" in data):
        raise _err(where, "data", "give one of dataset (a data set) or data_from (FILE.py:FACTORY, data that streams)")
    for key in ("dataset", "data_from"):
        if key in data and not isinstance(data[key], str):
            raise _err(where, f"data.{key}", f"must be a string, got {data[key]!r}")
    if "data_from" in data:
        try:
            data["data_from"] = resolve_spec(data["data_from"])
        except ModelSpecError as e:
            raise _err(where, "data.data_from", str(e)) from None

    if isinstance(raw["model"], dict) and "spec" in raw["model"]:  # a user's own model: [model] spec = "FILE.py:FACTORY"
        model = dict(_check_keys(where, "model", raw["model"], {"spec"}, {"spec"}))
        if not is_user_spec(model["spec"]):
            raise _err(where, "model.spec", f"must be FILE.py:FACTORY or package.module:FACTORY, got {model['spec']!r}")
        try:
            model["spec"] = resolve_spec(model["spec"])
        except ModelSpecError as e:
            raise _err(where, "model.spec", str(e)) from None
    else:
        model = _check_builtin_model(where, raw["model"])

    train_raw = _check_keys(where, "train", raw["train"], {f.name for f in fields(TrainConfig)} - {"seed", "progress"})
    try:
        TrainConfig.from_dict({"patience": None, **train_raw})
    except (ValueError, TypeError) as e:
        raise _err(where, "train", str(e)) from None

    ev = _check_keys(where, "evaluate", raw.get("evaluate", {}), {"test_k", "test_n", "valid_n"})
    test_k = _pos_int(where, "evaluate.test_k", ev.get("test_k", 5000))
    test_n = None if ev.get("test_n") is None else _pos_int(where, "evaluate.test_n", ev["test_n"])
    valid_n = None if ev.get("valid_n") is None else _pos_int(where, "evaluate.valid_n", ev["valid_n"])

    ests = raw["estimators"]
    if not isinstance(ests, list) or not ests:
        raise _err(where, "estimators", "must be a non-empty array of tables ([[estimators]])")
    specs: list[EstimatorSpec] = []
    for i, e in enumerate(ests):
        key = f"estimators[{i}]"
        _check_keys(where, key, e, {"label", "algorithm", "settings", "train", "proposal_epochs"}, {"algorithm"})
        label = e.get("label", e["algorithm"])
        if not isinstance(label, str) or not label or "/" in label:
            raise _err(where, f"{key}.label", f"must be a non-empty string without '/', got {label!r}")
        settings = e.get("settings", {})
        if not isinstance(settings, dict):
            raise _err(where, f"{key}.settings", "must be a table of constructor arguments")
        overrides = _check_keys(where, f"{key}.train", e.get("train", {}), {f.name for f in fields(TrainConfig)} - {"seed", "progress"})
        budget = sorted(set(overrides) & set(BUDGET_KEYS))
        if budget:
            raise _err(where, f"{key}.train.{budget[0]}", "the budget is shared by every estimator: set it in [train] only")
        proposal_epochs = _pos_int(where, f"{key}.proposal_epochs", e.get("proposal_epochs", 0), minimum=0)
        specs.append(EstimatorSpec(label, e["algorithm"], dict(settings), dict(overrides), proposal_epochs))
    labels = [s.label for s in specs]
    dup = sorted({lb for lb in labels if labels.count(lb) > 1})
    if dup:
        raise _err(where, "estimators", f"labels must be distinct; repeated: {dup} (set label = ... on each)")
    if only:
        missing = sorted(set(only) - set(labels))
        if missing:
            raise ConfigError(f"{where}: no estimator labelled {missing}; labels: {labels}")
        specs = [s for s in specs if s.label in only]
    for i, spec in enumerate(specs):
        key = f"estimators[{labels.index(spec.label)}]"
        if spec.algorithm not in ESTIMATORS:
            raise _err(where, f"{key}.algorithm", f"unknown estimator {spec.algorithm!r}; available: {sorted(ESTIMATORS)}")
        try:
            build_estimator(spec.algorithm, spec.settings)
        except (TypeError, ValueError) as err:
            raise _err(where, f"{key}.settings", f"{spec.algorithm}: {err}") from None
        try:
            TrainConfig.from_dict({"patience": None, **train_raw, **spec.train})
        except (ValueError, TypeError) as err:
            raise _err(where, f"{key}.train", str(err)) from None
    return CompareConfig(
        name=name,
        dataset=data.get("dataset", ""),
        data_dir=data.get("data_dir"),
        data_from=data.get("data_from"),
        model=model,
        train=dict(train_raw),
        estimators=specs,
        seeds=list(seeds),
        test_k=test_k,
        test_n=test_n,
        valid_n=valid_n,
        threads=threads,
        out_dir=out_dir,
    )


def load_config(path: str | Path, only: list[str] | None = None) -> CompareConfig:
    """Read and validate a comparison config from a TOML file.

    Raises:
        ConfigError: a missing or unparseable file, or an invalid config (the message names the key).
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}; see experiments/ for examples") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_config(raw, str(path), only)


# ------------------------------------------------------------------ running


def subset(x: torch.Tensor, n: int | None) -> torch.Tensor:
    """A fixed random subset of n rows (all rows if n is None or ≥ len(x)), the same in every run:
    x [N, D] → [min(n, N), D].

    Random, not the first n: data files are often not shuffled (for one model, binarised MNIST's
    first 100 test images averaged −110 nats and its first 2000 −81).
    """
    if n is None or n >= len(x):
        return x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]]


def build_model(cfg: CompareConfig, data_dim: int):
    """The comparison's model for data of width ``data_dim`` (untrained; seed torch first): a
    Helmholtz machine, or the user's factory (``[model] spec = "FILE.py:FACTORY"``)."""
    return build_table_model(cfg.model, data_dim)


def same_run(recorded: dict, current: dict) -> bool:
    """Whether a run's recorded fingerprint (``run.json``) describes the same run as ``current``.

    Equal, except that a ``train`` key missing from the record (a :class:`TrainConfig` field added
    after the run was made) matches when its current value is the field's default: the run is
    the one the current config would make.
    """
    if recorded.keys() != current.keys():
        return False
    defaults = json.loads(json.dumps(asdict(TrainConfig())))
    train = {k: v for k, v in current.get("train", {}).items() if k in recorded.get("train", {}) or k not in defaults or v != defaults[k]}
    return recorded == {**current, "train": train} if "train" in current else recorded == current


def run_one(cfg: CompareConfig, spec: EstimatorSpec, seed: int, data, run: Path, progress: bool = True, device: str | torch.device = "cpu") -> dict:
    """Train one estimator at one seed in ``run`` (resuming if a checkpoint exists) and evaluate it,
    on ``device`` (not part of the run's fingerprint: a run may resume on another device).

    Returns:
        the per-seed record (also written to ``run/summary.json``); an existing summary is
        returned without rerunning.

    Raises:
        ConfigError: ``run`` holds a run of a different config (``run/run.json`` records it).
    """
    tcfg = cfg.train_config(spec, seed, progress)
    fingerprint = {
        "data": [cfg.dataset, cfg.data_dir] + ([cfg.data_from] if cfg.data_from else []),
        "model": cfg.model,
        "train": {**asdict(tcfg), "progress": None},
        "estimator": asdict(spec),
        "evaluate": [cfg.test_k, cfg.test_n, cfg.valid_n, "random-subset"],
    }
    if (run / RUN).is_file():
        if not same_run(json.loads((run / RUN).read_text()), json.loads(json.dumps(fingerprint))):
            raise ConfigError(f"{run} holds a run of a different config (see {run / RUN}); use another --out or delete it")
        if (run / SUMMARY).is_file():
            return json.loads((run / SUMMARY).read_text())
    else:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run / RUN, json.dumps(fingerprint, indent=2))
    torch.manual_seed(seed)  # same initial model for every estimator at this seed
    model = build_model(cfg, data.dim).to(device)  # built on the CPU first: the same initial model on every device
    if not (run / CONFIG).is_file():  # the record every run directory keeps, as `wakesleep train` writes it
        train_record = {k: v for k, v in asdict(tcfg).items() if k != "progress"}
        model_record = model_config(model, cfg.model.get("spec"), data.dim)
        record = run_record(
            model_record,
            spec.algorithm,
            spec.settings,
            cfg.dataset,
            cfg.data_dir,
            train_record,
            cfg.test_k,
            data_fingerprint(data),
            cfg.data_from,
            STREAM_SEED if cfg.data_from else None,
        )
        atomic_write_text(run / CONFIG, json.dumps(record, indent=2))
    else:  # a run resumed: on the data it started on
        try:
            check_same_data(json.loads((run / CONFIG).read_text()), data, run)
        except (DataError, ValueError) as e:
            raise ConfigError(str(e)) from None
    estimator = build_estimator(spec.algorithm, spec.settings)
    valid = subset(data.valid, cfg.valid_n)
    fit = train(model, estimator, data.train, valid, tcfg, run_dir=run, resume=(run / CHECKPOINT).is_file())
    proposal_seconds = 0.0
    if spec.proposal_epochs:
        pcfg = TrainConfig.from_dict({**asdict(tcfg), "epochs": spec.proposal_epochs, "max_seconds": None, "patience": None})
        proposal_seconds = train(model, SleepPhase(), data.train, valid, pcfg).seconds
    model.eval()
    test = subset(data.test, cfg.test_n)
    ll = log_likelihood(model, test, k=cfg.test_k, seed=seed, progress=progress)
    record = {
        "label": spec.label,
        "algorithm": spec.algorithm,
        "settings": json.dumps(spec.settings, sort_keys=True),
        "seed": seed,
        "test_log_likelihood": ll.mean,
        "test_stderr": ll.stderr,
        "test_k": ll.k,
        "test_n": ll.n,
        "best_valid_log_likelihood": fit.best_valid,
        "epochs": len(fit.history),
        "train_seconds": fit.seconds,
        "clock": tcfg.clock,
        "proposal_seconds": proposal_seconds,
        "stopped": fit.stopped,
        "skipped_steps": fit.skipped_steps,
        **_last_extras(fit.history),
    }
    atomic_write_text(run / SUMMARY, json.dumps(record, indent=2))
    return record


def _extra_keys(records: list[dict]) -> list[str]:
    """The validation record's keys beyond the log-likelihood (the model's ``metrics``, ``valid_q_grad_std``), in order."""
    return list(dict.fromkeys(k for r in records for k in r if k.startswith("valid_") and k not in ("valid_log_likelihood", "valid_stderr")))


def _last_extras(history: list[dict]) -> dict[str, float]:
    """The last validation's extra metrics (:func:`wakesleep.training.metrics.validation_metrics`), or none."""
    valid = [r for r in history if "valid_log_likelihood" in r]
    return {k: valid[-1][k] for k in _extra_keys(valid[-1:])} if valid else {}


def summarise(records: list[dict]) -> list[dict]:
    """Per-estimator rows: test log-likelihood mean and s.e. across seeds (nats), mean training time;
    and for each extra validation metric (the model's ``metrics``, ``valid_q_grad_std``) at the
    last validation, its mean ``NAME`` and s.e. across seeds ``NAME_stderr``."""
    out = []
    for label in dict.fromkeys(r["label"] for r in records):
        rs = [r for r in records if r["label"] == label]
        lls = torch.tensor([r["test_log_likelihood"] for r in rs], dtype=torch.float64)
        n = len(rs)
        out.append(
            {
                "label": label,
                "algorithm": rs[0]["algorithm"],
                "settings": rs[0]["settings"],
                "seeds": n,
                "test_log_likelihood": lls.mean().item(),
                "stderr_seeds": lls.std().item() / math.sqrt(n) if n > 1 else float("nan"),
                "stderr_points": sum(r["test_stderr"] for r in rs) / n,
                "test_k": rs[0]["test_k"],
                "test_n": rs[0]["test_n"],
                "train_seconds": sum(r["train_seconds"] for r in rs) / n,
                "clock": rs[0]["clock"],
                "epochs": sum(r["epochs"] for r in rs) / n,
            }
        )
        for key in _extra_keys(rs):
            v = mean_stderr(torch.tensor([r[key] for r in rs if key in r], dtype=torch.float64))
            out[-1][key], out[-1][f"{key}_stderr"] = v.mean, v.stderr
    return out


PER_SEED_COLUMNS = (
    "label",
    "algorithm",
    "settings",
    "seed",
    "test_log_likelihood",
    "test_stderr",
    "test_k",
    "test_n",
    "best_valid_log_likelihood",
    "epochs",
    "train_seconds",
    "clock",
    "proposal_seconds",
    "stopped",
    "skipped_steps",
)
SUMMARY_COLUMNS = (
    "label",
    "algorithm",
    "settings",
    "seeds",
    "test_log_likelihood",
    "stderr_seeds",
    "stderr_points",
    "test_k",
    "test_n",
    "train_seconds",
    "clock",
    "epochs",
)


def _curve_series(cfg: CompareConfig, out: Path, key: str, x: str) -> dict[str, list[tuple[float, float, float]]]:
    """Per estimator: (mean x, mean ``key``, s.e. of ``key``) over seeds at each validation present in every seed."""
    series = {}
    for spec in cfg.estimators:
        runs = [plots.read_jsonl(p) for s in cfg.seeds if (p := out / spec.label / f"seed{s}" / METRICS).is_file()]
        runs = [r for r in ([r for r in recs if key in r] for recs in runs) if r]
        if not runs:
            continue
        points = []
        for i in range(min(len(r) for r in runs)):
            t = torch.tensor([r[i][x] for r in runs], dtype=torch.float64)
            v = mean_stderr(torch.tensor([r[i][key] for r in runs], dtype=torch.float64))
            points.append((t.mean().item(), v.mean, v.stderr))
        series[spec.label] = points
    return series


def curves_plot(cfg: CompareConfig, out: Path, path: Path) -> Path | None:
    """Validation log-likelihood against training time, mean ± s.e. over seeds at each epoch present in every seed."""
    series = _curve_series(cfg, out, "valid_log_likelihood", "time")
    if not series:
        return None
    clock = cfg.train.get("clock", "wall")
    k = cfg.train.get("valid_k", TrainConfig.valid_k)
    return plots.comparison_plot(
        series,
        path,
        xlabel=f"training time (s, {'process CPU' if clock == 'process' else 'wall'})",
        ylabel=f"validation log-likelihood (nats, K={k})",
        title=f"{cfg.name}: mean ± s.e. over {len(cfg.seeds)} seeds",
    )


def metric_curves(cfg: CompareConfig, out: Path, keys: list[str]) -> list[Path]:
    """``OUT/curves-NAME.png`` for each extra validation metric NAME (the model's ``metrics``,
    ``valid_q_grad_std``): mean ± s.e. over seeds against training iterations."""
    paths = []
    for key in keys:
        series = _curve_series(cfg, out, key, "step")
        if series:
            title = f"{cfg.name}: mean ± s.e. over {len(cfg.seeds)} seeds"
            paths.append(plots.comparison_plot(series, out / f"curves-{key}.png", "iterations", key, title, legend_below=len(series) > 6))
    return paths


def run_compare(
    cfg: CompareConfig, out_dir: str | Path | None = None, progress: bool = True, device: str | torch.device = "cpu"
) -> tuple[list[dict], list[dict], Path]:
    """Run every estimator at every seed on ``device`` and write the tables and plot.  On a GPU,
    a budget with ``clock = "process"`` counts only the host's CPU time: use ``clock = "wall"``.

    Returns:
        ``(per_seed_records, summary_rows, out_dir)``.

    Raises:
        wakesleep.data.DataError: the data set cannot be loaded.
        ValueError: the model does not fit the data (e.g. a Bernoulli likelihood on grey levels),
            or an estimator cannot train the model (IWAE on binary latents).
    """
    out = Path(out_dir or cfg.out_dir or f"runs/compare/{cfg.name}")
    data = stream_dataset(cfg.data_from, STREAM_SEED) if cfg.data_from else load_dataset(cfg.dataset, data_dir=cfg.data_dir)
    probe = build_model(cfg, data.dim)
    train_x = torch.as_tensor(getattr(data, "probe", data.train)).to(dtype=device_dtype(probe)[1])
    for spec in cfg.estimators:  # every estimator's members and shapes, before any run starts
        check_model_for_training(probe, build_estimator(spec.algorithm, spec.settings), train_x, None)
    for split in SPLITS:  # before any run starts: e.g. a Bernoulli likelihood on grey levels
        if split == "train" and cfg.data_from:
            continue  # a stream: each batch is checked as it comes
        try:
            check_data(probe, getattr(data, split), f"{data.name} ({split})")
        except ValueError as e:
            hint = (
                ' (in the config: [model] likelihood = "gaussian")'
                if getattr(probe, "binary_data", False) and not data.binary and "spec" not in cfg.model
                else ""
            )
            raise ValueError(f"{e}{hint}") from None
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))
    records = []
    with torch_threads(cfg.threads):
        for spec in cfg.estimators:
            for seed in cfg.seeds:
                print(f"[{cfg.name}] {spec.label} seed {seed}", flush=True)
                records.append(run_one(cfg, spec, seed, data, out / spec.label / f"seed{seed}", progress, device))
                extras = _extra_keys(records)
                atomic_write_text(out / "per_seed.csv", csv_text(records, PER_SEED_COLUMNS + tuple(extras)))
    summary = summarise(records)
    atomic_write_text(out / "summary.csv", csv_text(summary, SUMMARY_COLUMNS + tuple(k for e in extras for k in (e, f"{e}_stderr"))))
    atomic_write_text(out / "summary.md", markdown_table(summary) + "\n")
    curves_plot(cfg, out, out / "curves.png")
    metric_curves(cfg, out, extras)
    return records, summary, out
