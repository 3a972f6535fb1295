"""Hybrid memoised wake-sleep (Le et al., ICLR 2022) against exact answers on the mixture of
linear-Gaussian regressions of ``examples/regression_mixture.py``: four discrete values, and given
each a conjugate continuous part, so that p(d, x), p(x), ∇θ log p(x) and p(c | d, x) are closed forms.

- the memory's marginal estimate p̂(d, x) = (1/K) Σ_k p(d, c_k, x) / q(c_k | d, x) is unbiased for
  p(d, x) (z-scores under a Bonferroni t-bound, family-wise 0.1%), its spread falls as 1/K, and with
  q(c | d, x) the exact posterior it is exact;
- the memory holds the M discrete values of highest marginal; the objective is log Σ_{d∈memory} p(d, x),
  reaching log p(x) at M = D;
- θ's update is unbiased for ∇θ log Σ_{d∈memory} p(d, x) when the continuous weights are exact, and its
  bias (self-normalised over K particles) falls to the noise as K grows; q(d | x)'s update is the
  memory's posterior's, exactly;
- training, resume (metrics and memory bit for bit), the command line, the contract's checks.

Everything in float64 except the command-line run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from exactness import assert_unbiased, bias_norm_band, grads, max_z

from wakesleep.cli import main
from wakesleep.estimators import ESTIMATORS, HybridMemoisedWakeSleep
from wakesleep.models import ModelContractError, ModelShapeError
from wakesleep.models.contract import HYBRID, check_model, check_shapes, has_hybrid_proposal
from wakesleep.plots import read_jsonl
from wakesleep.runs import CHECKPOINT, METRICS
from wakesleep.training import train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
import gmm  # noqa: E402
import regression_mixture as rm  # noqa: E402

D = rm.COMPONENTS


def case(exact_q: bool, b: int = 4):
    """The float64 model (its own θ, not the data's) and b datapoints; q(c | d, x) exact, or the exact
    posterior shifted by 0.3 and broadened by e^0.3 (finite-variance weights, not exact ones)."""
    torch.manual_seed(5)
    model = rm.RegressionMixture(seed=1).double()
    model.use_exact_continuous_proposal()
    if not exact_q:
        with torch.no_grad():
            model.q_shifts.add_(0.3)
            model.q_scales.diagonal(dim1=-2, dim2=-1).add_(0.3)
    return model, rm.make_data(b, seed=3).double()


def with_memory(model, x, **settings):
    est = HybridMemoisedWakeSleep(**settings)
    est.prepare(model, x)
    return est, torch.arange(x.shape[0])


def fill(model, x, est, index, steps=200):
    for _ in range(steps):
        if bool(est.memory_filled.all()):
            return
        est(model, x, index=index)
    raise AssertionError("the proposals never filled the memory")


def held_sets(est, index):
    return [set(est.memory_z0[i][est.memory_filled[i]].tolist()) for i in index.tolist()]


def discrete_params(model):
    return list(model.discrete_net.parameters())


# ------------------------------------------------------------------ the marginal estimate


def test_the_marginal_estimate_is_unbiased_and_tightens_as_k_grows():
    model, x = case(exact_q=False)
    d = torch.arange(D)[:, None].expand(D, x.shape[0])  # every discrete value, [D, B]
    exact = model.exact_log_joint_discrete(x).detach()
    spread = {}
    torch.manual_seed(0)
    for k in (4, 64):
        est = HybridMemoisedWakeSleep(continuous_k=k)
        with torch.no_grad():
            log_p_hat = torch.stack([est.marginal_scores(model, x, d)[2] for _ in range(400)])  # [R, D, B]
        assert_unbiased((log_p_hat - exact).exp().flatten(1), torch.ones(D * x.shape[0], dtype=torch.float64), f"K={k}")
        spread[k] = log_p_hat.var(0).mean().item()
    assert spread[4] / spread[64] > 8, spread  # ~16 for a variance falling as 1/K
    # with the exact posterior as q(c | d, x) every weight is p(d, x): no noise at all
    model, x = case(exact_q=True)
    with torch.no_grad():
        log_p_hat = HybridMemoisedWakeSleep(continuous_k=3).marginal_scores(model, x, d)[2]
    torch.testing.assert_close(log_p_hat, model.exact_log_joint_discrete(x).detach(), rtol=0, atol=1e-10)


# ------------------------------------------------------------------ the memory and θ


def test_the_memory_keeps_the_best_discrete_values_and_its_objective_grows_to_log_p_x_with_m():
    model, x = case(exact_q=True)
    exact = model.exact_log_joint_discrete(x).detach()  # [D, B]
    for m in range(1, D + 1):
        est, index = with_memory(model, x, k=3, continuous_k=2, memory_size=m, q_update="wake")
        torch.manual_seed(m)
        for _ in range(40):  # 120 proposals per datapoint: every value proposed w.h.p.
            out = est(model, x, index=index)
        best = exact.topk(m, 0).indices  # [M, B]
        assert held_sets(est, index) == [set(best[:, b].tolist()) for b in range(x.shape[0])]
        target = torch.logsumexp(exact.gather(0, best), 0).mean().item()
        assert out.metrics["objective"].item() == pytest.approx(target, abs=1e-10)
    assert target == pytest.approx(model.exact_log_marginal(x).mean().item(), abs=1e-10)  # M = D: log p(x)


@pytest.mark.parametrize("m", [2, D])
def test_with_exact_continuous_weights_theta_is_unbiased_for_its_memory_objective_and_q_d_exact(m):
    """q(c | d, x) exact: θ's update is unbiased for ∇θ log Σ_{d∈memory} p(d, x) (∇θ log p(x) at M = D),
    and q(d | x)'s is Σ_{d∈memory} ω(d) ∇φ log q(d | x), ω the memory's exact posterior, to rounding."""
    model, x = case(exact_q=True)
    xr = x.repeat(25, 1)  # 100 rows, each with its own memory: one call averages 25 estimates per datapoint
    est, index = with_memory(model, xr, k=3, continuous_k=2, memory_size=m, q_update="wake")
    torch.manual_seed(7)
    for _ in range(40):
        est(model, xr, index=index)
    best = model.exact_log_joint_discrete(xr).topk(m, 0).indices  # [M, B]
    assert held_sets(est, index) == [set(best[:, b].tolist()) for b in range(xr.shape[0])]
    log_joint = model.exact_log_joint_discrete(xr).gather(0, best)  # [M, B], ∇θ
    theta_target = grads(model.p_parameters(), torch.logsumexp(log_joint, 0).mean())
    omega = torch.softmax(log_joint.detach(), 0)
    q_d_target = grads(discrete_params(model), (omega * model.log_proposal_discrete(xr, best)).sum(0).mean())
    thetas = []
    for _ in range(40):
        out = est(model, xr, index=index)
        thetas.append(grads(model.p_parameters(), -out.loss))
        torch.testing.assert_close(grads(discrete_params(model), -out.loss), q_d_target, rtol=1e-9, atol=1e-12)
    assert_unbiased(torch.stack(thetas), theta_target, f"M={m}")


def test_theta_bias_from_an_inexact_continuous_proposal_falls_to_the_noise_as_k_grows():
    """Every discrete value held; q(c | d, x) not exact: θ's update is self-normalised over the K
    continuous particles, biased for finite K, and its mean reaches ∇θ log p(x) as K grows."""
    model, x = case(exact_q=False)
    xr = x.repeat(10, 1)
    target = grads(model.p_parameters(), model.exact_log_marginal(xr).mean())
    bands = {}
    for k in (1, 1000):
        est, index = with_memory(model, xr, k=D, continuous_k=k, memory_size=D, q_update="wake")
        torch.manual_seed(k)
        fill(model, xr, est, index)
        thetas = torch.stack([grads(model.p_parameters(), -est(model, xr, index=index).loss) for _ in range(60)])
        bands[k] = bias_norm_band(thetas, target)
        if k == 1000:
            z, bound = max_z(thetas, target)
            assert z < bound, (z, bound, bands)
    bias_small_k, noise_small_k = bands[1]
    assert bias_small_k > 5 * noise_small_k and bands[1000][0] < 3 * bands[1000][1], bands  # O(1/K): 5.8 at K = 1, 0.06 at K = 100


def continuous_params(model):
    return [model.q_maps, model.q_shifts, model.q_scales]


def test_the_continuous_proposal_update_reaches_the_memory_average_of_exact_cross_entropy_gradients():
    """Every discrete value held, q(c | d, x) not exact: q(c | d, x)'s update, RWS's wake-φ for each
    held d averaged over the memory, reaches (1/M) Σ_{d∈memory} ∇φ E_{p(c | d, x)} log q(c | d, x)
    (a Gaussian cross-entropy in closed form) as K grows."""
    model, x = case(exact_q=False)
    xr = x.repeat(10, 1)
    exact = rm.RegressionMixture(seed=1).double()
    exact.load_state_dict(model.state_dict())
    exact.use_exact_continuous_proposal()
    d = torch.arange(D)[:, None].expand(D, xr.shape[0])
    with torch.no_grad():
        post = exact._continuous(xr, d)  # p(c | d, x), batch [D, B]
    q = model._continuous(xr, d)
    prec = torch.cholesky_inverse(q.scale_tril)  # Σ_q⁻¹
    diff = (post.loc - q.loc)[..., None]
    cross = -0.5 * ((prec * post.covariance_matrix).sum((-1, -2)) + (diff.transpose(-1, -2) @ prec @ diff)[..., 0, 0])
    cross = cross - q.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # E_p log q up to a constant, [D, B]
    target = grads(continuous_params(model), cross.mean(0).mean())
    est, index = with_memory(model, xr, k=D, continuous_k=1000, memory_size=D, q_update="wake")
    torch.manual_seed(11)
    fill(model, xr, est, index)
    phis = torch.stack([grads(continuous_params(model), -est(model, xr, index=index).loss) for _ in range(60)])
    assert_unbiased(phis, target, "q(c | d, x)")


# ------------------------------------------------------------------ training, resume, command line


def test_training_improves_the_exact_likelihood():
    model = rm.mixture()
    data, test = rm.make_data(600, seed=0), rm.make_data(300, seed=2)
    with torch.no_grad():
        before = model.exact_log_marginal(test).mean().item()
    train(
        model, HybridMemoisedWakeSleep(k=3, continuous_k=5, memory_size=3), data, None, epochs=4, batch_size=50, lr_p=1e-2, lr_q=1e-2, progress=False
    )
    with torch.no_grad():
        after = model.exact_log_marginal(test).mean().item()
    assert after > before + 1.0, (before, after)  # exact: no evaluation noise


def test_resume_restores_the_memory_and_reproduces_the_uninterrupted_run(tmp_path):
    data, valid = rm.make_data(200, seed=0), rm.make_data(40, seed=1)
    cfg = dict(batch_size=50, lr_p=3e-3, lr_q=3e-3, progress=False, valid_k=5, seed=3, patience=None)

    def run(epochs, where, resume=False):
        model = rm.mixture()
        torch.manual_seed(7 if not resume else 12345)  # a resumed run starts from another RNG state
        train(model, HybridMemoisedWakeSleep(k=2, continuous_k=3, memory_size=2), data, valid, epochs=epochs, run_dir=where, resume=resume, **cfg)

    run(4, tmp_path / "a")
    run(2, tmp_path / "b")
    run(4, tmp_path / "b", resume=True)
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    assert set(a["estimator"]) == {"memory_filled", "memory_z0"} and a["estimator"]["memory_z0"].shape == (200, 2)
    assert a["estimator"]["memory_filled"].any(1).all()
    for part in ("model", "estimator"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    strip = lambda recs: [{k: v for k, v in r.items() if k != "time"} for r in recs]  # noqa: E731
    assert strip(read_jsonl(tmp_path / "b" / METRICS)) == strip(read_jsonl(tmp_path / "a" / METRICS))


def test_command_line_trains_the_example_and_resumes(tmp_path, capsys):
    npz = tmp_path / "data.npz"
    np.savez(npz, train=rm.make_data(120, 0).numpy(), valid=rm.make_data(30, 1).numpy(), test=rm.make_data(30, 2).numpy())
    run = tmp_path / "run"
    common = ["--model", f"{EXAMPLES / 'regression_mixture.py'}:mixture", "--dataset", str(npz), "--batch-size", "30"]
    common += ["--test-k", "10", "--valid-k", "5", "--no-progress", "--run-dir", str(run)]
    hmws = ["--algorithm", "hmws", "--k", "3", "--continuous-k", "4", "--memory-size", "2", "--memory-weighting", "uniform"]
    assert main(["train", *hmws, "--epochs", "1", *common]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["algorithm"] == "hmws" and config["estimator"]["continuous_k"] == 4 and config["estimator"]["memory_size"] == 2
    assert config["estimator"]["memory_weighting"] == "uniform"
    assert main(["train", "--algorithm", "hmws", "--epochs", "2", "--resume", *common]) == 0
    assert [r["epoch"] for r in read_jsonl(run / METRICS)] == [1, 2]
    assert main(["train", "--algorithm", "hmws", "--continuous-k", "9", "--epochs", "3", "--resume", *common]) == 2  # defines the run
    assert "continuous-k" in capsys.readouterr().err
    assert main(["train", "--algorithm", "hmws", "--memory-weighting", "authors", "--epochs", "3", "--resume", *common]) == 2
    assert "memory-weighting" in capsys.readouterr().err


def _distributed_worker(rank: int, store: str, run_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        data = rm.make_data(60, seed=4).double()
        torch.manual_seed(0)
        est = HybridMemoisedWakeSleep(k=2, continuous_k=3, memory_size=2)
        model = rm.RegressionMixture(seed=0).double()
        train(model, est, data[:51], data[51:], run_dir=run_dir, epochs=2, batch_size=10, valid_k=3, progress=False)
        torch.save({k: v.clone() for k, v in est.state_dict().items()}, f"{out}{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_share_one_memory_and_rank_0_saves_it(tmp_path):
    """As MWS's (the same code): each rank updates its minibatch's rows, the ranks exchange them, both
    hold the same memory of discrete values and the checkpoint has it; 51 rows, shards padded to 26."""
    mp.start_processes(
        _distributed_worker, args=(str(tmp_path / "store"), str(tmp_path / "run"), str(tmp_path / "memory")), nprocs=2, start_method="fork"
    )
    ranks = [torch.load(tmp_path / f"memory{r}.pt", weights_only=True) for r in range(2)]
    saved = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["estimator"]
    assert ranks[0]["memory_filled"].any(1).all() and set(saved) == {"memory_filled", "memory_z0"}
    for key in saved:
        assert torch.equal(ranks[0][key], ranks[1][key]) and torch.equal(ranks[0][key], saved[key]), key


# ------------------------------------------------------------------ settings and the contract


def test_settings_are_checked_and_registered():
    assert ESTIMATORS["hmws"] is HybridMemoisedWakeSleep and HybridMemoisedWakeSleep.needs_index
    est = HybridMemoisedWakeSleep(k=3, continuous_k=7, memory_size=4, q_update="sleep", memory_weighting="authors")
    assert HybridMemoisedWakeSleep(**est.settings()).settings() == est.settings()
    for bad in (dict(k=0), dict(continuous_k=0), dict(memory_size=0), dict(q_update="memory"), dict(memory_weighting="max")):
        with pytest.raises(ValueError):
            HybridMemoisedWakeSleep(**bad)
    model, x = case(exact_q=True)
    assert "sample" not in HybridMemoisedWakeSleep(q_update="wake").requires(model) and "sample" in est.requires(model)
    with pytest.raises(ValueError, match="prepare"):
        HybridMemoisedWakeSleep()(model, x, index=torch.arange(4))
    out = HybridMemoisedWakeSleep(k=3, memory_size=2)(model, x)  # no memory: the call's own proposals, nothing kept
    assert torch.isfinite(out.loss) and out.metrics["memory_filled"].item() <= 2


def test_the_contract_names_the_missing_or_misshapen_hybrid_member():
    assert has_hybrid_proposal(case(exact_q=True)[0]) and not has_hybrid_proposal(gmm.HandWrittenMixture())
    est = HybridMemoisedWakeSleep()
    with pytest.raises(ModelContractError, match=r"propose_discrete.*propose_continuous.*--algorithm mws"):
        check_model(gmm.HandWrittenMixture(), est.requires(None), "HMWS", est.member_hints())
    model, x = case(exact_q=True)
    check_shapes(model, x, HYBRID + ("log_joint",))

    class Flat(rm.RegressionMixture):  # forgets the K in front of the discrete values' dimensions
        def propose_continuous(self, x, d, k):
            c, log_q = super().propose_continuous(x, d, k)
            return c[0], log_q[0]

    with pytest.raises(ModelShapeError, match="propose_continuous"):
        check_shapes(Flat().double(), x, HYBRID + ("log_joint",))


def test_the_kernel_timeseries_sketch_meets_the_contract_and_prints_its_key_lines(capsys):
    import kernel_timeseries as kt

    model, (x, _) = kt.kernels(), kt.make_data(6, seed=0)
    check_shapes(model, x, HybridMemoisedWakeSleep().requires(model) + ("propose",))
    out = kt.main(["--n", "20", "--epochs", "1"])
    assert set(out) >= {"hmws_test_log_likelihood", "rws_test_log_likelihood", "hmws_memory_best_is_true_expression"}
    assert all(np.isfinite(v) for v in out.values()) and 0.0 <= out["hmws_memory_best_is_true_expression"] <= 1.0
    assert "hmws_memory_best_is_true_expression: " in capsys.readouterr().out


def test_compare_runs_hmws_and_rws_on_the_example_from_its_toml(tmp_path):
    from wakesleep.lab.compare import load_config, run_compare

    npz = tmp_path / "data.npz"
    np.savez(npz, train=rm.make_data(100, 0).numpy(), valid=rm.make_data(20, 1).numpy(), test=rm.make_data(20, 2).numpy())
    toml = tmp_path / "c.toml"
    toml.write_text(
        f'name = "hmws"\nseeds = [0]\nthreads = 1\n[data]\ndataset = "{npz}"\n[model]\nspec = "{EXAMPLES / "regression_mixture.py"}:mixture"\n'
        '[train]\nepochs = 1\nbatch_size = 50\nvalid_k = 5\nclock = "process"\n[evaluate]\ntest_k = 10\ntest_n = 20\nvalid_n = 20\n'
        '[[estimators]]\nlabel = "HMWS"\nalgorithm = "hmws"\nsettings = { k = 3, continuous_k = 4, memory_size = 2 }\n'
        '[[estimators]]\nlabel = "RWS"\nalgorithm = "rws"\nsettings = { k = 24 }\n'
    )
    run_compare(load_config(toml), tmp_path / "out", progress=False)
    recorded = json.loads((tmp_path / "out" / "HMWS" / "seed0" / "config.json").read_text())
    assert recorded["algorithm"] == "hmws" and recorded["estimator"]["continuous_k"] == 4


def test_a_detached_continuous_proposal_is_refused_before_the_first_step():
    """φ as a whole gets a gradient from q(d | x); a detached log q(c | d, x) is still named."""

    class Detached(rm.RegressionMixture):
        def propose_continuous(self, x, d, k):
            c, log_q = super().propose_continuous(x, d, k)
            return c, log_q.detach()

    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"propose_continuous returned log q\(c \| d, x\) that does not depend"):
        train(
            Detached(seed=0),
            HybridMemoisedWakeSleep(k=2, continuous_k=2, memory_size=2, q_update="wake"),
            rm.make_data(60, 0),
            epochs=1,
            progress=False,
        )
