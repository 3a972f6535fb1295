"""Memoised wake-sleep (Hewitt, Le & Tenenbaum 2020; ALGORITHMS.md §8) against exact answers, by
enumeration, on a small SBN (:func:`wakesleep.models.exact.sbn_reference`) and the Gaussian mixture
of ``examples/gmm.py``:

- with every latent state in the memory, its θ-update is ∇θ log p(x) exactly (no noise: a sum over
  all states); with fewer, it is the gradient of its own objective log Σ_{z∈memory} p(x, z),
  recomputed here from the memory's contents;
- the memory holds the M distinct states of highest log p(x, z) among all proposed so far;
- its φ-update: the memory part Σ ŵ ∇φ log q (exact given the memory), the sleep part unbiased for
  E_{p(z,x)}∇φ log q (per-coordinate z-scores under a Bonferroni t-bound, family-wise 0.1%);
- training, resume (metrics and memory bit for bit), the command line and diagnose.

Everything in float64 except the runs on the digits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from exactness import grads, z_scores
from scipy.stats import t as student_t

from wakesleep.cli import main
from wakesleep.data import digits
from wakesleep.estimators import ESTIMATORS, MemoisedWakeSleep
from wakesleep.evaluate import exact_log_marginal
from wakesleep.lab import diagnostics
from wakesleep.lab.compare import load_config, run_compare
from wakesleep.models import HelmholtzMachine
from wakesleep.models.exact import enumerated_log_joint, exact_sleep_phi_target, exact_theta_grad, sbn_reference
from wakesleep.plots import read_jsonl
from wakesleep.runs import CHECKPOINT, METRICS
from wakesleep.training import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import gmm  # noqa: E402


def case(name):
    if name == "sbn":
        return sbn_reference(data_dim=8, latents=3, batch=4)  # 8 latent states
    torch.manual_seed(6)
    return gmm.HandWrittenMixture().double(), gmm.make_data(4, seed=6).double()  # 20 states


def with_memory(model, x, **settings):
    """An estimator with an empty memory for the rows of x, and those rows' indices."""
    est = MemoisedWakeSleep(**settings)
    est.prepare(model, x)
    return est, torch.arange(x.shape[0])


def held(est, index):
    """The memory of rows ``index``: leaf 0 [M, B, …] and filled [M, B]."""
    return est.memory_z0[index].transpose(0, 1), est.memory_filled[index].T


def own_objective_grads(model, x, est, index):
    """∇θ and ∇φ of mean_b Σ_{z∈memory} sg(ŵ) log p(x, z), resp. log q(z | x), ŵ ∝ p(x, z) over the
    memory, written here from the memory's contents, one datapoint at a time."""
    theta, phi = 0.0, 0.0
    z_all, filled = held(est, index)
    for b in range(x.shape[0]):
        z = z_all[filled[:, b], b]  # [M_b, …], the values held for datapoint b
        zb = [z[:, None]] if isinstance(model, HelmholtzMachine) else z[:, None]  # [M_b, 1, …] in the model's pytree
        log_p = model.log_joint(x[b : b + 1], zb)[:, 0]
        w = torch.softmax(log_p.detach(), 0)
        theta = theta + (w * log_p).sum() / x.shape[0]
        phi = phi + (w * model.log_proposal(x[b : b + 1], zb)[:, 0]).sum() / x.shape[0]
    return grads(model.p_parameters(), theta), grads(model.q_parameters(), phi)


def update(model, x, est, index):
    """One call's ascent directions (θ, φ) and its metrics."""
    out = est(model, x, index=index)
    return grads(model.p_parameters(), -out.loss), grads(model.q_parameters(), -out.loss), out.metrics


# ------------------------------------------------------------------ θ


@pytest.mark.parametrize("name", ["sbn", "mixture"])
def test_a_memory_of_every_state_gives_the_exact_likelihood_gradient(name):
    """Filled by the estimator's own proposals until it holds every state, the memory's θ-update is
    Σ_z p(z | x) ∇θ log p(x, z) = ∇θ log p(x) to float64 rounding, whatever is proposed next."""
    model, x = case(name)
    states = enumerated_log_joint(model, x)[1].shape[0]
    est, index = with_memory(model, x, k=states, memory_size=states, q_update="wake")
    torch.manual_seed(1)
    for _ in range(200):
        if bool(est.memory_filled.all()):
            break
        update(model, x, est, index)
    assert bool(est.memory_filled.all()), "the proposals never covered every state"
    target = exact_theta_grad(model, x)
    for _ in range(3):
        theta, _, metrics = update(model, x, est, index)
        torch.testing.assert_close(theta, target, rtol=1e-10, atol=1e-12)
        assert metrics["objective"].item() == pytest.approx(exact_log_marginal(model, x).mean().item(), abs=1e-10)


@pytest.mark.parametrize("name", ["sbn", "mixture"])
def test_a_small_memory_gives_the_gradient_of_its_own_objective(name):
    model, x = case(name)
    est, index = with_memory(model, x, k=2, memory_size=3, q_update="wake")
    torch.manual_seed(2)
    for _ in range(5):
        theta, phi, _ = update(model, x, est, index)
        g_theta, g_phi = own_objective_grads(model, x, est, index)  # the memory after the call is the one it used
        torch.testing.assert_close(theta, g_theta, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(phi, g_phi, rtol=1e-10, atol=1e-12)
    assert bool(est.memory_filled.all())
    assert not torch.allclose(theta, exact_theta_grad(model, x))  # 3 of 8 states: not the likelihood gradient


# ------------------------------------------------------------------ the memory


def test_the_memory_holds_the_best_distinct_states_proposed_so_far():
    """A brute-force record of every proposal: after each step each datapoint's memory is exactly the
    set of the M distinct proposed states of highest log p(x, z) (θ fixed), no state twice."""
    model, x = sbn_reference(data_dim=8, latents=4, batch=4)  # 16 states
    m = 5
    est, index = with_memory(model, x, k=3, memory_size=m, q_update="wake")
    proposed = []
    propose = model.propose

    def recording(xb, k):
        z, log_q = propose(xb, k)
        proposed.append(z[0])
        return z, log_q

    model.propose = recording
    torch.manual_seed(3)
    for _ in range(8):
        est(model, x, index=index)
        z_mem, filled = held(est, index)
        seen = torch.cat(proposed)  # [steps·K, B, d]
        for b in range(x.shape[0]):
            distinct = torch.unique(seen[:, b], dim=0)  # [U, d]
            with torch.no_grad():
                log_p = model.log_joint(x[b : b + 1], [distinct[:, None]])[:, 0]
            best = {tuple(z.tolist()) for z in distinct[log_p.argsort(descending=True)[:m]]}
            kept = [tuple(z.tolist()) for z in z_mem[filled[:, b], b]]
            assert len(kept) == len(set(kept)) == min(m, len(distinct))
            assert set(kept) == best


def test_prepare_allocates_the_memory_as_buffers_and_calls_without_index_keep_nothing():
    model, x = case("mixture")
    est = MemoisedWakeSleep(k=4, memory_size=6)
    out = est(model, x)  # no memory: the call's own proposals
    assert torch.isfinite(out.loss) and est.state_dict() == {} and out.metrics["memory_filled"].item() <= 4
    with pytest.raises(ValueError, match="prepare"):
        est(model, x, index=torch.arange(4))
    est.prepare(model, x)
    sd = est.state_dict()
    assert sd["memory_z0"].shape == (4, 6) and sd["memory_z0"].dtype == torch.long and sd["memory_filled"].shape == (4, 6)
    assert not sd["memory_filled"].any()


def test_settings_are_checked_and_registered():
    assert ESTIMATORS["mws"] is MemoisedWakeSleep and MemoisedWakeSleep.needs_index
    est = MemoisedWakeSleep(k=3, memory_size=7, q_update="sleep")
    assert MemoisedWakeSleep(**est.settings()).settings() == est.settings()
    for bad in (dict(k=0), dict(memory_size=0), dict(q_update="memory")):
        with pytest.raises(ValueError):
            MemoisedWakeSleep(**bad)
    model, _ = case("sbn")
    assert "sample" not in MemoisedWakeSleep(q_update="wake").requires(model) and "sample" in est.requires(model)


# ------------------------------------------------------------------ φ


def test_phi_update_is_the_memory_part_plus_an_unbiased_sleep_part():
    """q_update="both": φ-update = ½ Σ_{memory} ŵ ∇φ log q (computed by hand from the memory) + ½ a
    sleep-phase estimate, whose mean over repeats is E_{p(z,x)}∇φ log q(z | x) (exact, enumerated)."""
    model, x = case("sbn")
    est, index = with_memory(model, x, k=2, memory_size=3, q_update="both", sleep_batch=100)
    target = exact_sleep_phi_target(model)
    torch.manual_seed(4)
    sleep = []
    for _ in range(300):
        _, phi, _ = update(model, x, est, index)
        memory_part = own_objective_grads(model, x, est, index)[1]
        sleep.append(2 * (phi - 0.5 * memory_part))
    sleep = torch.stack(sleep)
    bound = float(student_t.ppf(1 - 1e-3 / (2 * sleep.shape[1]), sleep.shape[0] - 1))
    assert z_scores(sleep, target).abs().max().item() < bound


# ------------------------------------------------------------------ training


def test_training_on_the_mixture_improves_it():
    torch.manual_seed(20)
    model = gmm.HandWrittenMixture()
    data, test = gmm.make_data(1000, seed=1), gmm.make_data(500, seed=2)
    with torch.no_grad():
        before = exact_log_marginal(model, test).mean().item()
        pi_before = (gmm.learned_probs(model) - gmm.true_probs()).abs().sum().item()
    train(model, MemoisedWakeSleep(k=5, memory_size=5), data, None, epochs=2, batch_size=50, lr_p=1e-2, lr_q=3e-2, progress=False)
    with torch.no_grad():
        after = exact_log_marginal(model, test).mean().item()
        pi_after = (gmm.learned_probs(model) - gmm.true_probs()).abs().sum().item()
    assert after > before and pi_after < pi_before, (before, after, pi_before, pi_after)  # exact: no evaluation noise


def test_resume_restores_the_memory_and_reproduces_the_uninterrupted_run(tmp_path):
    data = digits()
    cfg = dict(batch_size=100, lr_p=3e-3, lr_q=3e-3, progress=False, valid_k=5, seed=3, patience=None)

    def run(epochs, where, resume=False, seed=1):
        torch.manual_seed(seed)
        model = HelmholtzMachine.sbn([64, 8])
        torch.manual_seed(7 if not resume else 12345)  # a resumed run starts from another RNG state
        train(model, MemoisedWakeSleep(k=3, memory_size=4), data.train[:400], data.valid[:50], epochs=epochs, run_dir=where, resume=resume, **cfg)

    run(4, tmp_path / "a")
    run(2, tmp_path / "b")
    run(4, tmp_path / "b", resume=True, seed=99)
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    assert set(a["estimator"]) == {"memory_filled", "memory_z0"} and a["estimator"]["memory_filled"].shape == (400, 4)
    assert a["estimator"]["memory_filled"].all()
    for part in ("model", "estimator"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    recs = read_jsonl(tmp_path / "b" / METRICS)
    ref = read_jsonl(tmp_path / "a" / METRICS)
    assert [{k: v for k, v in r.items() if k != "time"} for r in recs] == [{k: v for k, v in r.items() if k != "time"} for r in ref]


def test_command_line_trains_evaluates_and_diagnoses(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--dataset", "digits", "--layers", "10", "--test-k", "20", "--valid-k", "5", "--no-progress", "--run-dir", str(run)]
    assert main(["train", "--algorithm", "mws", "--k", "5", "--memory-size", "5", "--epochs", "1", *common]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["algorithm"] == "mws" and config["estimator"]["memory_size"] == 5 and config["estimator"]["k"] == 5
    assert main(["evaluate", str(run), "--k", "10", "--no-progress"]) == 0
    assert "test log-likelihood:" in capsys.readouterr().out
    assert main(["train", "--algorithm", "mws", "--epochs", "2", "--resume", *common]) == 0
    assert [r["epoch"] for r in read_jsonl(run / METRICS)] == [1, 2]
    assert main(["train", "--algorithm", "mws", "--memory-size", "6", "--epochs", "3", "--resume", *common]) == 2  # defines the run
    # diagnose: without training indices, each call's memory is the top M of its own K proposals
    model, x = sbn_reference(data_dim=8, latents=3, batch=4)
    rows = diagnostics.diagnose(model, x, ["mws:k=5,memory_size=3"], repeats=20, seed=0, progress=False)
    assert {r["target"] for r in rows} == {"theta", "phi-both"} and all(r["algorithm"] == "mws" for r in rows)
    assert main(["diagnose", "--reference", "sbn", "--estimator", "mws:k=5", "--repeats", "3", "--out", str(tmp_path), "--no-progress"]) == 0
    assert "mws(k=5)" in capsys.readouterr().out


def test_compare_runs_mws_from_its_toml(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        'name = "mws"\nseeds = [0]\nthreads = 1\n[data]\ndataset = "digits"\n[model]\nkind = "sbn"\nlayers = [8]\n'
        '[train]\nepochs = 1\nbatch_size = 100\nvalid_k = 5\nclock = "process"\n[evaluate]\ntest_k = 10\ntest_n = 20\nvalid_n = 20\n'
        '[[estimators]]\nlabel = "MWS"\nalgorithm = "mws"\nsettings = { k = 5, memory_size = 10 }\n'
    )
    run_compare(load_config(toml), tmp_path / "out", progress=False)
    recorded = json.loads((tmp_path / "out" / "MWS" / "seed0" / "config.json").read_text())
    assert recorded["algorithm"] == "mws" and recorded["estimator"]["memory_size"] == 10


# ------------------------------------------------------------------ two processes


def _distributed_worker(rank: int, store: str, run_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        g = torch.Generator().manual_seed(2)
        data = (torch.rand(60, 16, generator=g, dtype=torch.float64) < 0.4).double()
        torch.manual_seed(0)
        est = MemoisedWakeSleep(k=2, memory_size=3)
        train(HelmholtzMachine.sbn([16, 4]).double(), est, data[:51], data[51:], run_dir=run_dir, epochs=2, batch_size=10, valid_k=3, progress=False)
        torch.save({k: v.clone() for k, v in est.state_dict().items()}, f"{out}{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_share_one_memory_and_rank_0_saves_it(tmp_path):
    """Each rank updates its own minibatch's rows, then the ranks exchange them: both hold the same
    memory for every datapoint (those of the other rank's shard included), and the checkpoint has it.
    51 rows: the shards are padded to 26 each, and each epoch ends on a batch of one."""
    mp.start_processes(
        _distributed_worker, args=(str(tmp_path / "store"), str(tmp_path / "run"), str(tmp_path / "memory")), nprocs=2, start_method="fork"
    )
    ranks = [torch.load(tmp_path / f"memory{r}.pt", weights_only=True) for r in range(2)]
    saved = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["estimator"]
    assert ranks[0]["memory_filled"].any(1).all()  # every datapoint was on some rank (a few may have < M distinct values yet)
    for key in saved:
        assert torch.equal(ranks[0][key], ranks[1][key]) and torch.equal(ranks[0][key], saved[key]), key


def test_the_q_gradient_spread_is_refused_for_mws_before_the_first_step():
    model, x = sbn_reference(data_dim=8, latents=3, batch=4)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="per-datapoint state"):
        train(model, MemoisedWakeSleep(k=2, memory_size=2), x, x, epochs=1, q_grad_std_repeats=2, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no step was taken
