"""examples/kernel_grammar.py (Le et al. 2022's time-series model on the hybrid contract) and
experiments/hmws_timeseries.py's pure parts, without the authors' checkout; with HMWS=PATH (a
checkout of tuananhle7/hmws), their modules and ours from one seed agree."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch

import wakesleep as ws
from wakesleep.models.contract import HYBRID, check_shapes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import kernel_grammar as kg  # noqa: E402
from cli_helpers import load_script  # noqa: E402

study = load_script(ROOT / "experiments" / "hmws_timeseries.py")
theirs = load_script(ROOT / "experiments" / "hmws_theirs.py")


def tiny(seed: int = 0) -> kg.KernelGrammar:
    return kg.grammar(seed=seed, pretrain_iterations=2, hidden=8)


def encode(expression: str, max_chars: int = 10):
    tokens = torch.zeros(max_chars, dtype=torch.long)
    tokens[: len(expression)] = torch.tensor([kg.VOCAB.index(ch) for ch in expression])
    stop = torch.zeros(max_chars, dtype=torch.long)
    stop[len(expression) - 1] = 1
    return tokens, stop


def test_parse_follows_their_grammar():
    assert kg.parse("R") == ("R", 0)
    assert kg.parse("W+R*1") == ("+", (("W", 0), ("*", (("R", 1), ("1", 2)))))  # * binds tighter than +
    assert kg.parse("(W+R)*C") == ("*", (("+", (("W", 0), ("R", 1))), ("C", 2)))
    for bad in ("WR", "W+", "(W", ")", "+", "()"):
        with pytest.raises(kg.ParseError):
            kg.parse(bad)


def test_kernels_match_their_formulas():
    model = tiny()
    c = torch.randn(1, 10, kg.PARAMS)
    tokens, stop = encode("R+1")
    cov, valid = model.kernels(tokens[None], stop[None], c)
    t = model.t
    diff = t[:, None] - t[None, :]
    sq = lambda raw, centre: torch.sigmoid(raw) * 0.02 + centre - 0.01  # noqa: E731
    rbf = sq(c[0, 0, 1], 0.5) * torch.exp(-(diff**2) / (2 * sq(c[0, 0, 2], 0.5)))
    per = sq(c[0, 1, 3], 0.5) * torch.exp(-2 * torch.sin(math.pi * diff.abs() / sq(c[0, 1, 4], 0.2)) ** 2 / sq(c[0, 1, 5], 0.5))
    assert valid.item() and torch.allclose(cov[0], rbf + per, atol=1e-6)
    assert kg.lengths(stop[None]).item() == 3 and kg.count_bases(tokens[None], kg.lengths(stop[None])).item() == 2


def test_hybrid_contract_shapes_and_finite_densities():
    model = tiny()
    assert ws.models.contract.has_hybrid_proposal(model)
    (d, c), x = model.sample(4)
    assert d[0].shape == d[1].shape == (4, 10) and c.shape == (4, 10, kg.PARAMS) and x.shape == (4, kg.T)
    assert torch.isfinite(x).all()
    check_shapes(model, x, HYBRID + ("log_joint", "propose", "log_proposal"), k=3)
    d, log_q_d = model.propose_discrete(x, 3)
    c, log_q_c = model.propose_continuous(x, d, 2)
    assert c.shape == (2, 3, 4, 10, kg.PARAMS) and log_q_c.shape == (2, 3, 4) and log_q_d.shape == (3, 4)
    z = (tuple(v.expand(2, *v.shape) for v in d), c)
    log_p = model.log_joint(x, z)
    assert log_p.shape == (2, 3, 4) and torch.isfinite(log_p).all() and torch.isfinite(log_q_c).all()
    assert torch.allclose(model.log_proposal_discrete(x, d), log_q_d, atol=1e-5)
    # a valid expression is scored by the GP; one that does not parse gets their −10⁶
    tokens, stop = zip(encode("R"), encode("R+"))
    z = ((torch.stack(tokens)[:, None], torch.stack(stop)[:, None]), torch.zeros(2, 1, 10, kg.PARAMS))
    lp = model.log_joint(x[:1], z)
    assert lp[0, 0] > -1e5 and lp[1, 0] < -9e5


def test_one_seed_builds_the_same_model():
    a, b = tiny(3), tiny(3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_study_estimators_are_the_stated_ones():
    hmws, rws, mws = (study.estimator(a) for a in ("hmws", "rws", "mws"))
    assert hmws.settings() == {"k": 5, "continuous_k": 5, "memory_size": 5, "q_update": "both", "sleep_batch": 25, "memory_weighting": "posterior"}
    assert isinstance(rws, ws.RWS) and rws.k == 50 and rws.sleep_batch == 250 and rws.q_update == "both"
    assert mws.k == 45 and mws.memory_size == 5 and mws.sleep_batch == 25


def test_memory_weightings_weight_the_memory_as_stated():
    """Ours: ω_i = Σ_k v_ik (the memory's posterior, sums to 1); their get_cmws_5_loss:
    logsumexp_k v_ik, in [log K, log K + 1] for every held d; empty slots weigh nothing in both."""
    torch.manual_seed(0)
    log_w = torch.randn(5, 3, 4)  # [K, M', B]
    keep = torch.ones(3, 4, dtype=torch.bool)
    keep[2, 1] = False
    log_w[:, ~keep] = -torch.inf
    v = torch.softmax(log_w.flatten(0, 1), 0).view_as(log_w)
    ours = ws.HybridMemoisedWakeSleep().discrete_weights(v, keep)
    torch.testing.assert_close(ours, v.sum(0))
    torch.testing.assert_close(ours.sum(0), torch.ones(4))
    lse = study.estimator("hmws-lse").discrete_weights(v, keep)
    torch.testing.assert_close(lse[keep], torch.logsumexp(v, 0)[keep])
    assert lse[2, 1] == 0 and ((lse[keep] >= math.log(5)) & (lse[keep] <= math.log(5) + 1)).all()
    uniform = study.estimator("hmws-uniform").discrete_weights(v, keep)
    torch.testing.assert_close(uniform.sum(0), torch.ones(4))
    assert uniform[2, 1] == 0 and uniform[0, 1] == 0.5 and uniform[0, 0] == 1 / 3
    settings = [study.estimator(a).settings() for a in ("hmws", "hmws-lse", "hmws-uniform")]
    assert [s.pop("memory_weighting") for s in settings] == ["posterior", "authors", "uniform"]
    assert settings[0] == settings[1] == settings[2]


@pytest.mark.parametrize(
    "est",
    [
        ws.HybridMemoisedWakeSleep(k=2, continuous_k=2, memory_size=2, sleep_batch=4),
        ws.RWS(k=4, sleep_batch=4),
        ws.estimators.MemoisedWakeSleep(k=4, memory_size=2, sleep_batch=4),
        ws.HybridMemoisedWakeSleep(k=2, continuous_k=2, memory_size=2, sleep_batch=4, memory_weighting="authors"),
    ],
    ids=["hmws", "rws", "mws", "hmws-lse"],
)
def test_a_training_epoch_runs(est):
    model = tiny()
    _, x = model.sample(10)
    before = [p.detach().clone() for p in model.parameters()]
    ws.train(model, est, x, None, epochs=1, batch_size=5, lr_p=1e-3, lr_q=1e-3, progress=False, seed=0)
    assert any(not torch.equal(p, q) for p, q in zip(before, model.parameters()))
    if est.name == "hmws":
        assert est.memory_filled.any()


def test_study_report_without_their_checkout(tmp_path):
    def rec(source, alg, seed, values, seconds):
        records = [
            {"iteration": 10 * i, "train_cpu_seconds": s, "log_p": v, "eval_cpu_seconds": 0.1} for i, (v, s) in enumerate(zip(values, seconds))
        ]
        return {
            "source": source,
            "algorithm": alg,
            "seed": seed,
            "iterations": 10 * (len(values) - 1),
            "records": records,
            "init_cpu_seconds": 1.0,
            "sleep_pretraining_cpu_seconds": 2.0,
            "cpu_seconds": 9.0,
        }

    runs = {
        ("ours", "hmws"): [rec("ours", "hmws", s, [0, 10 + s, 20 + s], [0, 5, 10]) for s in (1, 2)],
        ("ours", "rws"): [rec("ours", "rws", s, [0, 5], [0, 20]) for s in (1, 2)],
    }
    rows = study.summarise(runs)
    assert [(r["source"], r["algorithm"]) for r in rows] == [("ours", "hmws"), ("ours", "rws")]
    assert rows[0]["log_p"] == pytest.approx(21.5) and rows[0]["pretraining_cpu_seconds"] == 3.0
    assert study.at_seconds(runs[("ours", "rws")][0], 10.0) == pytest.approx(2.5)
    (claim,) = study.claims(runs)  # at 10 CPU-seconds (the shorter run's end): HMWS 21 and 22 against RWS 2.5
    assert claim["verdict"] == "held" and claim["difference"] == pytest.approx(19.0) and claim["se"] == pytest.approx(0.5)
    runs[("ours", "hmws")][1]["records"][-1]["log_p"] = -30.0  # differences 18.5 and −32.5: within twice their s.e.
    assert study.claims(runs)[0]["verdict"] == "open"
    assert "| ours | HMWS | 2 | 20 |" in study.markdown(rows)
    assert study.figure(runs, tmp_path / "f.png").exists()


def test_their_runner_refuses_a_wrong_path(tmp_path):
    with pytest.raises(SystemExit, match="not a checkout of tuananhle7/hmws"):
        theirs.load_hmws(tmp_path)
    assert theirs.ALGORITHMS == {"hmws": "cmws_5", "rws": "rws"}


@pytest.mark.skipif(not os.environ.get("HMWS"), reason="set HMWS to a checkout of tuananhle7/hmws")
def test_their_model_and_ours_agree():
    """With HMWS=PATH: one seed gives their modules and ours the same parameters, and their
    densities equal ours on their guide's draws (experiments/hmws_timeseries.py --check)."""
    result = study.check(os.environ["HMWS"])
    assert result["same_initial_parameters"]
    assert result["log_joint"] < 1e-3 and result["log_proposal"] < 1e-3 and result["log_proposal_discrete"] < 1e-3
