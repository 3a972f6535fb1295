"""experiments/rrws_gmm.py (Le et al.'s mixture, their code beside ours) without their checkout: the
refusal, their gradient-std normalisation, their θ-parametrisation and starts, their REINFORCE, our
side end to end at a tiny size, the report; and the streamed study's config
(experiments/le2019_gmm_stream.toml)."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import wakesleep as ws
from wakesleep.lab.compare import parse_config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import gmm  # noqa: E402
from cli_helpers import load_script  # noqa: E402


def _script():
    return load_script(ROOT / "experiments" / "rrws_gmm.py")


rrws = _script()


def test_refuses_without_their_checkout(tmp_path):
    with pytest.raises(SystemExit, match="not a checkout of tuananhle7/rrws"):
        rrws.main(["run", "--rrws", str(tmp_path), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit):  # --rrws is required
        rrws.main(["run"])


def test_their_gradient_std_is_the_summed_population_std_over_104():
    net = gmm.proposal_net()
    params = list(net.parameters())
    assert sum(p.shape[0] for p in params) == rrws.RRWS_GRAD_STD_DIVISOR == 104
    assert sum(p.numel() for p in params) == rrws.Q_ELEMENTS == 644
    torch.manual_seed(0)
    grads = [torch.randn(10, *p.shape, dtype=torch.float64) * (i + 1) for i, p in enumerate(params)]  # 10 repeats
    theirs = sum(g.std(0, correction=0).sum() for g in grads).item() / 104  # their util.OnlineMeanStd: 1/R, Σ / Σ len(p)
    ours = torch.cat([g.reshape(10, -1) for g in grads], 1).std(0).mean().item()  # wakesleep's gradient_std
    assert rrws.rrws_grad_std(ours, repeats=10) == pytest.approx(theirs, rel=1e-9)


def test_mixture_has_their_logit_scale_and_starts():
    far, near = rrws.RrwsMixture("far"), rrws.RrwsMixture("near")
    x = gmm.make_data(5)
    assert far.metrics(x)["pi_l2"] == pytest.approx(0.694, abs=1e-3)  # ALGORITHMS.md §9: their default start
    uniform = torch.full((20,), 0.05) - gmm.true_probs()
    assert near.metrics(x)["pi_l2"] == pytest.approx(uniform.norm().item(), rel=1e-5)
    c = torch.arange(20)[:, None].expand(20, 5)
    expected = torch.log_softmax(0.5 * far.prior.logits, 0)[c] + torch.distributions.Normal(10.0 * c, 5.0).log_prob(x[:, 0])
    assert torch.allclose(far.log_joint(x, c), expected, atol=1e-5)


def test_their_reinforce_moves_theta_as_vimco_does():
    # Both ascend ∇θ of the K-sample bound; with the same particles the θ-gradients agree, the φ ones differ.
    grads = []
    for est in (rrws.BoundReinforce(k=4), ws.VIMCO(k=4)):
        torch.manual_seed(1)
        model = rrws.RrwsMixture("near")
        torch.manual_seed(2)
        est(model, gmm.make_data(30)).loss.backward()
        grads.append((model.prior.logits.grad.clone(), model.proposal.net[-1].bias.grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert not torch.allclose(grads[0][1], grads[1][1])


def test_grid_and_our_side_end_to_end(tmp_path):
    g = rrws.grid()
    assert ("theirs", "dww", 20) in g and ("ours", "drws", 20) in g and ("ours", "reinforce-elbo", 2) in g
    assert sorted(k for s, n, k in g if (s, n) == ("ours", "vimco")) == [2, 5, 10, 20]
    assert sorted(k for s, n, k in g if (s, n) == ("theirs", "ws")) == [2, 20]
    res = rrws.run_ours("rws", 2, "far", seed=0, iterations=20, eval_every=10)
    assert res["steps"] == [10, 20] and all(v > 0 for v in res["grad_std"] + res["q_l2"])
    assert res["pi_l2"][-1] == pytest.approx(0.694, abs=0.01)  # far start: 20 steps barely move π
    records = [
        {"side": side, "estimator": "rws", "k": 2, "start": "far", "seed": s, "iterations": 20, **res} for side in ("theirs", "ours") for s in (1, 2)
    ]
    (tmp_path / "results.json").write_text(json.dumps(records))
    rows = rrws.summarise(records, at=10)
    assert [(r["side"], r["step"], r["seeds"]) for r in rows] == [("ours", 10, 2), ("theirs", 10, 2)]
    rrws.main(["report", "--out", str(tmp_path), "--figure", str(tmp_path / "fig.png")])
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one process per start, merged: each run once; the side-by-side table puts theirs beside ours
    other = tmp_path / "near"
    other.mkdir()
    (other / "results.json").write_text(json.dumps([{**r, "start": "near"} for r in records] + records[:1]))
    merged = tmp_path / "merged"
    rrws.main(["report", "--out", str(merged), "--merge", str(tmp_path), str(other), "--side-by-side", "--figure", str(tmp_path / "fig2.png")])
    assert len(json.loads((merged / "results.json").read_text())) == 8
    # theirs' π error doubled, so that a column put on the wrong side shows
    apart = [{**r, "pi_l2": [2 * v for v in r["pi_l2"]]} if r["side"] == "theirs" else r for r in records]
    table = rrws.side_by_side(apart, "far", at=10).splitlines()
    assert len(table) == 3 and table[2].startswith("| RWS | 2 | ")
    cells = [c.strip() for c in table[2].split("|")[3:-1]]
    by_side = {r["side"]: r for r in rrws.summarise(apart, at=10)}
    assert cells[0] == rrws._cell(by_side["theirs"]["pi_l2"]) != cells[1] == rrws._cell(by_side["ours"]["pi_l2"])
    assert cells[2] == cells[3] == rrws._cell(by_side["ours"]["q_l2"])  # q errors are the same records on both sides
    with pytest.raises(SystemExit, match="no results.json"):
        rrws.main(["report", "--out", str(merged), "--merge", str(tmp_path / "absent")])


def test_streamed_study_is_the_fixed_one_on_fresh_data():
    fixed = parse_config(tomllib.loads((ROOT / "experiments" / "le2019_gmm.toml").read_text()), "fixed")
    streamed = parse_config(tomllib.loads((ROOT / "experiments" / "le2019_gmm_stream.toml").read_text()), "stream")
    assert streamed.data_from.endswith("gmm.py:stream") and not streamed.dataset
    assert [(s.label, s.algorithm, s.settings) for s in streamed.estimators] == [(s.label, s.algorithm, s.settings) for s in fixed.estimators]
    assert streamed.seeds == fixed.seeds
    t = streamed.train_config(streamed.estimators[0], seed=0)
    assert (t.steps_per_epoch, t.epochs, t.batch_size, t.q_grad_std_repeats) == (100, 40, 100, 10)
    x = gmm.stream()(7, torch.Generator().manual_seed(0))
    assert x.shape == (7, 1) and torch.equal(x, gmm.stream()(7, torch.Generator().manual_seed(0)))
