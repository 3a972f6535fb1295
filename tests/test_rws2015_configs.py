"""The configs for the reweighted wake-sleep paper's MNIST models (Bornschein & Bengio 2015) and the
deep SBN of RWS against VIMCO (experiments/rws2015_*.toml, experiments/sbn3_rws_vimco.toml): each is
the study it says it is, and runs end to end at a tiny size (a slice of binarised MNIST, 2 steps, small K)."""

from __future__ import annotations

import csv
import json
import math
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest
from test_cli_errors import run  # the command line in-process: (exit status, stdout, stderr)

from wakesleep.config import build_model
from wakesleep.lab.compare import load_config, parse_config, run_compare

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"

#: config -> (its [model] as the layers it builds, the estimators' labels and settings)
STUDIES = {
    "rws2015_sbn.toml": (
        {"kind": "sbn", "layers": [200, 200, 10]},
        {
            "WS": ("ws", {}),
            "RWS K=5": ("rws", {"k": 5, "q_update": "both"}),
            "RWS K=10": ("rws", {"k": 10, "q_update": "both"}),
            "RWS K=25": ("rws", {"k": 25, "q_update": "both"}),
            "RWS K=5 wake": ("rws", {"k": 5, "q_update": "wake"}),
            "RWS K=5 sleep": ("rws", {"k": 5, "q_update": "sleep"}),
        },
    ),
    "rws2015_nade.toml": (
        {"kind": "sbn", "layers": [200], "p_layers": "nade", "prior": "nade", "q_layers": "nade", "nade_hidden": 200},
        {
            "WS": ("ws", {}),
            "RWS K=5": ("rws", {"k": 5, "q_update": "both"}),
            "RWS K=5 wake": ("rws", {"k": 5, "q_update": "wake"}),
            "RWS K=5 sleep": ("rws", {"k": 5, "q_update": "sleep"}),
        },
    ),
    "rws2015_nade_sbnq.toml": (
        {"kind": "sbn", "layers": [200], "p_layers": "nade", "prior": "nade", "q_layers": "sbn", "nade_hidden": 200},
        {
            "WS": ("ws", {}),
            "RWS K=5": ("rws", {"k": 5, "q_update": "both"}),
            "RWS K=5 wake": ("rws", {"k": 5, "q_update": "wake"}),
            "RWS K=5 sleep": ("rws", {"k": 5, "q_update": "sleep"}),
        },
    ),
    "sbn3_rws_vimco.toml": (
        {"kind": "sbn", "layers": [200, 200, 200]},
        {"RWS K=5": ("rws", {"k": 5, "q_update": "both"}), "VIMCO K=5": ("vimco", {"k": 5})},
    ),
}


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_config_is_the_study(name):
    cfg = load_config(EXPERIMENTS / name)
    model, estimators = STUDIES[name]
    assert cfg.model == model
    assert {s.label: (s.algorithm, s.settings) for s in cfg.estimators} == estimators
    assert all(not s.train for s in cfg.estimators)  # same learning rates for every estimator
    # The stated budget, the same for every estimator: 30 CPU-minutes on one thread, 2 seeds.
    assert (cfg.train["max_seconds"], cfg.train["clock"], cfg.threads) == (1800, "process", 1)
    assert len(cfg.seeds) >= 2 and cfg.dataset == "binarized-mnist"
    # The evaluation protocol: K = 5000 on the whole test set.
    assert (cfg.test_k, cfg.test_n) == (5000, None)
    t = cfg.train_config(cfg.estimators[0], seed=0)
    assert (t.batch_size, t.lr_p, t.lr_q, t.patience) == (100, 1e-3, 1e-3, None)
    # The header states the command and the measured cost.
    text = (EXPERIMENTS / name).read_text()
    assert f"wakesleep compare experiments/{name}" in text and "Measured here" in text and "CPU-hours" in text


def test_nade_models_are_what_the_headers_say():
    """NADE-200: p(x | z) a NADE over the pixels above 200 binary latents with a NADE prior; the twin differs only in q."""
    nade, sbnq = (build_model(load_config(EXPERIMENTS / n).model, 784) for n in ("rws2015_nade.toml", "rws2015_nade_sbnq.toml"))
    assert nade.config["sizes"] == sbnq.config["sizes"] == [784, 200]
    assert nade.config["p_layers"] == sbnq.config["p_layers"] == ["nade"]
    assert (nade.config["q_layers"], sbnq.config["q_layers"]) == (["nade"], ["sbn"])
    assert nade.config["nade_hidden"] == 200
    assert nade.config["prior"] == sbnq.config["prior"] == "nade"  # the authors' NADETop (ALGORITHMS.md §9)


@pytest.fixture(scope="module")
def mnist_slice(tmp_path_factory):
    """40 train, 20 valid and 20 test images of fixed-binarised MNIST, as a .npz data set."""
    d = np.load(Path(os.environ["WAKESLEEP_DATA_DIR"]) / "binarized_mnist.npz")
    path = tmp_path_factory.mktemp("data") / "mnist_slice.npz"
    np.savez(path, train=d["train"][:40], valid=d["valid"][:20], test=d["test"][:20])
    return path


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_tiny_study_runs_end_to_end(name, mnist_slice, tmp_path):
    raw = tomllib.loads((EXPERIMENTS / name).read_text())
    raw["seeds"], raw["data"] = [0], {"dataset": str(mnist_slice)}
    raw["train"].update(epochs=1, batch_size=20, valid_k=4, max_seconds=60)
    raw["evaluate"] = {"test_k": 8}
    cfg = parse_config(raw, f"tiny-{name}")
    records, summary, out = run_compare(cfg, tmp_path / "out", progress=False)
    assert [r["label"] for r in records] == list(STUDIES[name][1])
    for r in records:
        assert (r["epochs"], r["test_k"], r["test_n"], r["clock"]) == (1, 8, 20, "process")
        assert math.isfinite(r["test_log_likelihood"]) and r["test_log_likelihood"] < 0 and r["train_seconds"] > 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [row["label"] for row in rows] == list(STUDIES[name][1])
    assert (out / "curves.png").is_file() and (out / "summary.md").is_file()
    if "nade" in name:  # the authors' NADE protocol (500 samples, ALGORITHMS.md §9) is one command on a finished run
        run_dir = sorted(out.rglob("run.json"))[0].parent
        code, text, err = run(["evaluate", str(run_dir), "--k", "5", "--no-progress"])
        assert code == 0 and "test log-likelihood" in text, err


@pytest.mark.parametrize("name", ["rws2015_sbn_short.toml", "sbn3_rws_vimco_short.toml"])
def test_short_variant_differs_only_in_budget_and_test_subset(name):
    """The short variants (the runs docs/results.md reports) are their long study with 300 CPU-s per run and
    the K = 5000 test log-likelihood on a fixed 1000 test images; everything else is the same."""
    long_name = name.replace("_short", "")
    short, full = (tomllib.loads((EXPERIMENTS / n).read_text()) for n in (name, long_name))
    assert short["name"] == full["name"] + "-short"
    assert short["train"].pop("max_seconds") == 300 and full["train"].pop("max_seconds") == 1800
    assert short["evaluate"].pop("test_n") == 1000 and "test_n" not in full["evaluate"]
    for key in ("seeds", "threads", "data", "model", "train", "evaluate", "estimators"):
        assert short[key] == full[key], key
    assert set(short) == set(full)
    assert f"wakesleep compare experiments/{name}" in (EXPERIMENTS / name).read_text()


@pytest.mark.parametrize("name", ["rws2015_nade_short.toml", "rws2015_nade_sbnq_short.toml"])
def test_nade_short_variant_is_its_study_at_the_stated_budget(name):
    """The NADE-200 runs docs/results.md reports: their long study's model, data and learning rates, with
    480 CPU-s per run and one seed, compiled kernels, the authors' K = 500 evaluation on a fixed 500 test
    images, and the three ways of training q (WS dropped)."""
    short, full = (tomllib.loads((EXPERIMENTS / n).read_text()) for n in (name, name.replace("_short", "")))
    assert short["name"] == full["name"] + "-short" and short["seeds"] == [0]
    assert (short["train"].pop("max_seconds"), short["train"].pop("compile")) == (480, True)
    full["train"].pop("max_seconds")
    assert short["evaluate"] == {"test_k": 500, "test_n": 500, "valid_n": 500}
    assert [e for e in full["estimators"] if e["label"] != "WS"] == short["estimators"]
    for key in ("threads", "data", "model", "train"):
        assert short[key] == full[key], key
    assert f"wakesleep compare experiments/{name}" in (EXPERIMENTS / name).read_text()


def test_nade_plot_draws_the_curves_and_prints_the_claims(tmp_path):
    """experiments/rws2015_nade_plot.py on two fake compare directories: the figure, each run's test
    log-likelihood and the claims' differences with their standard errors."""
    from cli_helpers import load_script

    plot = load_script(EXPERIMENTS / "rws2015_nade_plot.py")
    lls = {("nade", "RWS K=5"): -100.0, ("nade", "RWS K=5 wake"): -101.0, ("nade", "RWS K=5 sleep"): -103.0, ("sbn", "RWS K=5"): -104.0}
    for q in ("nade", "sbn"):
        labels = [label for (qq, label) in lls if qq == q]
        (tmp_path / q).mkdir()
        (tmp_path / q / "config.json").write_text(json.dumps({"estimators": [{"label": label} for label in labels], "seeds": [0]}))
        for label in labels:
            d = tmp_path / q / label / "seed0"
            d.mkdir(parents=True)
            (d / "metrics.jsonl").write_text(
                "".join(json.dumps({"time": 10.0 * e, "valid_log_likelihood": lls[(q, label)] - 5 / e, "valid_stderr": 0.5}) + "\n" for e in (1, 2))
            )
            (d / "summary.json").write_text(
                json.dumps({"test_log_likelihood": lls[(q, label)], "test_stderr": 0.3, "epochs": 2, "train_seconds": 20.0})
            )
    out = plot.main(["--nade-q", str(tmp_path / "nade"), "--sbn-q", str(tmp_path / "sbn"), "--out", str(tmp_path / "fig.png")])
    assert (tmp_path / "fig.png").stat().st_size > 0
    assert out["nade_minus_sbn_q_both"] == pytest.approx(4.0) and out["nade_minus_sbn_q_both_se"] == pytest.approx(0.3 * math.sqrt(2))
    assert out["both_minus_wake_nade_q"] == pytest.approx(1.0) and out["both_minus_sleep_nade_q"] == pytest.approx(3.0)
    assert "nade_minus_sbn_q_wake" not in out and "both_minus_wake_sbn_q" not in out  # runs not there are not compared
