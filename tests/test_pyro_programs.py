"""The per-particle Pyro path (``from_pyro(..., vectorize_particles=False)``) on a recursive grammar
whose 38 trees can all be listed (``tests/grammar.py``): exact log p(x) by enumeration checked
against a hand-written sum, and each estimator's update against its exact expectation.

Exact targets, per estimator:

- WS: wake-θ E_q[∇θ log p(x, z)] (enumeration over trees), sleep-φ E_{p(z,x)}[∇φ log q(z | x)]
  (enumeration over trees and all 81 sentences): unbiased;
- RWS at K = 2 (wake-θ and wake-φ): the exact expectation of its self-normalised update over all
  38² ordered pairs of particles: unbiased; and consistency for ∇θ log p(x) as K grows (slow);
- VIMCO at K = 2: unbiased for ∇ L_2 (the K-sample bound, summed over all pairs);
- REINFORCE and NVIL: unbiased for ∇ ELBO (NVIL's φ part scaled);
- MWS: once the memory holds all 38 trees, its θ- and φ-updates *are* ∇θ log p(x) and the exact
  wake-φ target (deterministic, float64 rounding);
- TVO and defensive RWS: consistent as K grows (slow).

Tolerances: per-coordinate z-scores of repeated estimates under a Bonferroni t bound
(``exactness.assert_unbiased``, family-wise false alarm 0.1%).  Everything in float64.
"""

from __future__ import annotations

import math

import pytest

pyro = pytest.importorskip("pyro")

import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from exactness import assert_unbiased, bias_norm_band, estimates, exact_elbo, exact_grads, exact_k_bound, exact_tvo, grads  # noqa: E402
from grammar import LENGTH, MAX_DEPTH, PAD, Grammar, Parser, grammar_model, noisy_yield, sentences  # noqa: E402
from torch import nn  # noqa: E402

import wakesleep as ws  # noqa: E402
from wakesleep.estimators import NVIL, RWS, TVO, VIMCO, MemoisedWakeSleep, Reinforce, WakeSleep  # noqa: E402
from wakesleep.models.contract import check_shapes, exact_log_marginal  # noqa: E402
from wakesleep.models.exact import enumerated_log_joint, exact_theta_grad, exact_wake_phi_target  # noqa: E402
from wakesleep.pyro import NotVectorisable, from_pyro  # noqa: E402


@pytest.fixture
def case():
    torch.manual_seed(0)
    return grammar_model(), sentences()[torch.tensor([0, 5, 40])]


def hand_written_log_marginal(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x) [B] by a plain recursion over the grammar's trees, without Pyro."""

    def trees(depth):  # [(log prior, yield)]
        lp = torch.log_softmax(logits if depth < MAX_DEPTH else logits[:2], 0)
        out = [(lp[0], [0]), (lp[1], [1])]
        if depth < MAX_DEPTH:
            out += [(lp[2] + a + b, ya + yb) for a, ya in trees(depth + 1) for b, yb in trees(depth + 1)]
        return out

    every = trees(0)
    assert len(every) == 38
    rows = []
    for xb in x:
        terms = []
        for lp, y in every:
            want = torch.tensor([y[i] if i < len(y) else PAD for i in range(LENGTH)])
            terms.append(lp + torch.where(xb.long() == want, math.log(0.8), math.log(0.1)).sum())
        rows.append(torch.logsumexp(torch.stack(terms), 0))
    return torch.stack(rows)


# ------------------------------------------------------------------ the contract, exact log p(x)


def test_traces_are_listed_once_and_the_exact_marginal_is_the_hand_written_one(case):
    model, x = case
    z = model.enumerate_latents()
    assert z["address"].shape == (38, 64)
    assert len({tuple(row) for row in torch.cat([z["address"], z["value"].long()], 1).tolist()}) == 38
    xs = sentences()
    exact = exact_log_marginal(model, xs)
    assert torch.logsumexp(exact, 0).item() == pytest.approx(0.0, abs=1e-12)  # Σ_x p(x) = 1
    assert torch.allclose(exact[::7], hand_written_log_marginal(model.generative.logits.detach(), xs[::7]), atol=1e-12)
    assert ws.exact_log_likelihood(model, x).mean == pytest.approx(exact_log_marginal(model, x).mean().item(), abs=1e-12)


def test_contract_shapes_choices_and_scores(case):
    model, x = case
    check_shapes(model, x, ["propose", "log_joint", "log_proposal", "sample", "log_prior"])
    z, log_q = model.propose(x, 5)
    assert z["address"].shape == (5, 3, 64) and log_q.shape == (5, 3) and log_q.requires_grad
    assert not any(v.requires_grad for v in z.values())
    assert torch.allclose(model.log_proposal(x, z), log_q)
    trees = model.choices(z)
    assert len(trees) == 5 and len(trees[0]) == 3 and "S" in trees[0][0]
    for tree in (t for row in trees for t in row):  # site names follow the path: children exist iff S → S S
        assert all((name + "0" in tree) == (int(v) == 2) for name, v in tree.items())
    zs, xs = model.sample(4)
    assert xs.shape == (4, LENGTH) and zs["address"].shape == (4, 64)
    lj, lp = model.log_joint(xs, zs), model.log_prior(zs)
    assert lj.shape == lp.shape == (4,) and (lj < lp).all()  # the channel's log-probability is negative


def test_log_likelihood_is_unbiased_in_p_and_within_its_standard_error(case):
    model, x = case
    exact = exact_log_marginal(model, x).detach()
    torch.manual_seed(1)
    est = ws.log_likelihood(model, x, k=300)
    assert abs(est.mean - exact.mean().item()) < 4 * est.stderr + 0.05, (est, exact.mean())


def test_a_program_written_over_a_batch_with_a_sequential_plate_gives_the_same_scores(case):
    class BatchGrammar(Grammar):
        def forward(self, x):
            for i in pyro.plate("data", len(x)):
                pyro.sample("x", noisy_yield(self.expand("S"), x.device), obs=x[i].long())

    class BatchParser(Parser):
        def forward(self, x):
            for i in pyro.plate("data", len(x)):
                super().forward(x[i])

    model, x = case
    batch = from_pyro(BatchGrammar(), BatchParser(), vectorize_particles=False, data_dim=LENGTH)
    batch.load_state_dict(model.state_dict())
    z, _ = model.propose(x, 4)
    assert torch.allclose(batch.log_joint(x, z), model.log_joint(x, z))
    assert torch.allclose(batch.log_proposal(x, z), model.log_proposal(x, z))
    assert batch._inputs == {"model": "batch", "guide": "batch"} and model._inputs["model"] == "datapoint"


def test_the_vectorised_path_names_the_per_particle_option():
    with pytest.raises(NotVectorisable, match="vectorize_particles=False"):
        from_pyro(Grammar(), Parser(), data_dim=LENGTH).propose(sentences()[:2], 3)


def test_choices_over_max_choices_and_mismatched_programs_are_named(case):
    model, x = case
    small = from_pyro(Grammar(), Parser(), vectorize_particles=False, max_choices=1)
    torch.manual_seed(2)
    with pytest.raises(ValueError, match="max_choices"):
        small.propose(x, 50)

    class Renamed(Parser):
        def expand(self, path, features):
            super().expand(path.replace("S", "T"), features)

    wrong = from_pyro(Grammar(), Renamed(), vectorize_particles=False)
    with pytest.raises(ValueError, match="same latent sites"):
        wrong.log_joint(x, wrong.propose(x, 2)[0])


# ------------------------------------------------------------------ estimators against exact targets


def test_wake_sleep_wake_theta_and_sleep_phi_are_unbiased(case):
    model, x = case
    zs, log_joint = enumerated_log_joint(model, x)
    q = model.log_proposal(x, zs).detach().exp()  # [S, B]
    wake_theta = grads(model.p_parameters(), (q * log_joint).sum(0).mean())
    every = sentences()
    with torch.no_grad():
        states, log_pzx = enumerated_log_joint(model, every)
    sleep_phi = grads(model.q_parameters(), (log_pzx.exp() * model.log_proposal(every, states)).sum())
    torch.manual_seed(3)
    t, p = estimates(model, x, WakeSleep(), 20, 10)
    assert_unbiased(t, wake_theta, "wake theta")
    assert_unbiased(p, sleep_phi, "sleep phi")


def pair_expectation(model, x):
    """The exact expectation of RWS's K = 2 update: Σ over ordered pairs (z1, z2) of q(z1) q(z2) Σ_k w̃_k ∇ log f(z_k)."""
    zs, log_p = enumerated_log_joint(model, x)
    log_q = model.log_proposal(x, zs)
    s = log_p.shape[0]
    idx = torch.cartesian_prod(torch.arange(s), torch.arange(s))  # [S², 2]
    with torch.no_grad():
        w = torch.softmax((log_p - log_q)[idx], 1)  # [S², 2, B]
        prob = log_q[idx].sum(1).exp()[:, None]  # [S², 1, B]
    theta = grads(model.p_parameters(), (prob * w * log_p[idx]).sum((0, 1)).mean())
    phi = grads(model.q_parameters(), (prob * w * log_q[idx]).sum((0, 1)).mean())
    return theta, phi


def test_rws_at_two_particles_is_unbiased_for_its_exact_pair_expectation(case):
    model, x = case
    theta, phi = pair_expectation(model, x)
    torch.manual_seed(4)
    t, p = estimates(model, x, RWS(k=2, q_update="wake"), 30, 10)
    assert_unbiased(t, theta, "wake theta")
    assert_unbiased(p, phi, "wake phi")


def test_vimco_is_unbiased_for_the_two_sample_bound(case):
    model, x = case
    g_t, g_p = exact_grads(model, x, exact_k_bound(model, x, 2))
    torch.manual_seed(5)
    t, p = estimates(model, x, VIMCO(k=2), 30, 10)
    assert_unbiased(t, g_t, "theta")
    assert_unbiased(p, g_p, "phi")


def test_reinforce_and_nvil_are_unbiased_for_the_elbo_gradient(case):
    model, x = case
    g_t, g_p = exact_grads(model, x, exact_elbo(model, x))
    torch.manual_seed(6)
    t, p = estimates(model, x, Reinforce(k=1), 30, 10)
    assert_unbiased(t, g_t, "reinforce theta")
    assert_unbiased(p, g_p, "reinforce phi")
    nvil = NVIL(k=1).double()
    t, p = estimates(model, x, nvil, 30, 10, scale_metric="signal_scale")
    assert_unbiased(t, g_t, "nvil theta")
    assert_unbiased(p, g_p, "nvil phi")


def test_mws_keeps_distinct_traces_and_with_every_tree_in_memory_gives_the_exact_gradients(case):
    model, x = case
    est = MemoisedWakeSleep(k=10, memory_size=40, q_update="wake")
    est.prepare(model, x)
    index = torch.arange(3)
    torch.manual_seed(7)
    for _ in range(3):
        est(model, x, index)
    held = [torch.cat([est.memory_z0[b], est.memory_z1[b], est.memory_z2[b].double()], 1)[est.memory_filled[b]] for b in range(3)]
    assert all(len({tuple(r) for r in h.tolist()}) == len(h) >= 5 for h in held)  # distinct traces, told apart by their choices
    # Every tree in memory: log Σ_{z∈Q} p(x, z) = log p(x), so the updates are the exact gradients.
    states = torch.utils._pytree.tree_flatten(ws.models.contract.states_against_batch(model.enumerate_latents(), 3))[0]
    est.remember(index, states, torch.ones(38, 3, dtype=torch.bool))
    g = grads(model.p_parameters() + model.q_parameters(), -est(model, x, index).loss)
    assert est.memory_filled.sum(1).tolist() == [38, 38, 38]  # the proposals, all repeats, added nothing
    n = sum(p.numel() for p in model.p_parameters())
    assert torch.allclose(g[:n], exact_theta_grad(model, x), rtol=1e-9, atol=1e-12)
    assert torch.allclose(g[n:], exact_wake_phi_target(model, x), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_rws_is_consistent_for_the_likelihood_gradient(case):
    model, x = case
    targets = exact_theta_grad(model, x), exact_wake_phi_target(model, x)
    torch.manual_seed(8)
    for est in (RWS(k=400, q_update="wake"), RWS(k=400, q_update="wake", defensive=0.3)):
        small = estimates(model, x, RWS(k=2, q_update="wake", defensive=est.defensive), 20, 10)
        large = estimates(model, x, est, 20, 1)
        for part, target in enumerate(targets):
            (b2, n2), (bl, nl) = bias_norm_band(small[part], target), bias_norm_band(large[part], target)
            assert b2 - 3 * n2 > bl + 3 * nl, (est.defensive, part, b2, n2, bl, nl)
            assert_unbiased(large[part], target, f"part {part}, defensive {est.defensive}")


@pytest.mark.slow
def test_tvo_is_consistent_for_the_exact_bound_gradient(case):
    model, x = case
    betas = [0.0, 0.3, 1.0]
    g_t, g_p = exact_grads(model, x, exact_tvo(model, x, betas))
    torch.manual_seed(9)
    t, p = estimates(model, x, TVO(k=400, betas=betas), 20, 1)
    assert_unbiased(t, g_t, "theta")
    assert_unbiased(p, g_p, "phi")


# ------------------------------------------------------------------ impossible configurations


class HardGrammar(Grammar):
    """The grammar without the noisy channel: p(x | tree) = 1 if the yield is x, else 0 (log p = −inf)."""

    def forward(self, x):
        tokens = self.expand("S")
        want = torch.tensor([tokens[i] if i < len(tokens) else PAD for i in range(LENGTH)], dtype=torch.float64)
        pyro.sample("x", dist.Delta(want, event_dim=1), obs=x)


def test_impossible_trees_weigh_nothing_and_dead_datapoints_are_counted():
    torch.manual_seed(10)
    model = from_pyro(HardGrammar(), Parser(), vectorize_particles=False, data_dim=LENGTH)
    x = torch.tensor([[0.0, PAD, PAD, PAD], [0.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    z, _ = model.propose(x, 30)
    lj = model.log_joint(x, z)
    assert torch.isneginf(lj).any() and torch.isfinite(lj).any()
    out = RWS(k=30, q_update="wake")(model, x)
    assert torch.isfinite(out.loss)
    g = grads(model.p_parameters() + model.q_parameters(), out.loss)
    assert torch.isfinite(g).all()
    one = RWS(k=1, q_update="wake")(model, x[1:].repeat(20, 1))
    assert one.metrics["dead_datapoints"] > 0 and torch.isfinite(one.loss)


def test_what_the_docs_say_of_impossible_configurations():
    """docs/your-own-model.md: −inf particles weigh 0 in RWS and evaluation (a dead datapoint's
    estimate is −inf), MWS never keeps one, and an ELBO-based estimator's non-finite gradient is
    refused before the first step with the estimators that apply named."""
    torch.manual_seed(14)
    model = from_pyro(HardGrammar(), Parser(), vectorize_particles=False, data_dim=LENGTH)
    x = torch.tensor([[0.0, PAD, PAD, PAD], [0.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    per_point = ws.evaluate.importance_log_marginal(model, x.repeat(10, 1), 1)
    assert torch.isneginf(per_point).any() and not per_point.isnan().any()
    est = MemoisedWakeSleep(k=5, memory_size=8, q_update="wake")
    est.prepare(model, x)
    est(model, x, torch.arange(2))
    held = est.memory_filled.sum(1)
    assert (held <= 1).all()  # each sentence has exactly one tree of non-zero mass
    with pytest.raises(ValueError, match="non-finite gradient.*RWS, WS or MWS"):  # refused before the first step
        ws.train(model, Reinforce(k=3), x.repeat(10, 1), epochs=1, batch_size=20, progress=False)
    fit = ws.train(model, RWS(k=3, q_update="wake"), x.repeat(10, 1), epochs=1, batch_size=10, progress=False)
    assert fit.history[-1]["train_dead_datapoints"] >= 0


def test_training_with_each_estimator_learns_the_grammar():
    """The production probabilities move toward the truth under every estimator that needs only
    sampling and densities (10 steps of batch 20 from the true grammar)."""
    torch.manual_seed(11)
    truth = Grammar()
    with torch.no_grad():
        truth.logits.copy_(torch.tensor([1.0, 0.0, -1.0]))
    data = from_pyro(truth, Parser(), vectorize_particles=False, data_dim=LENGTH).sample(200)[1]
    error = lambda m: (m.generative.logits.softmax(0) - truth.logits.softmax(0)).norm().item()  # noqa: E731
    for est in (WakeSleep(), RWS(k=5), RWS(k=5, defensive=0.2), VIMCO(k=5), Reinforce(k=5), NVIL(k=5).double(), TVO(k=5), MemoisedWakeSleep(k=5)):
        torch.manual_seed(12)
        model = grammar_model()
        before = error(model)
        ws.train(model, est, data, None, epochs=1, batch_size=20, lr_p=5e-2, lr_q=3e-2, lr_estimator=1e-2, progress=False)
        assert error(model) < before, (type(est).__name__, before, error(model))


def test_defensive_rws_draws_from_the_prior_for_a_program(case):
    model, x = case
    z, log_u = model.sample_uniform(x, 6)
    assert z["address"].shape == (6, 3, 64) and not log_u.requires_grad
    assert torch.allclose(log_u, model.log_prior(z))
    assert torch.allclose(model.log_uniform(x, z), log_u)  # defensive RWS takes u's density at the particles it keeps
    assert "sample_uniform" in RWS(defensive=0.2).requires(model)


def test_guide_without_the_model_s_site_is_refused_per_particle(case):
    class Lazy(nn.Module):
        def forward(self, x):
            pyro.sample("S", dist.Categorical(logits=torch.zeros(2, dtype=torch.float64)))

    model = from_pyro(Grammar(), Lazy(), vectorize_particles=False, data_dim=LENGTH)
    _, x = case
    zs, xs = model.sample(20)
    with pytest.raises(ValueError, match="did not draw|same latent sites"):
        model.log_proposal(xs, zs)


# ------------------------------------------------------------------ the command line


def test_command_line_trains_a_program_and_resumes_it_bit_exact(tmp_path):
    """``wakesleep train --model tests/grammar.py:grammar_model`` with MWS (whose memory of traces
    goes into the checkpoint): one epoch then ``--resume`` to two is the two-epoch run, bit for bit."""
    from cli_helpers import run

    torch.manual_seed(13)
    x = grammar_model().sample(30)[1].numpy()
    data = tmp_path / "sentences.npz"
    import numpy as np

    np.savez(data, train=x[:20], valid=x[20:25], test=x[25:])
    spec = f"{__file__.rsplit('/', 1)[0]}/grammar.py:grammar_model"
    common = ["--model", spec, "--algorithm", "mws", "--k", "3", "--memory-size", "4", "--dataset", str(data), "--batch-size", "10"]
    common += ["--valid-k", "3", "--test-k", "5", "--no-progress", "--seed", "4"]
    code, out, err = run(["train", *common, "--epochs", "2", "--run-dir", str(tmp_path / "straight")])
    assert code == 0, err
    assert "test log-likelihood" in out
    code, _, err = run(["train", *common, "--epochs", "1", "--run-dir", str(tmp_path / "resumed")])
    assert code == 0, err
    code, _, err = run(["train", *common, "--epochs", "2", "--run-dir", str(tmp_path / "resumed"), "--resume"])
    assert code == 0, err
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("straight", "resumed"))
    for part in ("model", "estimator"):
        assert a[part].keys() == b[part].keys() and all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert b["estimator"]["memory_filled"].any()
    code, out, err = run(["evaluate", str(tmp_path / "resumed"), "--k", "5", "--model", spec])
    assert code == 0 and "nats" in out, err


def test_a_program_with_too_many_traces_has_no_exact_form():
    """A recursion beyond ``max_traces`` traces is not searched to its end, and nothing is listed
    unless asked: exact evaluation refuses such a model."""
    model = from_pyro(Grammar(), Parser(), vectorize_particles=False, data_dim=LENGTH, max_traces=20)
    assert not model.has_exact_log_marginal and not ws.models.contract.has_exact_form(model)
    assert not from_pyro(Grammar(), Parser(), vectorize_particles=False).has_exact_log_marginal  # listed only when asked
    with pytest.raises(TypeError, match="enumerate_latents"):
        exact_log_marginal(model, sentences()[:2])
    assert grammar_model().has_exact_log_marginal
