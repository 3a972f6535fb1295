"""Gradient diagnostics: how good is each estimator's learning signal, against the exact gradient?

For a model with an exact reference (:mod:`wakesleep.models.exact`) and a data batch x [B, D],
each estimator setting is run R times; every run gives one θ-estimate ĝ = −∇θ loss (and one
φ-estimate, −∇φ loss).  Against the exact target g (∇θ mean_b log p_θ(x_b); for φ the quantity
the estimator's φ-update aims at, see :func:`phi_target`) this reports, in units of ‖g‖:

- ``rel_bias``: ‖E ĝ − g‖ / ‖g‖, estimated without the noise inflation of ‖mean − g‖: with
  d = mean_r ĝ_r − g and Σ̂ the sample covariance, b̂² = ‖d‖² − tr Σ̂ / R is unbiased for
  ‖E ĝ − g‖², and ``rel_bias`` = √max(b̂², 0) / ‖g‖.  ``bias_z`` = b̂² / se(b̂²) with
  se(b̂²)² = 2 tr(Σ̂²)/R² + 4 dᵀΣ̂d/R (Gaussian approximation): above ~3, the bias is
  significant.  ``rel_bias_se`` = se(b̂²) / (2 max(b̂, √se(b̂²))) / ‖g‖ (delta method, floored
  where b̂ is within noise of 0).  ``rel_noise`` = √(tr Σ̂ / R) / ‖g‖ is the Monte Carlo
  floor of ‖d‖.
- ``rel_variance``: tr Cov(ĝ) / ‖g‖² of a single estimate.
- ``rel_rmse``: √(mean_r ‖ĝ_r − g‖²) / ‖g‖ of a single estimate (with ``rel_rmse_se``).
- ``rel_rmse_budget``: the error of the average of the estimates one can afford in ``budget_s``
  process-CPU seconds, √(b̂² + tr Σ̂ / max(1, budget/t)) / ‖g‖ — the accuracy per second that decides which
  estimator to use when gradients are averaged over time (as an optimiser does).
- ``cos_mean`` = cos(mean_r ĝ_r, g); ``cos_single`` = mean_r cos(ĝ_r, g) (with ``cos_single_se``).
- ``seconds`` / ``cpu_seconds``: wall / process-CPU time per estimate (forward + backward).
- ``ll_gap``: for estimators that report an ``objective`` (the importance-sampled bound
  log (1/K) Σ_k w_k, nats per datapoint), its mean minus the exact mean log p(x), with ``ll_gap_se``.
- ``snr``: the gradient's signal-to-noise ratio, mean over parameters of |mean_r ĝ_ri| / sd_r(ĝ_ri)
  (Rainforth et al. 2018, "Tighter variational bounds are not necessarily better": the φ-gradient
  of the IWAE bound has SNR falling as O(1/√K), while RWS's wake-φ update's rises).  It needs no
  target, so φ-updates without an exact target (VIMCO's, TVO's, IWAE's: each ascends its own
  bound) get a row ``phi-own`` with ``snr`` and the times only.

Settings are strings ``"rws:k=8,q_update=wake"`` (:meth:`wakesleep.config.Setting.parse`).  Source of the protocol:
``../shared/reference/ALGORITHMS.md`` §5 (bias and variance of each gradient estimator against the
exact gradient), and §4/§7.1 of the ALWS paper (Wenliang et al. 2020: gradient estimation on a
model with a known gradient).
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from wakesleep import plots
from wakesleep.config import Setting
from wakesleep.evaluate import mean_stderr
from wakesleep.io import atomic_write_text
from wakesleep.lab.tables import csv_text, torch_threads
from wakesleep.models.contract import RELAXATION, ModelContractError, check_model, device_dtype, missing_members
from wakesleep.models.exact import NoExactReference, exact_elbo_phi_target, exact_sleep_phi_target, exact_wake_phi_target, flat_grad
from wakesleep.models.exact import reference_log_marginal as exact_log_marginal

#: Columns of the results table, in order.
COLUMNS = (
    "reference",
    "setting",
    "algorithm",
    "params",
    "target",
    "repeats",
    "rel_bias",
    "rel_bias_se",
    "bias_z",
    "rel_noise",
    "rel_variance",
    "rel_rmse",
    "rel_rmse_se",
    "rel_rmse_budget",
    "budget_s",
    "cos_mean",
    "cos_single",
    "cos_single_se",
    "seconds",
    "cpu_seconds",
    "ll_gap",
    "ll_gap_se",
    "grad_norm",
    "snr",
)
#: Columns shown by :func:`format_table`.
SHOWN = (
    "setting",
    "target",
    "rel_bias",
    "rel_bias_se",
    "bias_z",
    "rel_variance",
    "rel_rmse",
    "rel_rmse_budget",
    "cos_mean",
    "cos_single",
    "cpu_seconds",
    "ll_gap",
    "snr",
)
#: The settings that count particles or samples: K (RWS, IWAE, VIMCO, ...) and ALWS's number of sleep samples N.
#: Plots draw one line per setting with these left out (:func:`_family`).
COUNT_NAMES = ("k", "sleep_samples")


# ------------------------------------------------------------------ settings


def alws_settings(ns: Sequence[int] = (100, 400, 1600), kernels: Sequence[str] = ("gaussian", "matern32")) -> list[Setting]:
    """ALWS settings ``alws:sleep_samples=N,kernel=...`` for every kernel, and within each every N.

    Settings ALWS rejects (e.g. N < 2, an unknown kernel) are left out with a warning.
    """
    out = []
    for kernel in kernels:
        for n in ns:
            s = Setting.of("alws", sleep_samples=n, kernel=kernel)
            try:
                s.build()
            except ValueError as e:
                warnings.warn(f"leaving out {s.label}: {e}", stacklevel=2)
                continue
            out.append(s)
    return out


def default_settings(model, ks: Sequence[int] = (2, 8, 32, 128, 512), alws_ns: Sequence[int] = (100, 400, 1600)) -> list[Setting]:
    """The settings :func:`diagnose` runs by default for ``model``.

    WS (K = 1); RWS at every K with wake-φ updates, and at K = 8 with sleep and both; for
    reparameterisable models VAE and IWAE at every K; for discrete latents (not
    reparameterisable) VIMCO, TVO, REINFORCE and memoised wake-sleep (its memory, M = 10, from each
    call's own K proposals: diagnose passes no datapoint indices) at every K, NVIL at K = 1 and RWS
    with defensive importance sampling (δ = 0.2) at every K; for a model with one relaxable discrete
    latent layer (``has_relaxation``, :data:`~wakesleep.models.contract.RELAXATION`) Concrete at
    K = 1 for temperatures 1, 0.5 and 0.1 with either density, and RELAX at every K; ALWS at several
    N and kernels (:func:`alws_settings`).
    """
    out = [Setting.of("ws")]
    out += [Setting.of("rws", k=k, q_update="wake") for k in ks]
    out += [Setting.of("rws", k=8, q_update=q) for q in ("sleep", "both")]
    if getattr(model, "reparameterizable", False):
        out.append(Setting.of("vae"))
        out += [Setting.of("iwae", k=k) for k in ks]
    else:
        out += [Setting.of(name, k=k) for name in ("vimco", "tvo", "reinforce", "mws") for k in ks]
        out += [Setting.of("nvil")]
        out += [Setting.of("rws", k=k, q_update="wake", defensive=0.2) for k in ks]
        if not missing_members(model, RELAXATION):
            out += [Setting.of("concrete", temperature=t, density=d) for d in ("concrete", "discrete") for t in (1.0, 0.5, 0.1)]
            out += [Setting.of("relax", k=k) for k in ks]
    return out + alws_settings(alws_ns)


def phi_target(estimator) -> str | None:
    """Which known quantity an estimator's φ-update estimates: its ``q_update`` attribute, if one of

    ``"sleep"``: E_{p(z,x)}∇φ log q(z|x) (WS, whose class sets it; RWS with q_update="sleep";
    ALWS with ``q_update="sleep"``);
    ``"wake"``: −∇φ KL(p(z|x) ‖ q(z|x)) (RWS wake-φ, consistent in K);
    ``"both"``: their average (RWS q_update="both");
    ``"elbo"``: ∇φ ELBO (REINFORCE; NVIL, up to its scale 1/max(1, σ̂); RELAX; Concrete at K = 1,
    with the bias of its relaxation);
    None otherwise (VAE/IWAE/VIMCO/TVO ascend ∇φ of their own bound; ALWS by default leaves φ alone).
    """
    q_update = getattr(estimator, "q_update", None)  # WS ("sleep"); RWS; ALWS with q_update="sleep"; REINFORCE, NVIL, RELAX, Concrete ("elbo")
    return q_update if q_update in ("wake", "sleep", "both", "elbo") else None


# ------------------------------------------------------------------ statistics


def gradient_stats(samples: Tensor, target: Tensor, seconds: float | None = None, budget_s: float = 0.1) -> dict:
    """Bias, variance, error and cosine statistics of R repeated estimates against a target.

    Args:
        samples: [R, P] estimates (R ≥ 2).
        target: [P] exact value (nonzero).
        seconds: time per estimate, for ``rel_rmse_budget`` (omitted when None).
        budget_s: the time budget of ``rel_rmse_budget``.

    Returns:
        dict with the columns described in the module docstring.

    Raises:
        ValueError: fewer than 2 repeats, mismatched shapes, or a zero target.
    """
    if samples.ndim != 2 or samples.shape[0] < 2 or samples.shape[1] != target.numel():
        raise ValueError(f"need samples [R >= 2, P] and target [P]; got {tuple(samples.shape)} and {tuple(target.shape)}")
    samples, target = samples.double(), target.double().reshape(-1)
    norm = target.norm().item()
    if norm == 0:
        raise ValueError("the exact target is zero; relative errors are undefined")
    r = samples.shape[0]
    mean = samples.mean(0)
    c = samples - mean
    d = mean - target
    tr = (c * c).sum().item() / (r - 1)  # tr Σ̂
    gram = c @ c.T
    tr_sq = (gram * gram).sum().item() / (r - 1) ** 2  # tr Σ̂² = ‖CᵀC‖_F² / (R−1)²
    d_sigma_d = ((c @ d) ** 2).sum().item() / (r - 1)
    b2 = d.dot(d).item() - tr / r
    se_b2 = math.sqrt(max(2 * tr_sq / r**2 + 4 * max(d_sigma_d, 0.0) / r, 0.0))
    b = math.sqrt(max(b2, 0.0))
    errs = ((samples - target) ** 2).sum(1)  # ‖ĝ_r − g‖²
    mse = errs.mean().item()
    rmse = math.sqrt(mse)
    cos = torch.nn.functional.cosine_similarity(samples, target[None], dim=1)
    out = {
        "repeats": r,
        "grad_norm": norm,
        "rel_bias": b / norm,
        "rel_bias_se": se_b2 / (2 * max(b, math.sqrt(se_b2), 1e-300)) / norm,
        "bias_z": b2 / se_b2 if se_b2 > 0 else (math.inf if b2 > 0 else 0.0),
        "rel_noise": math.sqrt(tr / r) / norm,
        "rel_variance": tr / norm**2,
        "rel_rmse": rmse / norm,
        "rel_rmse_se": (errs.std().item() / math.sqrt(r)) / (2 * max(rmse, 1e-300)) / norm,
        "cos_mean": torch.nn.functional.cosine_similarity(mean, target, dim=0).item(),
        "cos_single": cos.mean().item(),
        "cos_single_se": cos.std().item() / math.sqrt(r),
    }
    if seconds is not None:
        n_avg = max(1.0, budget_s / max(seconds, 1e-12))
        out["rel_rmse_budget"] = math.sqrt(max(b2, 0.0) + tr / n_avg) / norm
        out["budget_s"] = budget_s
    return out


def signal_to_noise(samples: Tensor) -> float:
    """The mean over parameters of |mean_r ĝ_ri| / sd_r(ĝ_ri) for R estimates ``samples`` [R, P]
    (Rainforth et al. 2018's SNR, per parameter, then averaged); parameters whose estimates do not
    vary (sd = 0) are left out.  NaN when none varies.

    Raises:
        ValueError: fewer than 2 repeats.
    """
    if samples.ndim != 2 or samples.shape[0] < 2:
        raise ValueError(f"need samples [R >= 2, P], got {tuple(samples.shape)}")
    samples = samples.double()
    mean, sd = samples.mean(0), samples.std(0)
    varies = sd > 0
    return (mean[varies].abs() / sd[varies]).mean().item() if varies.any() else math.nan


def loglog_slope(x: Sequence[float], y: Sequence[float], y_se: Sequence[float]) -> tuple[float, float]:
    """Weighted least-squares slope of log y on log x, with its standard error.

    Weights 1 / se(log y)² with se(log y) = y_se / y (delta method); the slope's standard error
    is √(1 / Σ w (log x − mean_w)²).  E.g. RWS's θ-bias against K should give a slope near −1.

    Raises:
        ValueError: fewer than 2 points, or a non-positive x, y or se.
    """
    x, y, s = (torch.tensor(list(v), dtype=torch.float64) for v in (x, y, y_se))
    if x.numel() < 2 or not (len(x) == len(y) == len(s)) or (x <= 0).any() or (y <= 0).any() or (s <= 0).any():
        raise ValueError(f"loglog_slope needs >= 2 points with positive x, y and se; got {x.tolist()}, {y.tolist()}, {s.tolist()}")
    lx, ly, w = x.log(), y.log(), (y / s) ** 2
    mx, my = (w * lx).sum() / w.sum(), (w * ly).sum() / w.sum()
    sxx = (w * (lx - mx) ** 2).sum()
    slope = (w * (lx - mx) * (ly - my)).sum() / sxx
    return slope.item(), math.sqrt(1.0 / sxx.item())


# ------------------------------------------------------------------ running


@dataclass
class Targets:
    """The exact quantities estimators are compared with.

    Attributes:
        theta: ∇θ mean_b log p_θ(x_b), flattened over ``model.p_parameters()`` [P_θ].
        log_marginal: mean_b log p_θ(x_b), nats, a detached scalar tensor.
        phi: φ-target name (``"wake"``, ``"sleep"``, ``"both"``, ``"elbo"``) → flattened target over
            ``model.q_parameters()`` [P_φ]; names the model has no exact form of are absent.
    """

    theta: Tensor
    log_marginal: Tensor
    phi: dict[str, Tensor] = field(default_factory=dict)


def exact_targets(model, x: Tensor) -> Targets:
    """Exact θ-gradient, mean log p(x), and the φ-targets this model has ("wake", "sleep", "both", "elbo").

    Args:
        x: the data batch [B, D].

    Returns:
        :class:`Targets`: theta [P_θ]; log_marginal, a scalar (nats, mean over the batch);
        ``phi[name]`` [P_φ].

    Raises:
        NoExactReference: the model has no exact log p(x).
    """
    lm = exact_log_marginal(model, x)  # [B], with gradient
    theta = flat_grad(model.p_parameters(), lm.mean())
    log_marginal = lm.detach().mean()
    phi = {}
    for name, fn in (
        ("wake", lambda: exact_wake_phi_target(model, x)),
        ("sleep", lambda: exact_sleep_phi_target(model)),
        ("elbo", lambda: exact_elbo_phi_target(model, x)),
    ):
        try:
            phi[name] = fn()
        except NoExactReference:
            pass
    if "wake" in phi and "sleep" in phi:
        phi["both"] = 0.5 * (phi["wake"] + phi["sleep"])
    return Targets(theta, log_marginal, phi)


def estimate(model, x: Tensor, estimator, repeats: int, progress: bool = False, desc: str = "") -> dict:
    """Run ``estimator`` ``repeats`` times on (model, x); collect θ- and φ-estimates and timings.

    Returns:
        dict with ``theta`` [R, P_θ], ``phi`` [R, P_φ] (the negated loss gradients),
        ``objective`` [R] or None, ``seconds`` and ``cpu_seconds`` per estimate.
    """
    theta_params, phi_params = model.p_parameters(), model.q_parameters()
    n_theta = sum(p.numel() for p in theta_params)
    # An estimator with state (ALWS's kernel, lazily initialised or stepped inside forward) is
    # put back after every call, so that the R estimates are independent draws from one state.
    state = copy.deepcopy(estimator.state_dict())
    gs, objective, wall, cpu = [], [], 0.0, 0.0
    for _ in tqdm(range(repeats), desc=desc, disable=not progress, leave=False):
        t0, c0 = time.perf_counter(), time.process_time()
        out = estimator(model, x)
        g = flat_grad(theta_params + phi_params, -out.loss)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        if state:
            estimator.load_state_dict(state)
        gs.append(g)
        if "objective" in out.metrics:
            objective.append(float(out.metrics["objective"]))
    g = torch.stack(gs)
    return {
        "theta": g[:, :n_theta],
        "phi": g[:, n_theta:],
        "objective": torch.tensor(objective, dtype=torch.float64) if len(objective) == repeats else None,
        "seconds": wall / repeats,
        "cpu_seconds": cpu / repeats,
    }


def diagnose(
    model,
    x: Tensor,
    settings: Iterable[Setting | str] | None = None,
    repeats: int = 200,
    seed: int = 0,
    reference: str = "",
    budget_s: float = 0.1,
    threads: int | None = 1,
    progress: bool = True,
) -> list[dict]:
    """Diagnose estimator settings on a model with an exact reference.

    Each setting is seeded with ``seed`` (so rows do not depend on which other settings run)
    and run ``repeats`` times.  Settings the model does not support (IWAE on binary latents)
    are skipped with a warning.

    Args:
        model: a model with an exact reference (see :mod:`wakesleep.models.exact`).
        x: the data batch [B, D] (the model's dtype and device).
        settings: :class:`Setting` objects or strings such as ``"rws:k=8"``; default
            :func:`default_settings`.
        repeats: R ≥ 2, estimates per setting.
        seed: torch seed set before each setting.
        reference: a name written into the ``reference`` column.
        budget_s: the time budget of ``rel_rmse_budget`` (process-CPU seconds).
        threads: torch CPU threads while timing (restored afterwards; None: leave as is).  One
            thread by default: these models are too small to gain from more, and on a shared
            machine extra threads mostly wait for each other, which swamps the timings.
        progress: show a progress bar.

    Returns:
        rows (dicts with :data:`COLUMNS`; absent values are None): one θ row per setting, plus
        one φ row per setting whose φ-update estimates a known quantity (:func:`phi_target`).

    Raises:
        ValueError: repeats < 2, a bad setting string, or data of the wrong width.
        NoExactReference: a model with no exact reference.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ValueError(f"repeats must be an integer >= 2, got {repeats!r}")
    dim = getattr(model, "data_dim", x.shape[-1])
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"x must be [B, {dim}], got {tuple(x.shape)}")
    settings = default_settings(model) if settings is None else [Setting.parse(s) if isinstance(s, str) else s for s in settings]
    device, dtype = device_dtype(model)
    p = torch.empty((), device=device, dtype=dtype)
    with torch_threads(threads):
        targets = exact_targets(model, x)
        rows = []
        bar = tqdm(settings, desc=f"diagnose {reference}".strip(), disable=not progress)
        for setting in bar:
            bar.set_postfix_str(setting.label)
            rows += _diagnose_one(model, x, setting, targets, repeats, seed, reference, budget_s, p)
    return [{c: r.get(c) for c in COLUMNS} for r in rows]


def _diagnose_one(model, x, setting: Setting, targets: Targets, repeats, seed, reference, budget_s, p) -> list[dict]:
    est = setting.build().to(device=p.device, dtype=p.dtype)
    try:
        check_model(model, est.requires(model), setting.label, est.member_hints())
        est.check_model(model)
    except (ValueError, ModelContractError) as e:
        warnings.warn(f"skipping {setting.label}: {e}", stacklevel=3)
        return []
    est.prepare(model, x)  # state sized by the model and data (RELAX's control-variate network), as the trainer does
    torch.manual_seed(seed)
    res = estimate(model, x, est, repeats)
    base = {
        "reference": reference,
        "setting": setting.label,
        "algorithm": setting.algorithm,
        "params": json.dumps(setting.kwargs, sort_keys=True),
        "seconds": res["seconds"],
        "cpu_seconds": res["cpu_seconds"],
    }
    row = {
        **base,
        "target": "theta",
        **gradient_stats(res["theta"], targets.theta, res["cpu_seconds"], budget_s),
        "snr": signal_to_noise(res["theta"]),
    }
    if res["objective"] is not None:
        gap = mean_stderr(res["objective"] - targets.log_marginal.item())
        row["ll_gap"], row["ll_gap_se"] = gap.mean, gap.stderr
    rows = [row]
    which, snr = phi_target(est), signal_to_noise(res["phi"])
    if which in targets.phi:
        rows.append({**base, "target": f"phi-{which}", **gradient_stats(res["phi"], targets.phi[which], res["cpu_seconds"], budget_s), "snr": snr})
    elif which is None and res["phi"].abs().sum() > 0:  # a φ-update with no exact target: its SNR alone
        rows.append({**base, "target": "phi-own", "repeats": repeats, "snr": snr})
    return rows


# ------------------------------------------------------------------ output


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if math.isfinite(v) else str(v)
    return str(v)


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Write the rows as CSV with header :data:`COLUMNS` (full precision; empty cells for None) to
    ``path`` atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, csv_text(rows, COLUMNS))
    return path


def format_table(rows: Sequence[dict], columns: Sequence[str] = SHOWN) -> str:
    """A fixed-width text table of ``columns`` with 3 significant figures."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _family(row: dict) -> str:
    """Series name: the algorithm with its settings other than the particle/sample count."""
    params = {k: v for k, v in json.loads(row["params"] or "{}").items() if k not in COUNT_NAMES}
    return row["algorithm"] + ("(" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + ")" if params else "")


def _count(row: dict) -> tuple[str, object] | None:
    """The particle/sample-count setting of a row (k for RWS/IWAE, N for ALWS), if any."""
    params = json.loads(row["params"] or "{}")
    return next(((k, params[k]) for k in COUNT_NAMES if k in params), None)


def _with_range(name: str, rows: Sequence[dict]) -> str:
    """``name`` with the counts its family's rows run over appended, e.g. ``rws(q_update=wake) k=2,8,32``."""
    base = name.split(" [")[0]
    counts = [c for r in rows if _family(r) == base and (c := _count(r)) is not None]
    values = sorted({v for _, v in counts})
    if values:
        return f"{name} {counts[0][0]}={','.join(str(v) for v in values)}"
    return name


def error_time_plot(rows: Sequence[dict], path: str | Path, target: str = "theta", title: str | None = None) -> Path:
    """Relative RMSE of a single estimate against process-CPU seconds per estimate (robust on a
    shared machine), log-log, one line per family (e.g. RWS over K, IWAE over K, ALWS over N for
    one kernel).

    Args:
        rows: rows of :func:`diagnose` (dicts with :data:`COLUMNS`).
        path: the PNG file to write.
        target: ``"theta"``, ``"phi"`` (every φ target, one line each) or one of ``"phi-wake"``,
            ``"phi-sleep"``, ``"phi-both"``.

    Returns:
        ``path``.

    Raises:
        ValueError: no rows for ``target``.
    """
    series = _series(rows, target, lambda r: (r["cpu_seconds"], r["rel_rmse"], r["rel_rmse_se"]) if r["rel_rmse"] is not None else None)
    if not series:
        raise ValueError(f"no diagnostics rows for target {target!r}")
    series = {_with_range(name, rows): pts for name, pts in series.items()}
    return plots.comparison_plot(
        series, path, "process CPU seconds per estimate", f"RMSE / ‖g‖ ({target} gradient)", title, logx=True, logy=True, legend_below=True
    )


def _series(rows: Sequence[dict], target: str, point) -> dict[str, list]:
    """The plot lines of ``target``'s rows (``"phi"``: every φ target, named in brackets): family ->
    ``point(row)`` for each row where it is not None."""
    series: dict[str, list] = {}
    for r in rows:
        if (r["target"] == target or (target == "phi" and r["target"].startswith("phi-"))) and (pt := point(r)) is not None:
            series.setdefault(_family(r) + (f" [{r['target']}]" if target == "phi" else ""), []).append(pt)
    return series


def snr_plot(rows: Sequence[dict], path: str | Path, target: str = "phi", title: str | None = None) -> Path:
    """Signal-to-noise ratio (``snr``) of the gradient against the number of particles K, log-log, one
    line per family with a count (RWS wake-φ, VIMCO, IWAE, TVO, ... over K): the effect Rainforth et
    al. 2018 describe (the IWAE bound's φ-gradient SNR falls with K; RWS's wake-φ does not).

    Args:
        rows: rows of :func:`diagnose`.
        path: the PNG file to write.
        target: ``"phi"`` (every φ row: its target in brackets) or ``"theta"``.

    Returns:
        ``path``.

    Raises:
        ValueError: no rows with a particle count and a finite SNR for ``target``.
    """

    def point(r):
        count = _count(r)
        if count is None or count[0] != "k" or r.get("snr") is None or not math.isfinite(r["snr"]):
            return None
        return count[1], r["snr"]

    series = _series(rows, target, point)
    if not series:
        raise ValueError(f"no diagnostics rows with a particle count and an SNR for target {target!r}")
    return plots.comparison_plot(
        series, path, "particles K", f"SNR of the {target} gradient (mean |E g| / sd)", title, logx=True, logy=True, legend_below=True
    )
