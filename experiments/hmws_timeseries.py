"""Le, Collins, Hewitt, Ellis, Siddharth, Gershman & Tenenbaum (ICLR 2022), *Hybrid memoised
wake-sleep*: the structured time-series study (their ``cmws/examples/timeseries``) at a CPU budget,
HMWS against RWS and MWS, ours (``examples/kernel_grammar.py``) and theirs on the same settings.

    python experiments/hmws_timeseries.py --hmws /tmp/hmws      # both sides, then the table and figure
    python experiments/hmws_timeseries.py                       # ours only, on our copy of their data generator
    python experiments/hmws_timeseries.py --report-only         # table and figure from the runs on disk
    python experiments/hmws_timeseries.py --hmws /tmp/hmws --check   # their state dict in our model: do the densities agree?

Settings (their sweep ``sweep.py`` 2021_06_22 and ``run.py``; theirs in brackets where ours differ):
200 synthetic series of 128 points from their generator (``param_range`` 0.02), batch 5, Adam at
10⁻³ for θ and φ, insomnia 0.5 (``q_update="both"``: half wake-φ, half sleep-φ on K·B sleep
samples), 100 sleep-pretraining iterations of batch 50 after the prior's pretraining (2000 PCFG
batches of 10); ``--seeds`` (default 1 2; the docs' study ran 1–4) [0–4]; iterations: HMWS and MWS ``--iterations`` 300, RWS
``--rws-iterations`` 90 [10 000 each, on a GPU]: about the same CPU-seconds of their code for both
of their algorithms (an RWS step costs ~2.4–2.7 HMWS steps there), 3 % of their HMWS run.  Budget:
about 15 CPU-minutes a seed, both codes, on one core (``--variants`` add 3 minutes each a seed).  With ``--hmws`` both sides train on their
generator's series (``hmws_theirs.py data``); without it, on :func:`kernel_grammar.synthetic_data`.

Estimators (their ``--algorithm`` and losses; ours in brackets):

- HMWS: ``cmws_5`` (``get_cmws_5_loss``), R = 5 discrete proposals, M = 5 held, K = 5 continuous
  particles each [``HybridMemoisedWakeSleep(k=5, continuous_k=5, memory_size=5, sleep_batch=25)``;
  the departures of its docstring: ω_i as a sum not a log-sum-exp of the normalised weights, a
  memory that starts empty instead of M prior draws];
- RWS: ``rws`` (``get_rws_loss``), K = 50 joint particles z = (d, c) ~ q(d | x) q(c | d, x), the
  continuous part sampled and weighted like the discrete one (no marginalisation)
  [``RWS(k=50, sleep_batch=250)``];
- ``--variants``: our HMWS with the authors' weights for q(d | x)'s wake update (``hmws-lse``,
  ``memory_weighting="authors"``) or uniform ones (``hmws-uniform``, ``memory_weighting="uniform"``);
- MWS (ours only: their code has no plain MWS for this model, and the paper's baselines are RWS,
  VIMCO and REINFORCE): memoised wake-sleep with the joint z = (d, c) in its memory, R = 45
  proposals from q(d, c | x), M = 5 held, each scored by p(d, c, x) at its one c: the continuous
  part handled as RWS handles it, a point drawn from q(c | d, x), not marginalised
  [``MemoisedWakeSleep(k=45, memory_size=5, sleep_batch=25)``: 50 evaluations of p a step, as HMWS's].

Metric: log p(x) by importance sampling with the proposal, K = ``--eval-k`` (100, their
``--test-num-particles``) on the first ``--eval-n`` (25) series of the training set (their test set
is their training set; theirs evaluates all 200), at 5 points of each run; theirs through their
``losses.get_log_p_and_kl``, ours through ``wakesleep.log_likelihood``: the same estimator.  Against
CPU seconds of training (one thread, evaluation and the two pretrainings excluded and reported).
Their log p includes their length penalty (−10 per token): ours too.

Writes ``OUT/{ours,theirs}/ALG-seedS.json`` (skipped when present), ``OUT/summary.json``,
``OUT/summary.md`` and the figure.
"""

from __future__ import annotations

import argparse
import importlib
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
import kernel_grammar  # noqa: E402

import wakesleep as ws  # noqa: E402
from wakesleep.estimators.ws import sleep_phase_loss  # noqa: E402
from wakesleep.io import atomic_save_figure, atomic_write_text  # noqa: E402
from wakesleep.training import TrainConfig, build_optimizer, train_step  # noqa: E402

OURS = ("hmws", "rws", "mws")
THEIRS = ("hmws", "rws")
#: ``--variants``: our HMWS with q(d | x)'s wake weights as the authors' code has them, or uniform (``memory_weighting``).
VARIANTS = ("hmws-lse", "hmws-uniform")
LABELS = {"hmws": "HMWS", "rws": "RWS", "mws": "MWS", "hmws-lse": "HMWS, their ω", "hmws-uniform": "HMWS, uniform ω"}
BATCH = 5


def _hmws(memory_weighting: str = "posterior") -> ws.HybridMemoisedWakeSleep:
    return ws.HybridMemoisedWakeSleep(k=5, continuous_k=5, memory_size=5, q_update="both", sleep_batch=5 * BATCH, memory_weighting=memory_weighting)


def estimator(name: str):
    """Our estimator for each of the study's algorithms (see the module docstring)."""
    return {
        "hmws": _hmws,
        "rws": lambda: ws.RWS(k=50, q_update="both", sleep_batch=50 * BATCH),
        "mws": lambda: ws.estimators.MemoisedWakeSleep(k=45, memory_size=5, q_update="both", sleep_batch=5 * BATCH),
        "hmws-lse": lambda: _hmws("authors"),
        "hmws-uniform": lambda: _hmws("uniform"),
    }[name]()


def evaluate(model, x: torch.Tensor, k: int) -> float:
    """Mean importance-sampled log p(x) over x [N, 128], K particles from the proposal, nats."""
    with torch.no_grad():
        return ws.log_likelihood(model, x, k=k, batch_size=BATCH, progress=False, check=False).mean


def run_ours(
    algorithm: str,
    seed: int,
    x: torch.Tensor,
    iterations: int,
    evals: int = 4,
    eval_n: int = 25,
    eval_k: int = 100,
    prior_iterations: int = 2000,
    sleep_iterations: int = 100,
    repeats: int = 1,
) -> dict:
    """One run of ours, in their order: seed, build and pretrain the prior, sleep-pretrain φ
    (``sleep_iterations`` × 50 samples), then ``iterations`` steps over shuffled batches of 5
    (every series once per epoch), log p(x) on x[:eval_n] at ``evals`` + 1 points."""
    torch.manual_seed(seed)  # their util.set_seed: torch, numpy, random
    np.random.seed(seed)
    t0 = time.process_time()
    model = kernel_grammar.grammar(seed=None, pretrain_iterations=prior_iterations)
    init_seconds = time.process_time() - t0
    est = estimator(algorithm)
    opt = build_optimizer(model, est, TrainConfig(lr_p=1e-3, lr_q=1e-3))
    t0 = time.process_time()
    for _ in range(sleep_iterations):  # their train.train's sleep pretraining: one optimiser over everything, φ alone moves
        opt.zero_grad()
        sleep_phase_loss(model, 50).backward()
        opt.step()
    sleep_seconds = time.process_time() - t0
    est.prepare(model, x)
    marks = sorted({round(iterations * i / evals) for i in range(evals + 1)})
    order = torch.cat([torch.randperm(len(x)) for _ in range(iterations * BATCH // len(x) + 1)])
    records, objective, train_seconds, done = [], [], 0.0, 0
    for mark in marks:
        t0 = time.process_time()
        for i in range(done, mark):
            rows = order[i * BATCH : (i + 1) * BATCH]
            out, bad = train_step(model, est, opt, x[rows], index=rows if est.needs_index else None)
            if bad is not None:
                raise RuntimeError(f"ours {algorithm} seed {seed}: non-finite {bad} at iteration {i + 1}")
            objective.append(float(out.metrics["objective"]) if "objective" in out.metrics else math.nan)
        train_seconds += time.process_time() - t0
        done = mark
        t0 = time.process_time()
        each = [evaluate(model, x[:eval_n], eval_k) for _ in range(repeats)]
        log_p = sum(each) / repeats
        records.append(
            {"iteration": mark, "train_cpu_seconds": train_seconds, "log_p": log_p, "log_p_each": each, "eval_cpu_seconds": time.process_time() - t0}
        )
        print(f"ours {algorithm} seed {seed}: iteration {mark}, log p {log_p:.1f}, {train_seconds:.0f} CPU s", flush=True)
    return {
        "source": "ours",
        "algorithm": algorithm,
        "seed": seed,
        "iterations": iterations,
        "batch_size": BATCH,
        "estimator": est.settings(),
        "eval_n": eval_n,
        "eval_k": eval_k,
        "records": records,
        "objective": objective,
        "init_cpu_seconds": init_seconds,
        "sleep_pretraining_cpu_seconds": sleep_seconds,
        "threads": torch.get_num_threads(),
    }


def _done(path: Path, iterations: int) -> bool:
    return path.exists() and json.loads(path.read_text())["iterations"] == iterations


def _write(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(rec))


def iterations_of(a, algorithm: str) -> int:
    return a.rws_iterations if algorithm == "rws" else a.iterations


def data_file(a, out: Path) -> Path:
    """The series of the study: their generator's with ``--hmws``, else ours (written once)."""
    path = out / ("data-theirs.npz" if a.hmws else "data-ours.npz")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        if a.hmws:
            subprocess.run(
                [sys.executable, str(ROOT / "experiments" / "hmws_theirs.py"), "data", "--hmws", a.hmws, "--out", str(path)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        else:
            kernel_grammar.main(["--write-data", str(path)])
    return path


def noise(a) -> dict:
    """The metric's own spread: seed 1's starting model (after both pretrainings, the same for every
    algorithm of a code) evaluated ``a.noise`` times, each with fresh particles; ours, and theirs
    with ``--hmws``.  Writes ``OUT/noise.json``; returns {code: the evaluations}."""
    out = Path(a.out)
    data = data_file(a, out)
    x = torch.from_numpy(np.load(data)["train"]).to(torch.get_default_dtype())
    result = {"ours": run_ours("rws", 1, x, 0, 1, a.eval_n, a.eval_k, repeats=a.noise)["records"][0]["log_p_each"]}
    if a.hmws:
        path = out / "noise-theirs.json"
        cmd = [
            sys.executable,
            str(ROOT / "experiments" / "hmws_theirs.py"),
            "run",
            "--hmws",
            a.hmws,
            "--data",
            str(data.resolve()),
            "--algorithm",
            "rws",
        ]
        cmd += [
            "--seed",
            "1",
            "--iterations",
            "0",
            "--evals",
            "1",
            "--eval-n",
            str(a.eval_n),
            "--eval-k",
            str(a.eval_k),
            "--repeats",
            str(a.noise),
            "--out",
            str(path.resolve()),
        ]
        subprocess.run(cmd, check=True, capture_output=True)
        result["theirs"] = json.loads(path.read_text())["records"][0]["log_p_each"]
    atomic_write_text(out / "noise.json", json.dumps(result, indent=1))
    for code, values in result.items():
        print(f"{code}: seed 1's start evaluated {len(values)} times: mean {np.mean(values):.1f}, s.d. {np.std(values, ddof=1):.1f} nats")
    return result


def run_all(a) -> float:
    """Every missing run, ours in this process and theirs through ``hmws_theirs.py`` (a subprocess:
    their modules stay out of this one).  Returns the CPU seconds spent (runs only)."""
    out = Path(a.out)
    data = data_file(a, out)
    x = torch.from_numpy(np.load(data)["train"]).to(torch.get_default_dtype())
    spent = 0.0
    for seed in a.seeds:
        for alg in OURS + tuple(a.variants):
            path = out / "ours" / f"{alg}-seed{seed}.json"
            if _done(path, iterations_of(a, alg)):
                continue
            t0 = time.process_time()
            rec = run_ours(alg, seed, x, iterations_of(a, alg), a.evals, a.eval_n, a.eval_k)
            rec["cpu_seconds"] = time.process_time() - t0
            rec["data"] = data.name
            spent += rec["cpu_seconds"]
            _write(path, rec)
        if not a.hmws:
            continue
        for alg in THEIRS:
            path = out / "theirs" / f"{alg}-seed{seed}.json"
            if _done(path, iterations_of(a, alg)):
                continue
            cmd = [sys.executable, str(ROOT / "experiments" / "hmws_theirs.py"), "run", "--hmws", a.hmws, "--data", str(data.resolve())]
            cmd += ["--algorithm", alg, "--seed", str(seed), "--iterations", str(iterations_of(a, alg)), "--evals", str(a.evals)]
            cmd += ["--eval-n", str(a.eval_n), "--eval-k", str(a.eval_k), "--out", str(path.resolve())]
            t0 = time.time()
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"theirs {alg} seed {seed} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
            rec = json.loads(path.read_text())
            rec["wall_seconds"] = time.time() - t0
            rec["cpu_seconds"] = (
                rec["init_cpu_seconds"]
                + rec["sleep_pretraining_cpu_seconds"]
                + rec["records"][-1]["train_cpu_seconds"]
                + sum(e["eval_cpu_seconds"] for e in rec["records"])
            )
            rec["data"] = data.name
            _write(path, rec)
            spent += rec["cpu_seconds"]
            print(f"theirs {alg} seed {seed}: log p {rec['records'][-1]['log_p']:.1f}, {rec['cpu_seconds']:.0f} CPU s", flush=True)
    return spent


def load(out: Path, seeds) -> dict:
    """(source, algorithm) -> the runs' records, one per seed."""
    runs: dict = {}
    for path in sorted(out.glob("*/*-seed*.json")):
        rec = json.loads(path.read_text())
        if rec["seed"] in seeds:
            runs.setdefault((rec["source"], rec["algorithm"]), []).append(rec)
    return runs


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0)


def at_seconds(rec: dict, seconds: float) -> float:
    """log p(x) of a run after ``seconds`` CPU-seconds of training, linear between its evaluations."""
    t = [e["train_cpu_seconds"] for e in rec["records"]]
    return float(np.interp(seconds, t, [e["log_p"] for e in rec["records"]]))


def summarise(runs: dict) -> list[dict]:
    """One row per (source, algorithm): log p(x) at the start and the end (mean and s.e. over
    seeds), iterations, training CPU-seconds, seconds an iteration, and the pretrainings' CPU."""
    rows = []
    for source in ("theirs", "ours"):
        for alg in OURS + VARIANTS:
            recs = runs.get((source, alg))
            if not recs:
                continue
            end = [r["records"][-1] for r in recs]
            row = {"source": source, "algorithm": alg, "seeds": len(recs), "iterations": recs[0]["iterations"]}
            row["log_p_start"], row["log_p_start_se"] = mean_se([r["records"][0]["log_p"] for r in recs])
            row["log_p"], row["log_p_se"] = mean_se([e["log_p"] for e in end])
            row["train_cpu_seconds"] = mean_se([e["train_cpu_seconds"] for e in end])[0]
            row["seconds_per_iteration"] = row["train_cpu_seconds"] / max(row["iterations"], 1)
            row["pretraining_cpu_seconds"] = mean_se([r["init_cpu_seconds"] + r["sleep_pretraining_cpu_seconds"] for r in recs])[0]
            row["cpu_seconds"] = sum(r.get("cpu_seconds", 0.0) for r in recs)
            rows.append(row)
    return rows


def claims(runs: dict) -> list[dict]:
    """The claim "HMWS learns a better model per unit of compute", per code and baseline: per seed, log p(x)
    of HMWS minus the baseline's at the same training CPU-seconds (the shorter run's end; the
    same data and, within a code, the same initial parameters), then the mean and s.e. over
    seeds.  Held when the mean is above twice its s.e.; contradicted when below minus twice; else
    open (and open with one seed)."""
    out = []
    pairs = [(source, alg, base) for source in ("theirs", "ours") for alg in ("hmws", *VARIANTS) for base in ("rws", "mws")]
    for source, alg, base in pairs:
        h, b = runs.get((source, alg)), runs.get((source, base))
        if not h or not b:
            continue
        seeds = sorted({r["seed"] for r in h} & {r["seed"] for r in b})
        d, at = [], []
        for seed in seeds:
            rh, rb = next(r for r in h if r["seed"] == seed), next(r for r in b if r["seed"] == seed)
            t = min(rh["records"][-1]["train_cpu_seconds"], rb["records"][-1]["train_cpu_seconds"])
            d.append(at_seconds(rh, t) - at_seconds(rb, t))
            at.append(t)
        m, se = mean_se(d)
        v = "open (one seed)" if len(d) < 2 else "held" if m > 2 * se else "contradicted" if m < -2 * se else "open"
        out.append(
            {
                "claim": f"{LABELS[alg]} better than {LABELS[base]} per CPU-second",
                "source": source,
                "verdict": v,
                "difference": m,
                "se": se,
                "per_seed": d,
                "at_seconds": at,
            }
        )
    return out


def markdown(rows: list[dict]) -> str:
    head = "| code | algorithm | seeds | iterations | log p(x), start → end (nats) | training CPU s | CPU s / iteration | pretraining CPU s |\n"
    head += "|---|---|---|---|---|---|---|---|\n"
    lines = [
        f"| {r['source']} | {LABELS[r['algorithm']]} | {r['seeds']} | {r['iterations']} | {r['log_p_start']:.1f} → {r['log_p']:.1f} ± {r['log_p_se']:.1f} "
        f"| {r['train_cpu_seconds']:.0f} | {r['seconds_per_iteration']:.2f} | {r['pretraining_cpu_seconds']:.0f} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def figure(runs: dict, path: Path) -> Path:
    """log p(x) against training CPU-seconds: a panel per code, a colour per algorithm, a thin line
    per seed and a thick one for the mean over seeds (at the seeds' common evaluation points)."""
    sources = [s for s in ("theirs", "ours") if any(key[0] == s for key in runs)]
    fig = Figure(figsize=(6 * len(sources), 4.5), layout="constrained")
    axes = [fig.add_subplot(1, len(sources), i + 1) for i in range(len(sources))]
    for ax, source in zip(axes, sources):
        for i, alg in enumerate(OURS + VARIANTS):
            recs = runs.get((source, alg))
            if not recs:
                continue
            for r in recs:
                ax.plot([e["train_cpu_seconds"] for e in r["records"]], [e["log_p"] for e in r["records"]], color=f"C{i}", alpha=0.35, lw=1)
            n = min(len(r["records"]) for r in recs)
            t = np.mean([[r["records"][j]["train_cpu_seconds"] for j in range(n)] for r in recs], 0)
            v = np.mean([[r["records"][j]["log_p"] for j in range(n)] for r in recs], 0)
            ax.plot(t, v, color=f"C{i}", lw=2.5, marker="o", label=f"{LABELS[alg]} ({len(recs)} seeds, {recs[0]['iterations']} it.)")
        ax.set_title(f"{'theirs (tuananhle7/hmws)' if source == 'theirs' else 'ours (examples/kernel_grammar.py)'}", fontsize=10)
        ax.set_xlabel("training CPU seconds (one thread)")
        ax.set_ylabel("log p(x), 25 series, K = 100 (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Le et al. 2022's synthetic time series (kernel grammar, 128 points): thin lines per seed, thick the mean")
    return atomic_save_figure(fig, path)


def check(hmws_path: str) -> dict:
    """Their modules and ours from one seed: the same initial parameters? Their state dict (after
    200 of their prior-pretraining batches) loaded into ours: the same log p(d, c, x), log q(d, c | x)
    and log q(d | x) on their guide's draws for four of their model's series?  Returns the largest
    absolute differences (nats) and whether the parameters matched."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import hmws_theirs

    hmws = hmws_theirs.load_hmws(hmws_path)
    torch.manual_seed(3)
    gm, guide = hmws.timeseries.GenerativeModel(10, 128, 0.02), hmws.timeseries.Guide(10, 128)
    torch.manual_seed(3)
    ours = kernel_grammar.KernelGrammar(10, 128)
    same = all(torch.equal(p, q) for p, q in zip([*gm.parameters(), *guide.parameters()], ours.parameters()))
    pretraining = importlib.import_module("cmws.examples.timeseries.expression_prior_pretraining")
    pretraining.pretrain_expression_prior(gm, batch_size=10, num_iterations=200)
    ours.generative_model.load_state_dict(gm.state_dict())
    ours.guide.load_state_dict(guide.state_dict())
    torch.manual_seed(1)
    obs = torch.stack([gm.sample()[1] for _ in range(4)])
    with torch.no_grad():
        latent = guide.sample(obs, (6,))
        z = ((latent[0], latent[1]), latent[2])
        expanded = obs[None].expand(6, 4, 128)
        diffs = {
            "log_joint": (gm.log_prob(latent, expanded) - ours.log_joint(obs, z)).abs().max().item(),
            "log_proposal": (guide.log_prob(expanded, latent) - ours.log_proposal(obs, z)).abs().max().item(),
            "log_proposal_discrete": (guide.log_prob_discrete(obs, z[0]) - ours.log_proposal_discrete(obs, z[0])).abs().max().item(),
        }
    return {"same_initial_parameters": same, **diffs}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hmws", default=None, help="a checkout of tuananhle7/hmws: also run theirs (experiments/hmws_theirs.py)")
    p.add_argument("--out", default="runs/hmws-timeseries")
    p.add_argument("--figure", default="docs/figures/hmws-timeseries.png")
    p.add_argument("--iterations", type=int, default=300, help="HMWS's and MWS's")
    p.add_argument("--rws-iterations", type=int, default=90)
    p.add_argument("--evals", type=int, default=4)
    p.add_argument("--eval-n", type=int, default=25)
    p.add_argument("--eval-k", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--variants", nargs="*", default=[], choices=VARIANTS, help="also run these variants of our HMWS (memory_weighting authors, uniform)"
    )
    p.add_argument("--report-only", action="store_true", help="no runs: the table and figure from the runs on disk")
    p.add_argument("--check", action="store_true", help="with --hmws: compare their model's densities with ours and stop")
    p.add_argument("--noise", type=int, default=0, metavar="R", help="evaluate seed 1's starting model R times (the metric's spread) and stop")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.check:
        if not a.hmws:
            raise SystemExit("--check needs --hmws PATH")
        result = check(a.hmws)
        for key, value in result.items():
            print(f"{key}: {value}")
        return result
    if a.noise:
        return noise(a)
    out = Path(a.out)
    spent = 0.0 if a.report_only else run_all(a)
    runs = load(out, a.seeds)
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
        print(f"{c['source']}: {c['claim']}: {c['verdict']} (paired difference {c['difference']:+.1f} ± {c['se']:.1f} nats)")
    print(f"cpu_seconds_this_call: {spent:.0f}")
    print(f"cpu_seconds_all_runs: {sum(r['cpu_seconds'] for r in rows):.0f}")
    print(f"figure: {fig}")
    return {"rows": rows, "claims": verdicts}


if __name__ == "__main__":
    main()
