"""Figures of Le et al. (2019)'s Gaussian-mixture study from a finished ``wakesleep compare`` run of
``experiments/le2019_gmm.toml``.

    python experiments/le2019_gmm_plot.py                         # runs/compare/le2019-gmm -> docs/figures/
    python experiments/le2019_gmm_plot.py --run DIR --out DIR [--name NAME]

Writes two figures (``--name`` replaces ``le2019-gmm`` in their names; the labels must read ``"<ESTIMATOR> K=<k>"``, as in the config):

- ``le2019-gmm.png``: the last validation's π L2 error, q's mean L2 distance to the true posterior
  and the standard deviation of q's gradient against K, one line per estimator, mean ± s.e. over
  seeds (the paper's Figure: error against K);
- ``le2019-gmm-curves.png``: the same three metrics against training iterations, one line per
  estimator at the smallest and the largest K (dashed: the smallest), mean ± s.e. over seeds.

Prints the table of final values (``key: value`` lines are the mean and s.e.) that
``docs/results.md`` quotes.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from wakesleep.evaluate import mean_stderr
from wakesleep.io import atomic_save_figure
from wakesleep.plots import read_jsonl
from wakesleep.runs import METRICS

#: (record key, axis label): the three metrics of the study.
METRICS_SHOWN = (
    ("valid_pi_l2", "‖π − π_true‖₂"),
    ("valid_q_l2", "mean ‖q(·|x) − p_true(·|x)‖₂"),
    ("valid_q_grad_std", "std of q's gradient"),
)
LABEL = re.compile(r"^(?P<name>.+) K=(?P<k>\d+)$")


def read_runs(run: Path) -> dict[tuple[str, int], list[list[dict]]]:
    """(estimator, K) -> each seed's validation records, from the compare directory ``run``."""
    cfg = json.loads((run / "config.json").read_text())
    out: dict[tuple[str, int], list[list[dict]]] = {}
    for spec in cfg["estimators"]:
        m = LABEL.match(spec["label"])
        if m is None:
            raise ValueError(f"label {spec['label']!r}: expected '<ESTIMATOR> K=<k>'")
        seeds = [read_jsonl(p) for s in cfg["seeds"] if (p := run / spec["label"] / f"seed{s}" / METRICS).is_file()]
        seeds = [[r for r in recs if "valid_q_l2" in r] for recs in seeds]
        if any(seeds):
            out[(m["name"], int(m["k"]))] = [s for s in seeds if s]
    if not out:
        raise ValueError(f"{run}: no finished runs with the study's metrics")
    return out


def _tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def final(runs: list[list[dict]], key: str):
    """Mean and s.e. over seeds of ``key`` at the last validation every seed reached."""
    n = min(len(r) for r in runs)
    return mean_stderr(_tensor([r[n - 1][key] for r in runs]))


def table(data) -> list[dict]:
    """One row per (estimator, K): the final mean and s.e. of each metric, the iterations and seeds."""
    rows = []
    for (name, k), runs in sorted(data.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        n = min(len(r) for r in runs)
        row = {"estimator": name, "k": k, "seeds": len(runs), "iterations": runs[0][n - 1]["step"]}
        for key in ("valid_pi_l1", "valid_pi_l2", "valid_q_l2", "valid_q_tv", "valid_q_grad_std"):
            v = final(runs, key)
            row[key], row[f"{key}_se"] = v.mean, v.stderr
        rows.append(row)
    return rows


def plot_against_k(data, path: Path) -> Path:
    names = list(dict.fromkeys(name for name, _ in data))
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    for i, (key, ylabel) in enumerate(METRICS_SHOWN):
        ax = fig.add_subplot(1, 3, i + 1)
        for name in names:
            ks = sorted(k for n, k in data if n == name)
            vals = [final(data[(name, k)], key) for k in ks]
            ax.errorbar(ks, [v.mean for v in vals], yerr=[v.stderr for v in vals], marker="o", capsize=3, label=name)
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())  # only the K's run, not log-scale minor ticks
        ax.set_xticks(sorted({k for _, k in data}), labels=[str(k) for k in sorted({k for _, k in data})])
        ax.set_yscale("log")
        ax.set_xlabel("K (particles)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    n = max(min(len(r) for r in runs) for runs in data.values())
    seeds = max(len(runs) for runs in data.values())
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(f"Le et al. 2019's mixture: after {next(iter(data.values()))[0][n - 1]['step']} iterations, mean ± s.e. over {seeds} seeds")
    return atomic_save_figure(fig, path)


def plot_curves(data, path: Path) -> Path:
    names = list(dict.fromkeys(name for name, _ in data))
    ks = sorted({k for _, k in data})
    shown = sorted({ks[0], ks[-1]})
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    colours = {name: f"C{i}" for i, name in enumerate(names)}
    for i, (key, ylabel) in enumerate(METRICS_SHOWN):
        ax = fig.add_subplot(1, 3, i + 1)
        for name in names:
            for k in shown:
                if (name, k) not in data:
                    continue
                runs = data[(name, k)]
                n = min(len(r) for r in runs)
                steps = [runs[0][j]["step"] for j in range(n)]
                vals = [mean_stderr(_tensor([r[j][key] for r in runs])) for j in range(n)]
                mean, se = np.array([v.mean for v in vals]), np.array([v.stderr for v in vals])
                style = "--" if k == shown[0] and len(shown) > 1 else "-"
                ax.plot(steps, mean, style, color=colours[name], label=f"{name} K={k}")
                ax.fill_between(steps, mean - se, mean + se, color=colours[name], alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("iterations")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"against iterations (dashed K={shown[0]}, solid K={shown[-1]}; bands ± s.e. over seeds)")
    return atomic_save_figure(fig, path)


def main(argv=None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/compare/le2019-gmm", help="the compare output directory (default: runs/compare/le2019-gmm)")
    p.add_argument("--out", default="docs/figures", help="where the figures go (default: docs/figures)")
    p.add_argument("--name", default="le2019-gmm", help="the figures' file names: NAME.png and NAME-curves.png (default: le2019-gmm)")
    a = p.parse_args(argv)
    data = read_runs(Path(a.run))
    out = Path(a.out)
    paths = [plot_against_k(data, out / f"{a.name}.png"), plot_curves(data, out / f"{a.name}-curves.png")]
    print("| estimator | K | seeds | iterations | π L1 error | π L2 error | q L2 to true posterior | q TV to model posterior | q grad std |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in table(data):
        cells = " | ".join(f"{r[k]:.4f} ± {r[k + '_se']:.4f}" for k in ("valid_pi_l1", "valid_pi_l2", "valid_q_l2", "valid_q_tv", "valid_q_grad_std"))
        print(f"| {r['estimator']} | {r['k']} | {r['seeds']} | {r['iterations']} | {cells} |")
    for path in paths:
        print(f"figure: {path}")
    return paths


if __name__ == "__main__":
    main()
