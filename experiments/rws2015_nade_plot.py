"""The NADE-200 study's figure and table from two finished ``wakesleep compare`` runs: the NADE-q
config (``experiments/rws2015_nade_short.toml``) and its SBN-q twin (``rws2015_nade_sbnq_short.toml``).

    python experiments/rws2015_nade_plot.py --nade-q DIR --sbn-q DIR [--out docs/figures/rws2015-nade-short.png]

Draws the validation log-likelihood (nats, at the configs' ``valid_k``) against training CPU
seconds, one line per (proposal, way of training q), and prints each run's final test
log-likelihood (the configs' ``test_k`` on their ``test_n`` images) with its standard error over
images, then the two claims of Bornschein & Bengio (2015) as differences of those means (the
standard error of a difference: both runs' errors in quadrature; the runs share their test
images, so this overstates it):

- ``nade_minus_sbn_q_<way>``: NADE q's test log-likelihood less SBN q's, for each way of training q;
- ``both_minus_<way>_<q>``: q by wake and sleep less q by wake alone or by sleep alone.

Ends with ``key: value`` lines.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from wakesleep.plots import comparison_plot, read_jsonl
from wakesleep.runs import METRICS, SUMMARY

#: The configs' labels and the way of training q each names.
WAYS = {"RWS K=5": "both", "RWS K=5 wake": "wake", "RWS K=5 sleep": "sleep"}


def read_study(run: Path) -> dict[str, tuple[list[dict], dict | None]]:
    """label -> (its seed-0 run's validation records, its final record or None while unfinished)."""
    cfg = json.loads((run / "config.json").read_text())
    out = {}
    for spec in cfg["estimators"]:
        seed_dir = run / spec["label"] / f"seed{cfg['seeds'][0]}"
        if not (seed_dir / METRICS).is_file():
            continue
        records = [r for r in read_jsonl(seed_dir / METRICS) if "valid_log_likelihood" in r]
        summary = seed_dir / SUMMARY
        out[spec["label"]] = (records, json.loads(summary.read_text()) if summary.is_file() else None)
    if not out:
        raise ValueError(f"{run}: no runs with validation records yet")
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nade-q", type=Path, required=True, help="the compare directory of rws2015_nade_short.toml")
    p.add_argument("--sbn-q", type=Path, required=True, help="the compare directory of rws2015_nade_sbnq_short.toml")
    p.add_argument("--out", type=Path, default=Path("docs/figures/rws2015-nade-short.png"))
    a = p.parse_args(argv)
    studies = {"NADE": read_study(a.nade_q), "SBN": read_study(a.sbn_q)}
    series, finals = {}, {}
    for q, study in studies.items():
        for label, (records, final) in study.items():
            way = WAYS[label]
            series[f"{q} q, q by {way}"] = [(r["time"], r["valid_log_likelihood"], r.get("valid_stderr") or 0.0) for r in records]
            if final is not None:
                finals[(q, way)] = (final["test_log_likelihood"], final["test_stderr"], final["epochs"], final["train_seconds"])
    comparison_plot(
        series,
        a.out,
        "training CPU seconds (one thread)",
        "validation log-likelihood (nats)",
        title="NADE-200 p with a NADE prior, RWS K = 5",
        legend_below=True,
    )
    out = {}
    for (q, way), (ll, se, epochs, seconds) in sorted(finals.items()):
        print(f"# {q} q, q by {way}: test log-likelihood {ll:.2f} ± {se:.2f} nats after {epochs} epochs, {seconds:.0f} CPU-s")
        out[f"test_ll_{q.lower()}_q_{way}"] = ll
    for way in WAYS.values():
        if ("NADE", way) in finals and ("SBN", way) in finals:
            (l1, s1, *_), (l2, s2, *_) = finals[("NADE", way)], finals[("SBN", way)]
            out[f"nade_minus_sbn_q_{way}"], out[f"nade_minus_sbn_q_{way}_se"] = l1 - l2, math.hypot(s1, s2)
    for q in studies:
        for way in ("wake", "sleep"):
            if (q, "both") in finals and (q, way) in finals:
                (l1, s1, *_), (l2, s2, *_) = finals[(q, "both")], finals[(q, way)]
                out[f"both_minus_{way}_{q.lower()}_q"], out[f"both_minus_{way}_{q.lower()}_q_se"] = l1 - l2, math.hypot(s1, s2)
    print(f"figure: {a.out}")
    for key, value in out.items():
        print(f"{key}: {value:.3f}")
    return out


if __name__ == "__main__":
    main()
