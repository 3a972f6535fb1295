"""``wakesleep diagnose`` and ``wakesleep compare CONFIG``: the research tools (:mod:`wakesleep.lab`) on the command line.

``wakesleep diagnose``: bias, variance, cosine and time per estimate of every estimator's
gradient on the exact references (:mod:`wakesleep.lab.diagnostics`), or on a user's own model with an
exact log p(x) (``--model FILE.py:FACTORY``).
``wakesleep compare CONFIG.toml``: train several estimators like for like and report test
log-likelihood with time (:mod:`wakesleep.lab.compare`).
"""

from __future__ import annotations

import argparse
import contextlib
import warnings
from pathlib import Path

import torch

from wakesleep.cli.options import DEVICE_OPTION, add_command, resolve_device
from wakesleep.cli.options import _positive_float as positive_float
from wakesleep.cli.options import _positive_int as positive_int
from wakesleep.lab import compare, diagnostics
from wakesleep.lab.tables import markdown_table
from wakesleep.models import check_model
from wakesleep.models import exact as references
from wakesleep.models.loading import build_user_model


def add_parsers(sub) -> None:
    """Add the ``diagnose`` and ``compare`` parsers to ``sub`` (an argparse subparsers object)."""
    d = add_command(
        sub,
        "diagnose",
        "measure each estimator's gradient against the exact gradient",
        "Run each estimator R times on an exact reference model (factor analysis, a small SBN, or a Gaussian-latent "
        "model integrated by quadrature) and report, against the exact gradient, the relative bias (with s.e.), "
        "the relative variance, RMSE, cosine similarity and time per estimate, for θ and for φ where the "
        "φ-update estimates a known quantity. Writes a CSV table and log-log plots of error against time.",
    )
    d.add_argument(
        "--reference",
        nargs="+",
        default=None,
        choices=sorted(references.REFERENCES),
        help="exact reference model(s) (default: factor-analysis sbn, or none with --model)",
    )
    d.add_argument(
        "--model",
        nargs="+",
        default=[],
        metavar="FILE.py:FACTORY",
        help="your own model(s) with an exact log p(x) (exact_log_marginal or enumerate_latents; see "
        "docs/your-own-model.md), diagnosed on a batch drawn from the model itself (factory called with "
        "--data-dim when it takes data_dim)",
    )
    d.add_argument("--data-dim", type=positive_int, default=None, help="data width passed to --model factories that take data_dim")
    d.add_argument(
        "--estimator",
        nargs="+",
        default=None,
        metavar="SPEC",
        help="settings such as ws rws:k=8,q_update=wake iwae:k=32 alws:... (default: WS; RWS K=2,8,32,128,512 "
        "wake, K=8 sleep/both; VAE and IWAE K=2..512 where latents are Gaussian; ALWS N=100,400,1600 with gaussian and matern32 kernels)",
    )
    d.add_argument("--repeats", type=positive_int, default=200, help="estimates per setting, R (default: 200)")
    d.add_argument("--batch", type=positive_int, default=16, help="datapoints in the reference batch (default: 16)")
    d.add_argument("--seed", type=int, default=0, help="seed of the reference model, its batch and the estimates")
    d.add_argument("--budget", type=positive_float, default=0.1, help="CPU seconds for the rel_rmse_budget column (default: 0.1)")
    d.add_argument("--out", default="runs/diagnostics", help="output directory (default: runs/diagnostics)")
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")

    c = add_command(
        sub,
        "compare",
        "train several estimators like for like and compare test log-likelihood",
        "Train every estimator of a TOML config on the same model, data, seeds and budget, evaluate the test "
        "log-likelihood (K importance samples, mean ± s.e. across seeds) and write summary.csv, summary.md, "
        "per_seed.csv and curves.png. An interrupted comparison resumes. Examples: experiments/compare_*.toml; "
        "your own model: docs/your-own-model.md.",
        epilog="the config file (TOML), its sections and keys:\n\n" + compare.config_format(),
    )
    c.add_argument("config", help="a comparison config (TOML)")
    c.add_argument("--out", default=None, help="output directory (default: the config's out_dir, else runs/compare/<name>)")
    c.add_argument("--only", nargs="+", default=None, metavar="LABEL", help="run only the estimators with these labels")
    c.add_argument(*DEVICE_OPTION[0], **DEVICE_OPTION[1])
    c.add_argument("--no-progress", action="store_true", help="hide progress bars")


def user_reference(spec: str, batch: int, seed: int, data_dim: int | None = None):
    """(model, x) for diagnosing a user's model: the factory's model in float64 (seeded with
    ``seed``) and a batch x [batch, D] drawn from it.

    Raises:
        wakesleep.models.loading.ModelSpecError: a factory that does not load.
        wakesleep.models.ModelContractError: a model without ``sample``.
    """
    torch.manual_seed(seed)
    model = build_user_model(spec, data_dim).double()
    check_model(model, ["sample"], "diagnose (its batch is drawn from the model)")
    x = model.sample(batch)[1]
    return model, x.double() if x.is_floating_point() else x


def cmd_diagnose(a: argparse.Namespace) -> int:
    out = Path(a.out)
    refs = a.reference if a.reference is not None else ([] if a.model else ["factor-analysis", "sbn"])
    jobs = [(name, lambda name=name: references.build_reference(name, batch=a.batch, seed=a.seed)) for name in refs]
    jobs += [
        (Path(spec.rpartition(":")[0]).stem + "-" + spec.rpartition(":")[2], lambda spec=spec: user_reference(spec, a.batch, a.seed, a.data_dim))
        for spec in a.model
    ]
    for name, build in jobs:
        model, x = build()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = diagnostics.diagnose(
                model, x, a.estimator, repeats=a.repeats, seed=a.seed, reference=name, budget_s=a.budget, progress=not a.no_progress
            )
        for w in caught:
            print(f"note: {w.message}")
        if not rows:
            print(f"{name}: no estimator applies to this model")
            continue
        csv_path = diagnostics.write_csv(rows, out / f"diagnostics-{name}.csv")
        print(f"\n{name} (batch {x.shape[0]}, R={a.repeats}; gradients relative to the exact ‖g‖; seconds per estimate)")
        try:
            chi2 = references.chi_square(model, x)
            print(
                f"χ²(p(z|x) ‖ q(z|x)) over the batch: median {chi2.median().item():.3g}, max {chi2.max().item():.3g} "
                "(self-normalised gradients reach their O(1/K) bias regime once K ≫ χ²)"
            )
        except (references.NoExactReference, TypeError):
            pass  # a user's model: no χ² unless its states can be listed
        print(diagnostics.format_table(rows))
        print(f"table: {csv_path}")
        for target in ("theta", "phi"):
            if any(r["target"].startswith(target) and r["rel_rmse"] is not None for r in rows):
                png = diagnostics.error_time_plot(
                    rows, out / f"diagnostics-{name}-{target}.png", target=target, title=f"{name}: {target} gradient, R={a.repeats}"
                )
                print(f"plot: {png}")
        with contextlib.suppress(ValueError):  # no setting with a particle count
            png = diagnostics.snr_plot(rows, out / f"diagnostics-{name}-phi-snr.png", title=f"{name}: SNR of the φ gradient, R={a.repeats}")
            print(f"plot: {png}")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    cfg = compare.load_config(a.config, only=a.only)
    records, summary, out = compare.run_compare(cfg, a.out, progress=not a.no_progress, device=resolve_device(a.device))
    print()
    print(markdown_table(summary))
    print(f"\ntables: {out / 'summary.csv'} {out / 'summary.md'} {out / 'per_seed.csv'}")
    if (out / "curves.png").is_file():
        print(f"plot: {out / 'curves.png'}")
    return 0


COMMANDS = {"diagnose": cmd_diagnose, "compare": cmd_compare}
