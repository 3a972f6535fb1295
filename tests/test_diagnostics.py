"""The diagnostics recover known theory on the exact references, and the compare harness runs.

Rates measured (this file's settings; the machine was shared, timings play no part):

- RWS θ-gradient bias on factor analysis (mismatch 0.25, B = 128, R = 400), K = 16, 64, 256:
  log-log slope −0.99 ± 0.04 (seed 0; seeds 0–5 gave −0.98 … −1.13, each within 2.1 s.e. of −1).
  Theory: the self-normalised importance-sampling bias is O(1/K) (slope −1) once K exceeds the
  χ²-divergence of q from the posterior; below that it falls faster here (K 2→8: −1.66).
- IS log-likelihood bias E[log p̂_K] − log p(x) on the same runs: −0.0346 ± 0.0012,
  −0.0078 ± 0.0006, −0.0021 ± 0.0003 nats; slope −1.04 ± 0.04 (delta method: −Var(w/p)/(2K)).
- Wake-sleep θ-gradient (K = 1) on the small SBN (B = 16, R = 200): relative bias 1.83,
  z-score 52, cosine of its mean with the exact gradient 0.35; its sleep-φ gradient: z = −0.3
  (unbiased, as it should be).
"""

from __future__ import annotations

import json
import math

import matplotlib.image
import pytest
import torch

from wakesleep.cli import main
from wakesleep.lab import compare as compare_module
from wakesleep.lab import diagnostics as D
from wakesleep.lab.compare import ConfigError, load_config, parse_config, run_compare
from wakesleep.models.exact import build_reference

PNG = b"\x89PNG\r\n\x1a\n"


def by_setting(rows, target="theta"):
    return {r["setting"]: r for r in rows if r["target"] == target}


# ------------------------------------------------------------------ statistics


def test_gradient_stats_recover_a_known_bias_and_variance():
    torch.manual_seed(0)
    target = torch.tensor([3.0, 4.0, 0.0, 0.0])  # ‖g‖ = 5
    bias = torch.tensor([0.5, 0.0, 0.0, 0.0])
    noise_sd = 0.2
    s = D.gradient_stats(target + bias + noise_sd * torch.randn(4000, 4), target)
    assert abs(s["rel_bias"] - 0.1) < 3 * s["rel_bias_se"] and s["rel_bias_se"] < 0.01
    assert s["bias_z"] > 10
    assert s["rel_variance"] == pytest.approx(4 * noise_sd**2 / 25, rel=0.1)
    assert s["rel_rmse"] == pytest.approx(math.sqrt(0.25 + 4 * noise_sd**2) / 5, rel=0.05)
    unbiased = D.gradient_stats(target + noise_sd * torch.randn(4000, 4), target)
    assert abs(unbiased["bias_z"]) < 4 and unbiased["rel_bias"] < 3 * unbiased["rel_noise"]
    with pytest.raises(ValueError, match="R >= 2"):
        D.gradient_stats(target[None], target)


def test_signal_to_noise_is_the_mean_over_varying_parameters_of_mean_over_sd():
    samples = torch.tensor([[0.0, 1.0, 5.0], [2.0, 1.0, 7.0], [4.0, 1.0, 9.0]])  # the middle one does not vary
    assert D.signal_to_noise(samples) == pytest.approx((2.0 / 2.0 + 7.0 / 2.0) / 2)
    assert math.isnan(D.signal_to_noise(torch.ones(4, 3)))
    with pytest.raises(ValueError):
        D.signal_to_noise(torch.ones(1, 3))


def test_loglog_slope_of_a_power_law():
    k = [2.0, 8.0, 32.0]
    slope, se = D.loglog_slope(k, [3 / v for v in k], [0.01 * 3 / v for v in k])
    assert slope == pytest.approx(-1.0, abs=1e-12) and 0 < se < 0.02
    with pytest.raises(ValueError):
        D.loglog_slope([1.0], [1.0], [0.1])


def test_settings_parse_and_build():
    s = D.Setting.parse("rws:k=8,q_update=wake")
    assert s.kwargs == {"k": 8, "q_update": "wake"} and s.label == "rws(k=8,q_update=wake)"
    assert s.build().k == 8
    with pytest.raises(ValueError, match="unknown estimator"):
        D.Setting.parse("nope:k=1")
    with pytest.raises(ValueError, match="name=value"):
        D.Setting.parse("rws:8")
    with pytest.raises(ValueError, match=r"k \(particles\)"):
        D.Setting.parse("rws:k=0").build()
    sbn, _ = build_reference("sbn")
    assert not any(s.algorithm in ("vae", "iwae") for s in D.default_settings(sbn))
    fa, _ = build_reference("factor-analysis")
    assert any(s.algorithm == "iwae" for s in D.default_settings(fa))


def test_plot_families_leave_out_only_the_particle_and_sample_counts():
    def row(text):
        s = D.Setting.parse(text)
        return {"algorithm": s.algorithm, "params": json.dumps(s.kwargs, sort_keys=True)}

    assert D._family(row("rws:k=8,q_update=wake")) == D._family(row("rws:k=32,q_update=wake")) == "rws(q_update=wake)"
    assert D._family(row("rws:k=8,q_update=wake,sleep_batch=50")) == "rws(q_update=wake,sleep_batch=50)"
    assert D._family(row("ws:samples=4")) == "ws(samples=4)" and D._count(row("ws:samples=4")) is None
    alws = row("alws:sleep_samples=100,kernel=matern32")
    assert D._family(alws) == "alws(kernel=matern32)" and D._count(alws) == ("sleep_samples", 100)
    assert [s.label for s in D.alws_settings(ns=(50, 800), kernels=("gaussian", "matern32"))] == [
        "alws(kernel=gaussian,sleep_samples=50)",
        "alws(kernel=gaussian,sleep_samples=800)",
        "alws(kernel=matern32,sleep_samples=50)",
        "alws(kernel=matern32,sleep_samples=800)",
    ]


# ------------------------------------------------------------------ theory


@pytest.fixture(scope="module")
def rws_over_k():
    model, x = build_reference("factor-analysis", batch=128, mismatch=0.25)
    ks = (16, 64, 256)
    rows = D.diagnose(model, x, [f"rws:k={k},q_update=wake" for k in ks], repeats=400, seed=0, progress=False)
    return ks, [by_setting(rows)[f"rws(k={k},q_update=wake)"] for k in ks]


def test_rws_theta_bias_falls_as_one_over_k(rws_over_k):
    ks, rows = rws_over_k
    for r in rows:
        assert r["bias_z"] > 3, r  # every bias is resolved above the Monte Carlo noise
    slope, se = D.loglog_slope(ks, [r["rel_bias"] for r in rows], [r["rel_bias_se"] for r in rows])
    assert se < 0.1, se  # the measurement can tell −1 from −0.5 or −1.5
    assert abs(slope + 1) < 3 * se, (slope, se)


def test_importance_sampled_log_likelihood_bias_falls_with_k(rws_over_k):
    ks, rows = rws_over_k
    gaps = [(r["ll_gap"], r["ll_gap_se"]) for r in rows]
    for (g_small, s_small), (g_large, s_large) in zip(gaps, gaps[1:]):
        assert g_small + 3 * s_small < 0  # biased low (Jensen)
        assert g_small + 3 * math.hypot(s_small, s_large) < g_large, gaps
    slope, se = D.loglog_slope(ks, [-g for g, _ in gaps], [s for _, s in gaps])
    assert se < 0.1 and abs(slope + 1) < 3 * se, (slope, se)  # −Var(w/p)/(2K): O(1/K) by the delta method


def test_wake_sleep_theta_gradient_is_biased_and_its_sleep_phi_is_not():
    model, x = build_reference("sbn")
    rows = D.diagnose(model, x, ["ws", "rws:k=128,q_update=wake"], repeats=200, progress=False)
    ws = by_setting(rows)["ws"]
    assert ws["bias_z"] > 5, ws
    assert ws["cos_mean"] < 0.9
    # The same statistic does not flag an unbiased estimate: the sleep-phase φ-gradient.
    sleep = by_setting(rows, "phi-sleep")["ws"]
    assert sleep["bias_z"] < 4, sleep
    # With many particles RWS's θ-gradient is far less biased than wake-sleep's.
    assert by_setting(rows)["rws(k=128,q_update=wake)"]["rel_bias"] < 0.5 * ws["rel_bias"]


def test_score_function_phi_updates_against_the_exact_elbo_gradient():
    model, x = build_reference("sbn")
    rows = D.diagnose(model, x, ["reinforce:k=4", "vimco:k=4"], repeats=300, progress=False)
    # REINFORCE is unbiased for ∇φ ELBO (enumerated): no significant bias at R = 300
    elbo = by_setting(rows, "phi-elbo")["reinforce(k=4)"]
    assert elbo["bias_z"] < 4 and elbo["cos_mean"] > 0.8, elbo
    # VIMCO ascends its own K-sample bound: no exact target here, its SNR alone
    own = by_setting(rows, "phi-own")["vimco(k=4)"]
    assert own["rel_bias"] is None and math.isfinite(own["snr"]) and own["snr"] > 0


def test_iwae_phi_snr_falls_with_k_while_rws_wake_phi_snr_rises():
    """Rainforth et al. 2018: the IWAE bound's φ-gradient has SNR O(1/√K); RWS's wake-φ update does not
    (its target, −∇φ KL(p ‖ q), does not vanish as K grows).  K = 4 against 256: √64 = 8 apart."""
    model, x = build_reference("factor-analysis")
    rows = D.diagnose(model, x, ["iwae:k=4", "iwae:k=256", "rws:k=4,q_update=wake", "rws:k=256,q_update=wake"], repeats=100, progress=False)
    iwae, rws = by_setting(rows, "phi-own"), by_setting(rows, "phi-wake")
    assert iwae["iwae(k=256)"]["snr"] < iwae["iwae(k=4)"]["snr"] / 3, iwae
    assert rws["rws(k=256,q_update=wake)"]["snr"] > 3 * rws["rws(k=4,q_update=wake)"]["snr"], rws


def test_alws_error_falls_with_n():
    settings = D.alws_settings(ns=(50, 800))
    small, large = settings[0], settings[1]  # same kernel, N = 50 and 800
    model, x = build_reference("sbn")
    rows = by_setting(D.diagnose(model, x, [small, large], repeats=50, progress=False))
    a, b = rows[small.label], rows[large.label]
    assert b["rel_rmse"] + 3 * math.hypot(a["rel_rmse_se"], b["rel_rmse_se"]) < a["rel_rmse"], (a, b)


# ------------------------------------------------------------------ command line


def test_diagnose_command_writes_table_and_plots(tmp_path, capsys):
    rc = main(
        [
            "diagnose",
            "--reference",
            "factor-analysis",
            "--estimator",
            "ws",
            "rws:k=4,q_update=wake",
            "iwae:k=4",
            "--repeats",
            "5",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 0
    text = (tmp_path / "diagnostics-factor-analysis.csv").read_text().splitlines()
    # θ rows for 3; φ rows with an exact target for ws and rws, and IWAE's φ-row of SNR alone
    assert text[0].split(",") == list(D.COLUMNS) and len(text) == 1 + 6
    assert [line.split(",")[D.COLUMNS.index("target")] for line in text[1:]].count("phi-own") == 1
    for target in ("theta", "phi", "phi-snr"):
        png = tmp_path / f"diagnostics-factor-analysis-{target}.png"
        assert png.read_bytes()[:8] == PNG and matplotlib.image.imread(png).std() > 0
    assert "rws(k=4,q_update=wake)" in capsys.readouterr().out


def test_diagnose_command_rejects_bad_settings(capsys):
    assert main(["diagnose", "--reference", "sbn", "--estimator", "rws:k=zero", "--repeats", "3", "--no-progress"]) == 2
    assert "k (particles)" in capsys.readouterr().err


# ------------------------------------------------------------------ compare


def tiny_config(**changes):
    raw = {
        "name": "tiny",
        "seeds": [0, 1],
        "threads": 1,
        "data": {"dataset": "digits"},
        "model": {"kind": "sbn", "layers": [8]},
        "train": {"epochs": 1, "batch_size": 100, "valid_k": 5, "clock": "process"},
        "evaluate": {"test_k": 20, "test_n": 50, "valid_n": 50},
        "estimators": [{"label": "WS", "algorithm": "ws"}, {"label": "RWS-3", "algorithm": "rws", "settings": {"k": 3}}],
    }
    raw.update(changes)
    return raw


def test_compare_runs_end_to_end_and_resumes(tmp_path, capsys, monkeypatch):
    initial = {}  # (label, seed directory) -> the model's parameters when training starts
    real_train = compare_module.train

    def recording_train(model, estimator, *args, run_dir=None, **kwargs):
        initial[(run_dir.parent.name, run_dir.name)] = {k: v.clone() for k, v in model.state_dict().items()}
        return real_train(model, estimator, *args, run_dir=run_dir, **kwargs)

    monkeypatch.setattr(compare_module, "train", recording_train)
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text("""
name = "tiny"
seeds = [0, 1]
threads = 1
[data]
dataset = "digits"
[model]
kind = "sbn"
layers = [8]
[train]
epochs = 1
batch_size = 100
valid_k = 5
clock = "process"
[evaluate]
test_k = 20
test_n = 50
valid_n = 50
[[estimators]]
label = "WS"
algorithm = "ws"
[[estimators]]
label = "RWS-3"
algorithm = "rws"
settings = { k = 3 }
""")
    out = tmp_path / "out"
    assert main(["compare", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and summary[1].startswith("WS,ws") and summary[2].startswith("RWS-3,rws")
    per_seed = (out / "per_seed.csv").read_text().splitlines()
    assert len(per_seed) == 5
    assert "| RWS-3 |" in (out / "summary.md").read_text()
    assert (out / "curves.png").read_bytes()[:8] == PNG
    record = json.loads((out / "RWS-3" / "seed1" / "summary.json").read_text())
    assert record["epochs"] == 1 and record["test_k"] == 20 and record["test_n"] == 50
    assert math.isfinite(record["test_log_likelihood"]) and record["test_log_likelihood"] < 0
    assert "test log-likelihood" in capsys.readouterr().out
    # Equal budgets and like-for-like seeds: both estimators start from the same model at seed s
    # (and the seeds differ), and train for the same number of epochs.
    assert sorted(initial) == [(label, f"seed{s}") for label in ("RWS-3", "WS") for s in (0, 1)]
    for s in (0, 1):
        ws, rws = initial["WS", f"seed{s}"], initial["RWS-3", f"seed{s}"]
        assert ws.keys() == rws.keys() and all(torch.equal(ws[k], rws[k]) for k in ws)
    assert not all(torch.equal(initial["WS", "seed0"][k], initial["WS", "seed1"][k]) for k in initial["WS", "seed0"])
    assert [json.loads(p.read_text())["epochs"] for p in sorted(out.glob("*/seed*/summary.json"))] == [1, 1, 1, 1]
    # A second run finds every summary and trains nothing: no run is trained again (its metrics
    # would be rewritten) and the same table comes back.
    runs = sorted(out.glob("*/seed*"))
    assert len(runs) == 4
    for run in runs:
        (run / "metrics.jsonl").unlink()
    per_seed_before = (out / "per_seed.csv").read_text()
    initial.clear()
    records, _, _ = run_compare(load_config(cfg_path), out, progress=False)
    assert initial == {} and not any((run / "metrics.jsonl").exists() for run in runs)
    assert len(records) == 4 and (out / "per_seed.csv").read_text() == per_seed_before
    # ...but a changed config does not silently reuse the old runs.
    cfg_path.write_text(cfg_path.read_text().replace("epochs = 1", "epochs = 2"))
    with pytest.raises(ConfigError, match="different config"):
        run_compare(load_config(cfg_path), out, progress=False)


@pytest.mark.parametrize(
    "change,key",
    [
        ({"model": None}, "model"),
        ({"modle": {}}, "modle"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"model": {"kind": "transformer", "layers": [8]}}, "model.kind"),
        ({"model": {"kind": "sbn", "layers": [8], "hidden": [4]}}, "model.hidden"),
        ({"train": {"epochs": 0}}, "train"),
        ({"train": {"epoch": 1}}, "train.epoch"),
        ({"evaluate": {"test_k": 0}}, "evaluate.test_k"),
        ({"estimators": []}, "estimators"),
        ({"estimators": [{"algorithm": "nope"}]}, "estimators[0].algorithm"),
        ({"estimators": [{"algorithm": "rws", "setings": {}}]}, "estimators[0].setings"),
        ({"estimators": [{"algorithm": "rws", "settings": {"k": 0}}]}, "estimators[0].settings"),
        ({"estimators": [{"algorithm": "rws", "settings": {"particles": 3}}]}, "estimators[0].settings"),
        ({"estimators": [{"algorithm": "rws", "train": {"epochs": 5}}]}, "estimators[0].train.epochs"),
        ({"estimators": [{"algorithm": "rws"}, {"algorithm": "rws"}]}, "repeated"),
    ],
)
def test_bad_configs_name_the_key(change, key):
    raw = tiny_config(**change)
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_config(raw, "bad.toml")


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="no config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no estimator labelled"):
        parse_config(tiny_config(), "x.toml", only=["IWAE"])
