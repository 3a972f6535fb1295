"""Le et al. (2019)'s Gaussian-mixture study (experiments/le2019_gmm.toml) at a tiny size, end to end;
the validation metrics it rests on: a model's own ``metrics(x)`` and the standard deviation of q's
gradient (:mod:`wakesleep.training.metrics`), checked against exact values."""

from __future__ import annotations

import csv
import json
import math
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import wakesleep as ws
from wakesleep.estimators import ESTIMATORS
from wakesleep.lab.compare import parse_config, run_compare
from wakesleep.models import ModelShapeError
from wakesleep.training import TrainConfig
from wakesleep.training.metrics import gradient_std, validation_metrics

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import gmm  # noqa: E402
from cli_helpers import load_script  # noqa: E402


def _plot_script():
    return load_script(ROOT / "experiments" / "le2019_gmm_plot.py")


def test_config_is_the_study():
    raw = tomllib.loads((ROOT / "experiments" / "le2019_gmm.toml").read_text())
    cfg = parse_config(raw, "le2019_gmm.toml")
    names = ("WS", "RWS", "DRWS", "VIMCO", "REINFORCE")
    assert [s.label for s in cfg.estimators] == [f"{n} K={k}" for k in (2, 5, 10, 20) for n in names]
    by_label = {s.label: s for s in cfg.estimators}
    assert by_label["WS K=5"].settings == {"k": 5, "q_update": "sleep", "sleep_batch": 500}  # the paper's batch * K sleep samples
    assert by_label["DRWS K=10"].settings == {"k": 10, "q_update": "wake", "defensive": 0.2}
    assert (by_label["VIMCO K=20"].algorithm, by_label["REINFORCE K=2"].algorithm) == ("vimco", "reinforce")
    t = cfg.train_config(cfg.estimators[0], seed=0)
    assert (t.batch_size, t.lr_p, t.lr_q, t.q_grad_std_repeats) == (100, 1e-3, 1e-3, 10)
    assert len(cfg.seeds) >= 3 and cfg.model["spec"].endswith("gmm.py:mixture")


def test_tiny_study_runs_end_to_end_and_plots(tmp_path):
    data = tmp_path / "gmm.npz"
    np.savez(data, train=gmm.make_data(500).numpy(), valid=gmm.make_data(200, 1).numpy(), test=gmm.make_data(100, 2).numpy())
    raw = tomllib.loads((ROOT / "experiments" / "le2019_gmm.toml").read_text())
    raw["seeds"], raw["data"]["dataset"] = [0], str(data)
    raw["train"].update(epochs=2, valid_k=10, q_grad_std_repeats=3)
    raw["evaluate"] = {"test_k": 20}
    raw["model"]["spec"] = str(ROOT / "examples" / "gmm.py") + ":mixture"
    raw["estimators"] = [e for e in raw["estimators"] if e["label"].endswith(" K=2")]
    cfg = parse_config(raw, "tiny.toml")
    records, summary, out = run_compare(cfg, tmp_path / "out", progress=False)
    assert len(records) == 5
    metrics = [json.loads(line) for line in (out / "RWS K=2" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [5, 10]  # 500 points, batch 100: 5 iterations an epoch
    for r in metrics:
        assert {"valid_pi_l1", "valid_pi_l2", "valid_q_tv", "valid_q_l2", "valid_q_grad_std"} <= set(r)
        assert 0 <= r["valid_q_tv"] <= 1 and r["valid_q_grad_std"] > 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {"valid_q_l2", "valid_q_l2_stderr"} <= set(rows[0])
    assert (out / "curves-valid_q_grad_std.png").is_file()
    paths = _plot_script().main(["--run", str(out), "--out", str(tmp_path / "fig")])
    assert [p.name for p in paths] == ["le2019-gmm.png", "le2019-gmm-curves.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_mixture_metrics_at_the_uniform_start_are_exact():
    torch.manual_seed(0)
    model = gmm.HandWrittenMixture()
    x = gmm.make_data(30, seed=3)
    m = model.metrics(x)
    err = torch.full((20,), 1 / 20) - gmm.true_probs()
    assert m["pi_l1"] == pytest.approx(err.abs().sum().item(), rel=1e-6)
    assert m["pi_l2"] == pytest.approx(err.norm().item(), rel=1e-6)
    # Both builds report the same numbers for the same parameters.
    torch.manual_seed(0)  # the same draws, in the same order, for the prior and the proposal's layers
    other = gmm.mixture()
    assert other.metrics(x) == pytest.approx(m, rel=1e-5)
    # q's distance to the true posterior, by Bayes' rule written out.
    log_post = gmm.true_probs().log() + torch.distributions.Normal(10.0 * torch.arange(20.0), gmm.SIGMA).log_prob(x)  # [30, 20]
    true = torch.softmax(log_post, -1)
    assert (true - gmm.proposal_probs(model, x)).norm(dim=-1).mean().item() == pytest.approx(m["q_l2"], rel=1e-5)


class _Toy(gmm.HandWrittenMixture):
    """The mixture with a ``metrics`` member given by the test."""

    def __init__(self, metrics):
        super().__init__()
        self._metrics = metrics

    def metrics(self, x):
        return self._metrics(self, x)


def test_model_metrics_are_recorded_at_each_validation(tmp_path):
    torch.manual_seed(0)
    model = _Toy(lambda m, x: {"first_logit": m.prior.logits[0], "n": x.shape[0]})
    x, xv = gmm.make_data(200), gmm.make_data(40, 1)
    fit = ws.train(model, ws.RWS(k=2, q_update="wake"), x, xv, epochs=2, batch_size=100, valid_k=5, patience=None, progress=False, run_dir=tmp_path)
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["valid_n"] for r in lines] == [40, 40]
    assert lines[-1]["valid_first_logit"] == pytest.approx(model.prior.logits[0].item()) and fit.history[-1] == lines[-1]
    assert "valid_q_grad_std" not in lines[-1]  # not asked for


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda m, x: [1.0], "dict of names to numbers"),
        (lambda m, x: {"a": "high"}, "dict of names to numbers"),
        (lambda m, x: {"a": torch.zeros(3)}, "dict of names to numbers"),
        (lambda m, x: {"log_likelihood": 1.0}, "rename"),
    ],
)
def test_bad_model_metrics_are_refused_by_name(bad, match):
    with pytest.raises(ModelShapeError, match=match):
        validation_metrics(_Toy(bad), ws.RWS(k=2), gmm.make_data(10), None, 10, 0)


def test_gradient_std_matches_the_exact_standard_deviation():
    # loss = Σ_p w_p ε_p with fresh ε ~ N(0, s²): every gradient element is ε_p, of standard deviation s.
    # E[sample sd of R draws] = c4(R) s, and the mean over P elements has s.e. s √(1 − c4²) / √P.
    s, repeats, elements = 0.7, 10, 4000
    w = nn.Parameter(torch.zeros(elements, dtype=torch.float64))
    torch.manual_seed(0)
    got = gradient_std(lambda: (w * s * torch.randn(elements, dtype=torch.float64)).sum(), [w], repeats)
    c4 = math.sqrt(2 / (repeats - 1)) * math.exp(math.lgamma(repeats / 2) - math.lgamma((repeats - 1) / 2))
    se = s * math.sqrt(1 - c4**2) / math.sqrt(elements)
    assert abs(got - c4 * s) < 5 * se, (got, c4 * s, se)
    assert w.grad is None  # .grad untouched
    with pytest.raises(ValueError, match=">= 2"):
        gradient_std(lambda: w.sum(), [w], 1)


def test_q_grad_std_is_the_spread_of_repeated_estimator_gradients_and_leaves_training_unchanged():
    torch.manual_seed(1)
    model, est = gmm.HandWrittenMixture().double(), ESTIMATORS["vimco"](k=5)
    xv = gmm.make_data(50, 1).double()
    got = validation_metrics(model, est, xv, 20, 25, seed=7)["valid_q_grad_std"]
    # The same by hand: 20 gradients of VIMCO's loss w.r.t. φ on the first 25 points, seed 7.
    torch.manual_seed(7)
    grads = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(est(model, xv[:25]).loss, model.q_parameters())]) for _ in range(20)])
    assert got == pytest.approx(grads.std(0).mean().item(), rel=1e-9)
    # Measuring does not move the training's random state: the same run with and without it.
    x = gmm.make_data(200).double()
    finals = []
    for repeats in (None, 3):
        torch.manual_seed(2)
        m = gmm.HandWrittenMixture().double()
        ws.train(m, ws.RWS(k=3, q_update="wake"), x, xv, epochs=2, valid_k=5, patience=None, progress=False, q_grad_std_repeats=repeats)
        finals.append(torch.cat([p.detach().reshape(-1) for p in m.parameters()]))
    assert torch.equal(finals[0], finals[1])


def test_q_grad_std_repeats_of_one_is_refused():
    with pytest.raises(ValueError, match="q_grad_std_repeats"):
        TrainConfig(q_grad_std_repeats=1)
