"""Le, Kosiorek, Siddharth, Teh & Wood (2019), *Revisiting reweighted wake-sleep for models with
stochastic control flow*: the PCFG study (their ``pcfg/`` code), ours and theirs on the same
settings at a CPU budget.

    python experiments/le2019_pcfg.py --rrws /tmp/rrws              # both sides, then the table and figure
    python experiments/le2019_pcfg.py                               # ours only (no checkout of theirs)
    python experiments/le2019_pcfg.py --report-only                 # table and figure from the runs on disk

Settings (theirs in brackets, from their ``run.py`` and sweep scripts): the astronomers grammar;
batch 2 [2]; K in {5, 20} [2, 5, 10, 20, 50, 100]; seeds 1, 2 [1..10 or 15]; ``--iterations``
50 [2000] of Adam at 1e-3 for θ and φ [the same]; metrics every 10 iterations [10].  The budget:
about 45 CPU-minutes for the whole study on one core (theirs and ours, 36 runs; a K = 20 iteration
costs about 1–2 CPU-seconds on either side), so the runs are 40× shorter than theirs: they show the
first 2.5 % of their curves.  A run on disk that is longer than ``--iterations`` is cut when read.
Each iteration sees fresh sentences from the true grammar: theirs draws 2 each iteration; ours
draws a training set of iterations × 2 sentences (seed 10000 + seed) up front and uses each once,
in order (the same thing: no sentence is seen twice).

Estimators (their train modes; ours in brackets):

- ``ws``: wake-θ with K particles, sleep-φ on batch·K sleep samples
  [``RWS(k, q_update="sleep", sleep_batch=2K)``; theirs draws the sleep samples after the θ step,
  ours in the same step, before it];
- ``ww``: RWS, wake-θ and wake-φ [``RWS(k, q_update="wake")``];
- ``vimco`` [``VIMCO(k)``].  Their VIMCO signal is log(1/K Σ w) − log(Σ_{j≠k} w_j + ŵ_−k): the
  baseline misses the 1/K, which adds −log K·Σ_k ∇φ log q_k (zero mean, more variance); ours
  subtracts log(1/K (Σ_{j≠k} w_j + ŵ_−k)), Mnih & Rezende's;
- ``reinforce``: theirs is the score function of the K-sample bound, ∇ log(1/K Σ w) with
  log(1/K Σ w)·Σ_k ∇φ log q_k; ours [``Reinforce(k)``] is the ELBO's score function averaged over
  K samples (no baseline): different estimators of different objectives, reported side by side;
- ``mws`` (ours only): memoised wake-sleep [``MemoisedWakeSleep(k, memory_size=10)``, q from the
  memory and from sleep samples].  With every sentence seen once its memory never outlives a step:
  it is RWS with the weights p(x, z) over the step's distinct proposals instead of p/q.

Metrics (theirs, ``util.py``): ``p_error``, the mean over non-terminals of KL(p_true ‖ p_θ) of the
production probabilities; ``q_error_to_true`` / ``q_error_to_model``, −(1/100) Σ log q(tree | x)
over 100 pairs from the true / the learned grammar.  Our runs start from the same θ and φ as
theirs for a seed (``examples/pcfg.py`` builds the modules in their order).

Writes ``OUT/{ours,rrws}/ALG-kK-seedS.json`` (one run each, skipped when present: a run
interrupted is rerun), ``OUT/summary.json``, ``OUT/summary.md`` (the table) and the figure
(``--figure``).  One torch thread; the CPU seconds of every run are in its JSON and the total is
printed.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
import pcfg  # noqa: E402

import wakesleep as ws  # noqa: E402
from wakesleep.io import atomic_save_figure, atomic_write_text  # noqa: E402
from wakesleep.training import TrainConfig, build_optimizer, train_step  # noqa: E402

OURS = ("ws", "ww", "vimco", "reinforce", "mws")
THEIRS = ("ws", "ww", "vimco", "reinforce")
LABELS = {"ws": "WS", "ww": "RWS (wake-wake)", "vimco": "VIMCO", "reinforce": "REINFORCE", "mws": "MWS"}
METRICS = (
    ("p_error", "p error: mean KL(p_true ‖ p_θ)"),
    ("q_error_to_true", "q error on true trees"),
    ("q_error_to_model", "q error on the model's trees"),
)
BATCH = 2


def estimator(name: str, k: int):
    """Our estimator for one of their train modes (see the module docstring)."""
    return {
        "ws": lambda: ws.RWS(k=k, q_update="sleep", sleep_batch=BATCH * k),
        "ww": lambda: ws.RWS(k=k, q_update="wake"),
        "vimco": lambda: ws.estimators.VIMCO(k=k),
        "reinforce": lambda: ws.estimators.Reinforce(k=k),
        "mws": lambda: ws.estimators.MemoisedWakeSleep(k=k, memory_size=10),
    }[name]()


def run_ours(algorithm: str, k: int, seed: int, iterations: int, eval_interval: int = 10, max_choices: int = 1024) -> dict:
    """One run of ours: the record has the same keys as ``experiments/rrws_pcfg.py``'s."""
    torch.manual_seed(seed)  # their util.set_seed: torch and numpy
    np.random.seed(seed)
    model = pcfg.astronomers(max_choices=max_choices)
    data = pcfg.sample_data(pcfg.ASTRONOMERS, iterations * BATCH, seed=10_000 + seed)
    est = estimator(algorithm, k)
    opt = build_optimizer(model, est, TrainConfig(lr_p=1e-3, lr_q=1e-3))
    est.prepare(model, data)
    records = [{"iteration": 0, **model.metrics()}]
    objective, step_seconds = [], []
    for i in range(iterations):
        rows = torch.arange(i * BATCH, (i + 1) * BATCH)
        t0 = time.perf_counter()
        out, bad = train_step(model, est, opt, data[rows], index=rows if est.needs_index else None)
        step_seconds.append(time.perf_counter() - t0)
        if bad is not None:
            raise RuntimeError(f"{algorithm} K={k} seed {seed}: non-finite {bad} at iteration {i + 1}")
        objective.append(float(out.metrics["objective"]))
        if (i + 1) % eval_interval == 0 or i + 1 == iterations:
            records.append({"iteration": i + 1, **model.metrics()})
    return {
        "source": "ours",
        "grammar": "astronomers",
        "algorithm": algorithm,
        "k": k,
        "seed": seed,
        "iterations": iterations,
        "batch_size": BATCH,
        "eval_interval": eval_interval,
        "records": records,
        "objective": objective,
        "seconds_per_iteration": sum(step_seconds) / len(step_seconds),
        "threads": torch.get_num_threads(),
    }


def _done(path: Path, iterations: int) -> bool:
    """A finished run of at least ``iterations`` iterations is on disk (a longer one is cut when read)."""
    return path.exists() and json.loads(path.read_text())["iterations"] >= iterations


def _write(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(rec))


def run_all(a) -> float:
    """Every missing run, ours in this process and theirs through ``rrws_pcfg.py`` (a subprocess:
    their modules named models/losses/train/util stay out of this one).  Returns CPU seconds spent."""
    spent = 0.0
    out = Path(a.out)
    for seed in a.seeds:
        for k in a.ks:
            for alg in OURS:
                path = out / "ours" / f"{alg}-k{k}-seed{seed}.json"
                if _done(path, a.iterations):
                    continue
                t0 = time.process_time()
                rec = run_ours(alg, k, seed, a.iterations, a.eval_interval)
                rec["cpu_seconds"] = time.process_time() - t0
                spent += rec["cpu_seconds"]
                _write(path, rec)
                print(f"ours {alg} K={k} seed {seed}: p_error {rec['records'][-1]['p_error']:.4f}, {rec['cpu_seconds']:.0f} CPU s", flush=True)
            if not a.rrws:
                continue
            for alg in THEIRS:
                path = out / "rrws" / f"{alg}-k{k}-seed{seed}.json"
                if _done(path, a.iterations):
                    continue
                cmd = [sys.executable, str(ROOT / "experiments" / "rrws_pcfg.py"), "--rrws", a.rrws, "--algorithm", alg, "--k", str(k)]
                cmd += ["--seed", str(seed), "--iterations", str(a.iterations), "--eval-interval", str(a.eval_interval), "--out", str(path)]
                cmd += ["--deps", a.deps] if a.deps else []
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                spent += json.loads(path.read_text())["cpu_seconds"]
                print(f"theirs {alg} K={k} seed {seed} done", flush=True)
    return spent


def load(out: Path, iterations: int, ks, seeds) -> dict:
    """(source, algorithm, K) -> the runs' records, one list per seed, each cut at ``iterations``
    (training is causal: the first n iterations of a longer run are a run of n)."""
    runs: dict = {}
    for path in sorted(out.glob("*/*-k*-seed*.json")):
        rec = json.loads(path.read_text())
        if rec["k"] not in ks or rec["seed"] not in seeds or rec["iterations"] < iterations:
            continue
        rec["records"] = [r for r in rec["records"] if r["iteration"] <= iterations]
        runs.setdefault((rec["source"], rec["algorithm"], rec["k"]), []).append(rec)
    return runs


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def summarise(runs: dict, last: int = 3) -> list[dict]:
    """One row per (source, algorithm, K): each metric as the mean over seeds of the mean of its
    last ``last`` evaluations (the q errors are 100-sample estimates), with its s.e. over seeds."""
    rows = []
    order = {"rrws": 0, "ours": 1}
    for (source, alg, k), recs in sorted(runs.items(), key=lambda kv: (order[kv[0][0]], OURS.index(kv[0][1]), kv[0][2])):
        n = min(len(r["records"]) for r in recs)
        row = {"source": source, "algorithm": alg, "k": k, "seeds": len(recs), "iterations": recs[0]["records"][n - 1]["iteration"]}
        for key, _ in METRICS:
            row[key], row[key + "_se"] = mean_se([np.mean([e[key] for e in r["records"][n - last : n]]) for r in recs])
            row[key + "_start"] = mean_se([r["records"][0][key] for r in recs])[0]
        row["seconds_per_iteration"] = mean_se([r["seconds_per_iteration"] for r in recs])[0]
        row["cpu_seconds"] = sum(r.get("cpu_seconds", 0.0) for r in recs)
        rows.append(row)
    return rows


def _final(rec: dict, key: str, n: int, last: int = 3) -> float:
    return float(np.mean([e[key] for e in rec["records"][n - last : n]]))


def claims(runs: dict, last: int = 3) -> list[dict]:
    """The paper's two claims, per code and metric, as paired differences: for each seed (the same
    initial parameters for every estimator, and for ours the same sentences) the worse-expected
    setting's metric minus the better-expected one's (each the mean of its last ``last``
    evaluations), then their mean and s.e. over seeds.  Held when the mean is above twice its s.e.;
    contradicted when below minus twice its s.e.; else open (and open with one seed)."""
    out = []

    def verdict(better, worse, key):
        seeds = sorted({r["seed"] for r in better} & {r["seed"] for r in worse})
        n = min(len(r["records"]) for r in better + worse)
        d = [
            _final(next(r for r in worse if r["seed"] == s), key, n, last) - _final(next(r for r in better if r["seed"] == s), key, n, last)
            for s in seeds
        ]
        m, se = mean_se(d)
        v = "open (one seed)" if len(d) < 2 else "held" if m > 2 * se else "contradicted" if m < -2 * se else "open"
        return {"verdict": v, "difference": m, "se": se, "per_seed": d}

    for source in ("rrws", "ours"):
        ks = sorted({k for s, _, k in runs if s == source})
        for key, _ in METRICS:
            for k in ks:
                for other in ("vimco", "reinforce"):
                    if (source, "ww", k) in runs and (source, other, k) in runs:
                        v = verdict(runs[(source, "ww", k)], runs[(source, other, k)], key)
                        out.append({"claim": f"RWS better than {other}", "source": source, "k": k, "metric": key, **v})
            if len(ks) > 1 and (source, "ww", ks[0]) in runs and (source, "ww", ks[-1]) in runs:
                v = verdict(runs[(source, "ww", ks[-1])], runs[(source, "ww", ks[0])], key)
                out.append({"claim": f"RWS improves from K={ks[0]} to K={ks[-1]}", "source": source, "k": ks[-1], "metric": key, **v})
    return out


def markdown(rows: list[dict]) -> str:
    head = "| code | estimator | K | seeds | iterations | p error (start → end) | q error, true trees | q error, model's trees | s / iteration |\n"
    head += "|---|---|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        cells = [f"{r['p_error_start']:.4f} → {r['p_error']:.4f} ± {r['p_error_se']:.4f}"]
        cells += [f"{r[key + '_start']:.2f} → {r[key]:.2f} ± {r[key + '_se']:.2f}" for key in ("q_error_to_true", "q_error_to_model")]
        src = "theirs" if r["source"] == "rrws" else "ours"
        lines.append(
            f"| {src} | {LABELS[r['algorithm']]} | {r['k']} | {r['seeds']} | {r['iterations']} | {' | '.join(cells)} | {r['seconds_per_iteration']:.2f} |"
        )
    return head + "\n".join(lines) + "\n"


def figure(runs: dict, path: Path) -> Path:
    """Their metrics against iterations: a row per code (theirs, ours), a column per metric (the p
    error as its change from the start); a colour per estimator, dashed the smaller K; mean over
    seeds, bands ± s.e."""
    sources = [s for s in ("rrws", "ours") if any(key[0] == s for key in runs)]
    ks = sorted({k for _, _, k in runs})
    fig = Figure(figsize=(14, 4 * len(sources)), layout="constrained")
    for row, source in enumerate(sources):
        for col, (key, label) in enumerate(METRICS):
            ax = fig.add_subplot(len(sources), 3, row * 3 + col + 1)
            for i, alg in enumerate(OURS):
                for k in ks:
                    recs = runs.get((source, alg, k))
                    if not recs:
                        continue
                    n = min(len(r["records"]) for r in recs)
                    its = [recs[0]["records"][j]["iteration"] for j in range(n)]
                    vals = np.array([[r["records"][j][key] for j in range(n)] for r in recs])
                    if key == "p_error":  # the seeds start far apart (0.036 and 0.12): their change is what compares
                        vals = vals - vals[:, :1]
                    mean = vals.mean(0)
                    se = vals.std(0, ddof=1) / math.sqrt(len(recs)) if len(recs) > 1 else np.zeros(n)
                    ax.plot(its, mean, "--" if k == ks[0] and len(ks) > 1 else "-", color=f"C{i}", label=f"{LABELS[alg]} K={k}")
                    ax.fill_between(its, mean - se, mean + se, color=f"C{i}", alpha=0.15)
            shown = label + (", minus its start" if key == "p_error" else "")
            ax.set_title(f"{'theirs (rrws code)' if source == 'rrws' else 'ours (examples/pcfg.py)'}: {shown}", fontsize=9)
            ax.set_xlabel("iterations")
            ax.grid(alpha=0.3)
        fig.axes[row * 3].legend(fontsize=7, ncol=2)
    seeds = max(len(r) for r in runs.values())
    fig.suptitle(f"Le et al. 2019's astronomers PCFG, batch 2: mean over {seeds} seeds, bands ± s.e. (dashed K={ks[0]}, solid K={ks[-1]})")
    return atomic_save_figure(fig, path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rrws", default=None, help="a checkout of tuananhle7/rrws: also run theirs (experiments/rrws_pcfg.py)")
    p.add_argument("--deps", default=None, help="rrws_pcfg.py's --deps (a folder with python-Levenshtein)")
    p.add_argument("--out", default="runs/le2019-pcfg")
    p.add_argument("--figure", default="docs/figures/le2019-pcfg.png")
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--eval-interval", type=int, default=10)
    p.add_argument("--ks", type=int, nargs="+", default=[5, 20])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--report-only", action="store_true", help="no runs: the table and figure from the runs on disk")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    spent = 0.0 if a.report_only else run_all(a)
    runs = load(out, a.iterations, a.ks, a.seeds)
    if not runs:
        raise SystemExit(f"{out}: no runs")
    rows = summarise(runs)
    verdicts = claims(runs)
    table = markdown(rows)
    atomic_write_text(out / "summary.md", table)
    atomic_write_text(out / "summary.json", json.dumps({"rows": rows, "claims": verdicts}, indent=1))
    fig = figure(runs, Path(a.figure))
    print(table)
    for c in verdicts:
        print(f"{c['source']}: {c['claim']} (K={c['k']}, {c['metric']}): {c['verdict']} (paired difference {c['difference']:+.4f} ± {c['se']:.4f})")
    total = sum(r["cpu_seconds"] for r in rows)
    print(f"cpu_seconds_this_call: {spent:.0f}")
    print(f"cpu_seconds_all_runs: {total:.0f}")
    print(f"figure: {fig}")
    return {"rows": rows, "claims": verdicts}


if __name__ == "__main__":
    main()
