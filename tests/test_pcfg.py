"""The PCFGs of Le et al. (2019) as Pyro programs (``examples/pcfg.py``): a few training steps of
each grammar, the data sampler, the sleep phase's consistency, the study's metrics, and the
command line on a tiny data set."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pyro")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
import pcfg  # noqa: E402
from cli_helpers import run  # noqa: E402

import wakesleep as ws  # noqa: E402
from wakesleep.training import TrainConfig, build_optimizer, train_step  # noqa: E402


def short_sentences(n: int, seed: int = 0, width: int = 32, longest: int = 9) -> torch.Tensor:
    """n sentences of the true grammar with at most ``longest`` words, padded to ``width``."""
    x = pcfg.sample_data("astronomers", 8 * n, data_dim=width, seed=seed)
    keep = x[(x != pcfg.PAD).sum(1) <= longest][:n]
    assert len(keep) == n
    return keep


def test_edit_distance():
    assert pcfg.edit_distance([], [1, 2]) == 2
    assert pcfg.edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert pcfg.edit_distance([1, 2, 3], [1, 3]) == 1
    assert pcfg.edit_distance([0, 1, 2, 3], [1, 2, 4, 3, 5]) == 3


def test_sample_data_pads_and_repeats():
    x = pcfg.sample_data("astronomers", 20, data_dim=256, seed=3)
    assert x.shape == (20, 256) and x.dtype == torch.float32
    assert torch.equal(x, pcfg.sample_data("astronomers", 20, data_dim=256, seed=3))
    for row in x:
        words = pcfg.words_of(row)
        n = len(words)
        assert n >= 2 and (row[n:] == pcfg.PAD).all() and (row[:n] != pcfg.PAD).all()
        assert set(words) <= set(range(len(pcfg.ASTRONOMERS.terminals) + 1))
    vocab = sorted(pcfg.ASTRONOMERS.terminals)
    assert vocab[pcfg.words_of(x[0])[-1]] in {"astronomers", "ears", "saw", "stars", "telescopes"}  # a sentence ends on a noun
    curves = pcfg.sample_data("polynomial", 3, seed=0)
    assert curves.shape == (3, 100) and torch.isfinite(curves).all()


def test_astronomers_rws_steps_and_sleep_phase():
    torch.manual_seed(0)
    model = pcfg.astronomers(data_dim=32, max_depth=8)
    x = short_sentences(4)
    est = ws.RWS(k=3, q_update="wake")
    opt = build_optimizer(model, est, TrainConfig(lr_p=1e-2, lr_q=1e-2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for i in range(2):
        out, bad = train_step(model, est, opt, x[2 * i : 2 * i + 2])
        assert bad is None and torch.isfinite(out.loss)
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert {"generative.logits.NP", "generative.logits.VP", "recognition.gru.weight_ih", "recognition.embed.gru.weight_hh_l0"} <= moved, moved
    # z decodes to the tree's choices, site names from the tree's paths
    z, log_q = model.propose(x[:2], 2)
    assert log_q.shape == (2, 2)
    first = model.choices(z)[0][0]
    assert next(iter(first)) == "S" and all(name.split(".")[0] in pcfg.ASTRONOMERS.productions for name in first)
    # the sleep phase draws x as the tree's yield: the ABC likelihood of its own x is 0
    zs, xs = model.sample(5)
    assert xs.shape == (5, 32)
    torch.testing.assert_close(model.log_joint(xs, zs), model.log_prior(zs))


def test_wake_sleep_vimco_and_mws_steps():
    torch.manual_seed(1)
    model = pcfg.astronomers(data_dim=32, max_depth=6)
    x = short_sentences(2, seed=1)
    for est in (ws.RWS(k=2, q_update="sleep", sleep_batch=4), ws.estimators.VIMCO(k=2), ws.estimators.MemoisedWakeSleep(k=2, memory_size=3)):
        opt = build_optimizer(model, est, TrainConfig())
        est.prepare(model, x)
        out, bad = train_step(model, est, opt, x, index=torch.arange(2) if est.needs_index else None)
        assert bad is None, (est, bad)


def test_polynomial_rws_step():
    torch.manual_seed(0)
    model = pcfg.polynomial(max_depth=4)
    x = pcfg.sample_data("polynomial", 2, seed=0, max_depth=4)
    est = ws.RWS(k=2, q_update="wake")
    out, bad = train_step(model, est, build_optimizer(model, est, TrainConfig()), x)
    assert bad is None and torch.isfinite(out.loss)
    zs, xs = model.sample(2)
    torch.testing.assert_close(model.log_joint(xs, zs), model.log_prior(zs))  # −log(1 + 0)


def test_curve_image_and_polynomial_values():
    tree = ["E", ["E1", "x"], "*", ["N", "2"]]  # 2x
    torch.testing.assert_close(pcfg.polynomial_values(tree), 2 * pcfg.XS)
    img = pcfg.curve_image(2 * pcfg.XS)
    assert img.shape == (100, 100) and set(img.unique().tolist()) == {0.0, 1.0}
    assert (img[:, 0] == 0).nonzero().item() == 59 and (img[:, -1] == 0).nonzero().item() == 40  # y = −20 low, 20 high


def test_metrics_as_theirs():
    torch.manual_seed(0)
    model = pcfg.astronomers(data_dim=32, max_depth=6)
    model.metrics_samples = 10
    probs = pcfg.production_probs(model.generative)
    kl = {a: sum(t * np.log(t / q) for t, q in zip(p, probs[a].tolist())) for a, p in pcfg.ASTRONOMERS.true_probs.items()}
    m = model.metrics(torch.zeros(1, 32))
    assert m["p_error"] == pytest.approx(sum(kl.values()) / 6, rel=1e-5)
    assert m["q_error_to_true"] > 0 and m["q_error_to_model"] > 0
    with torch.no_grad():
        for a, p in pcfg.ASTRONOMERS.true_probs.items():
            model.generative.logits[a].copy_(torch.tensor(p).log())
    assert pcfg.p_error(model.generative) == pytest.approx(0.0, abs=1e-6)


def test_same_start_as_their_code_for_a_seed():
    """Their init order: production logits (randn, in the grammar's order), then the GRU embedder,
    the GRU cell and the heads; so the first draws of one seed are theirs."""
    torch.manual_seed(1)
    first = torch.randn(1)
    torch.manual_seed(1)
    model = pcfg.astronomers()
    assert model.generative.logits["S"].item() == first.item()
    torch.manual_seed(1)
    draws = {a: torch.randn(len(r)) for a, r in pcfg.ASTRONOMERS.productions.items()}
    for a, v in draws.items():
        assert torch.equal(model.generative.logits[a].detach(), v)


def train_cli(tmp_path, spec):
    data = tmp_path / "sentences.npz"
    sentences = short_sentences(8, seed=2).numpy()
    np.savez(data, train=sentences[:4], valid=sentences[4:6], test=sentences[6:])
    code, out, err = run(
        [
            *("train", "--model", spec, "--algorithm", "rws", "--k", "2", "--dataset", str(data), "--epochs", "1"),
            *("--batch-size", "2", "--valid-k", "2", "--test-k", "2", "--run-dir", str(tmp_path / "run"), "--no-progress"),
        ]
    )
    assert code == 0, err
    records = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "valid_p_error" in records and "valid_q_error_to_true" in records


def test_cli_trains_astronomers(tmp_path):
    """The documented command, ``wakesleep train --model examples/pcfg.py:astronomers --algorithm
    rws``, on 4 sentences (the CLI's picture draws 500 sleep samples)."""
    train_cli(tmp_path, f"{ROOT / 'examples' / 'pcfg.py'}:astronomers")


def test_rrws_runner_needs_their_checkout(tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    import rrws_pcfg

    with pytest.raises(FileNotFoundError, match="tuananhle7/rrws"):
        rrws_pcfg.load_rrws(tmp_path)
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = (rng.integers(0, 4, rng.integers(0, 8)).tolist() for _ in range(2))
        assert rrws_pcfg._edit_distance("".join(map(str, a)), "".join(map(str, b))) == pcfg.edit_distance(a, b)


def test_step_benchmark_without_their_code(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import pcfg_step

    out = pcfg_step.main(["--k", "2", "--steps", "1", "--chunk", "1"])
    printed = capsys.readouterr().out
    assert "their side skipped" in printed and "ours_seconds_per_step:" in printed
    assert "pcfg_step_vs_rrws" not in out and out["ours_seconds_per_step"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("RRWS"), reason="set RRWS to a checkout of tuananhle7/rrws")
def test_their_code_runs_and_starts_where_ours_does():
    """With RRWS=PATH: their training runs through rrws_pcfg.py, and for one seed their initial
    metrics are ours (same parameters, same draws)."""
    import os

    sys.path.insert(0, str(ROOT / "experiments"))
    import rrws_pcfg

    rec = rrws_pcfg.run(rrws_pcfg.load_rrws(os.environ["RRWS"]), "astronomers", "ww", k=2, seed=1, iterations=2, eval_interval=1)
    assert [r["iteration"] for r in rec["records"]] == [0, 1, 2]
    torch.manual_seed(1)
    np.random.seed(1)
    ours = pcfg.astronomers().metrics()
    for key, value in ours.items():
        assert rec["records"][0][key] == pytest.approx(value, rel=1e-5), key


def _record(source, alg, k, seed, values):
    """A run record with the study's keys: the metrics' trajectory ``values`` every 10 iterations."""
    recs = [{"iteration": 10 * i, "p_error": v, "q_error_to_true": 10 * v, "q_error_to_model": v} for i, v in enumerate(values)]
    return {"source": source, "algorithm": alg, "k": k, "seed": seed, "records": recs, "seconds_per_iteration": 0.1, "cpu_seconds": 1.0}


def test_study_summary_and_paired_verdicts():
    sys.path.insert(0, str(ROOT / "experiments"))
    import le2019_pcfg as study

    runs = {
        ("ours", "ww", 5): [_record("ours", "ww", 5, s, [1.0 + s, 0.5 + s, 0.4 + s, 0.3 + s]) for s in (1, 2)],
        ("ours", "vimco", 5): [_record("ours", "vimco", 5, s, [1.0 + s, 0.9 + s, 0.8 + s, 0.7 + s + 0.01 * s]) for s in (1, 2)],
        ("ours", "ww", 20): [_record("ours", "ww", 20, s, [1.0 + s, 0.6 + s, 0.5 + s, 0.4 + s + 0.02 * s]) for s in (1, 2)],
    }
    rows = study.summarise(runs)
    ww5 = next(r for r in rows if r["algorithm"] == "ww" and r["k"] == 5)
    assert ww5["p_error"] == pytest.approx(0.4 + 1.5) and ww5["seeds"] == 2 and ww5["iterations"] == 30
    verdicts = {(c["claim"], c["metric"]): c for c in study.claims(runs)}
    better = verdicts[("RWS better than vimco", "p_error")]  # the seeds differ by far more than the pairs do
    assert better["verdict"] == "held" and better["difference"] == pytest.approx(0.4 + 0.005, abs=1e-9)
    assert verdicts[("RWS improves from K=5 to K=20", "p_error")]["verdict"] == "contradicted"
    assert "| ours | RWS (wake-wake) | 5 | 2 | 30 |" in study.markdown(rows)


@pytest.mark.slow
def test_study_runs_end_to_end(tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    import le2019_pcfg as study

    out = study.main(
        ["--out", str(tmp_path), "--figure", str(tmp_path / "f.png"), "--iterations", "2", "--eval-interval", "1", "--ks", "2", "--seeds", "1"]
    )
    assert len(out["rows"]) == 5 and (tmp_path / "f.png").stat().st_size > 0 and (tmp_path / "summary.md").is_file()
