"""Estimators and evaluation against exact answers on models small enough to enumerate or solve.

Tolerances come from standard errors of repeated estimates: a per-coordinate z-score bound of 4.5
(Bonferroni over ≤ 200 coordinates gives a false-alarm rate below 0.2%) for unbiased quantities,
and 3 standard errors for scalar comparisons.
"""

from __future__ import annotations

import math

import pytest
import torch
from exactness import bias_norm_band, cosine, grads, small_sbn, z_scores

from wakesleep.estimators import IWAE, RWS, VAE, WakeSleep, sleep_phase_loss
from wakesleep.evaluate import exact_log_marginal, importance_log_marginal, log_likelihood
from wakesleep.importance import effective_sample_size
from wakesleep.models import HelmholtzMachine
from wakesleep.models.exact import exact_theta_grad, sbn_reference
from wakesleep.models.exact import exact_wake_phi_target as exact_wake_phi_grad

Z_MAX = 4.5


@pytest.fixture(scope="module")
def sbn():
    return sbn_reference(batch=4)  # the model of small_sbn() and a batch of 4 drawn from it


def rws_grads(model, x, k, repeats):
    est = RWS(k=k, q_update="wake")
    out_t, out_p = [], []
    for _ in range(repeats):
        loss = est(model, x).loss
        g = grads(model.p_parameters() + model.q_parameters(), -loss)
        n_theta = sum(p.numel() for p in model.p_parameters())
        out_t.append(g[:n_theta])
        out_p.append(g[n_theta:])
    return torch.stack(out_t), torch.stack(out_p)


# ------------------------------------------------------------------ likelihood


def test_importance_weights_are_unbiased_for_p_x(sbn):
    """(1/K) Σ_k w_k is an unbiased estimate of p(x): its ratio to the exact p(x) has mean 1."""
    model, x = sbn
    torch.manual_seed(2)
    exact = exact_log_marginal(model, x).detach()
    ratios = torch.stack([torch.exp(importance_log_marginal(model, x, 10) - exact) for _ in range(3000)])
    z = z_scores(ratios, torch.ones(x.shape[0]))
    assert z.abs().max() < Z_MAX, z


def test_log_likelihood_matches_exact_at_k5000_and_bias_shrinks(sbn):
    model, x = sbn
    torch.manual_seed(3)
    exact = exact_log_marginal(model, x).detach()
    # At K = 5000 the Jensen bias is far below the Monte Carlo error: the estimate is within 3 SE.
    reps = torch.stack([importance_log_marginal(model, x, 5000) - exact for _ in range(20)])
    d = reps.mean(1)
    assert abs(d.mean().item()) < 3 * d.std().item() / math.sqrt(len(d)) + 1e-12
    # The log estimate is biased low, and the bias shrinks with K.
    biases = []
    for k in (1, 10, 100):
        reps = torch.stack([(importance_log_marginal(model, x, k) - exact).mean() for _ in range(400)])
        biases.append((reps.mean().item(), reps.std().item() / math.sqrt(len(reps))))
    for (b_small, se_small), (b_large, se_large) in zip(biases, biases[1:]):
        assert b_small < 0 and b_small + 3 * math.hypot(se_small, se_large) < b_large, biases


def exact_weight_variance(model, x):
    """Var_q(w / p(x)) per datapoint by enumeration: the delta-method variance of log p̂ at K = 1."""
    zs = [z[:, None, :] for z in model.enumerate_latents()]
    with torch.no_grad():
        lq = model.log_proposal(x, zs)
        lr = model.log_joint(x, zs) - lq - exact_log_marginal(model, x)
        return (torch.exp(lq + 2 * lr)).sum(0) - 1


def test_log_likelihood_api_reports_mean_and_stderr(sbn):
    model, x = sbn
    k = 2000
    est = log_likelihood(model, x, k=k, seed=0)
    exact = exact_log_marginal(model, x).detach()
    assert est.k == k and est.n == x.shape[0]
    # The reported s.e. is over datapoints: with K this large it is the spread of log p(x) itself.
    assert est.stderr == pytest.approx(exact.std().item() / math.sqrt(x.shape[0]), rel=0.05)
    # Delta method: log p̂ has variance v/K and bias −v/(2K) per point, v = Var_q(w/p).
    v = exact_weight_variance(model, x)
    n = x.shape[0]
    se = math.sqrt(v.sum().item() / k) / n
    bias = v.sum().item() / (2 * k) / n
    assert abs(est.mean - (exact.mean().item() - bias)) < 3 * se


def test_chunking_accumulates_exactly(sbn):
    """Chunked log-sum-exp over particle chunks equals one log-sum-exp over all the particles."""
    model, x = sbn
    torch.manual_seed(5)
    pool = model.log_weights(x, 300)
    pos = [0]

    class Pool:
        data_dim, latent_sizes = model.data_dim, model.latent_sizes

        def log_weights(self, xb, k):
            out = pool[pos[0] : pos[0] + k]
            pos[0] += k
            return out

    full = torch.logsumexp(pool, 0) - math.log(300)
    for chunk in (300, 7, 1):
        pos[0] = 0
        assert torch.allclose(importance_log_marginal(Pool(), x, 300, particle_chunk=chunk), full, atol=1e-12)


def test_effective_sample_size_bounds():
    log_w = torch.tensor([[0.0, 0.0], [0.0, -1e9], [0.0, -1e9]])
    ess = effective_sample_size(log_w)
    assert ess[0].item() == pytest.approx(3.0) and ess[1].item() == pytest.approx(1.0)


# ------------------------------------------------------------------ gradients


def test_rws_theta_and_wake_phi_gradients_converge_to_exact(sbn):
    model, x = sbn
    torch.manual_seed(6)
    g_theta, g_phi = exact_theta_grad(model, x), exact_wake_phi_grad(model, x)
    results = {}
    for k, r in ((2, 300), (20, 300), (20000, 40)):
        t, p = rws_grads(model, x, k, r)
        results[k] = (bias_norm_band(t, g_theta), bias_norm_band(p, g_phi), t, p)
    # Bias shrinks with K, by more than the noise in its measurement.
    for exact_part in (0, 1):
        (b2, n2), (b20, n20) = results[2][exact_part], results[20][exact_part]
        assert b2 - 3 * n2 > b20 + 3 * n20, (b2, n2, b20, n20)
    # At K = 20000 the O(Var(w)/K) bias is below the noise of 40 repeats: coordinates are
    # consistent with the exact gradient.
    _, _, t, p = results[20000]
    assert z_scores(t, g_theta).abs().max() < Z_MAX
    assert z_scores(p, g_phi).abs().max() < Z_MAX
    assert cosine(t.mean(0), g_theta) > 0.999
    assert cosine(p.mean(0), g_phi) > 0.999
    assert cosine(t[0], g_theta) > 0.99  # a single K=20000 estimate already points the right way


def test_wake_sleep_wake_gradient_is_the_expectation_under_q(sbn):
    """WS's wake-θ update estimates E_q[∇θ log p(x, z)] exactly (unbiased), not ∇θ log p(x)."""
    model, x = sbn
    torch.manual_seed(7)
    zs = [z[:, None, :] for z in model.enumerate_latents()]
    with torch.no_grad():
        q = torch.exp(model.log_proposal(x, zs))
    target = grads(model.p_parameters(), (q * model.log_joint(x, zs)).sum(0).mean())
    est = WakeSleep(samples=1)
    samples = torch.stack([grads(model.p_parameters(), -est(model, x).loss) for _ in range(3000)])
    assert z_scores(samples, target).abs().max() < Z_MAX
    # ...and that expectation is not the likelihood gradient: WS is biased.
    assert cosine(target, exact_theta_grad(model, x)) < 0.99


def test_sleep_phase_gradient_matches_closed_form():
    """E_{p(z, x)}[∇φ log q(z | x)] by enumerating all (z, x) of a 6-latent, 8-visible SBN."""
    model = small_sbn(data_dim=8, latents=6, seed=3)
    torch.manual_seed(8)
    zs = model.enumerate_latents()[0]  # [64, 6]
    xs = HelmholtzMachine.sbn([6, 8]).double().enumerate_latents()[0]  # all 256 binary x [256, 8]
    zz = zs[:, None, :].expand(-1, xs.shape[0], -1)
    xx = xs[None].expand(zs.shape[0], -1, -1)
    with torch.no_grad():
        joint = torch.exp(model.log_joint(xx, [zz]))  # [64, 256], sums to 1
    assert joint.sum().item() == pytest.approx(1.0, abs=1e-10)
    target = grads(model.q_parameters(), (joint * model.log_proposal(xx, [zz])).sum())
    samples = torch.stack([grads(model.q_parameters(), -sleep_phase_loss(model, 50)) for _ in range(1500)])
    assert z_scores(samples, target).abs().max() < Z_MAX


def test_rws_sleep_and_both_modes_route_phi_updates(sbn):
    model, x = sbn
    torch.manual_seed(9)
    sleep = torch.stack([grads(model.q_parameters(), -RWS(k=5, q_update="sleep")(model, x).loss) for _ in range(1)])
    assert sleep.abs().sum() > 0
    # θ gradients do not depend on the q-update mode given the same particles.
    torch.manual_seed(10)
    a = grads(model.p_parameters(), RWS(k=5, q_update="wake")(model, x).loss)
    torch.manual_seed(10)
    b = grads(model.p_parameters(), RWS(k=5, q_update="both")(model, x).loss)
    assert torch.allclose(a, b)


def test_weights_are_normalised_per_datapoint(sbn):
    """With fixed particles, the batch gradient is the mean of per-datapoint gradients.

    Normalising weights once per batch (as Pyro's ``ReweightedWakeSleep`` does) breaks this.
    """
    model, x = sbn
    torch.manual_seed(11)
    zs, _ = model.propose(x, 4)
    fixed = [z.detach() for z in zs]

    class Fixed(torch.nn.Module):
        def __init__(self, idx):
            super().__init__()
            self.idx = idx

        def propose(self, xb, k, reparameterize=False):
            z = [f[:, self.idx] for f in fixed]
            return z, model.log_proposal(xb, z)

        def log_joint(self, xb, z):
            return model.log_joint(xb, z)

    est = RWS(k=4, q_update="wake")
    params = model.p_parameters() + model.q_parameters()
    batch = grads(params, est(Fixed(slice(None)), x).loss)
    single = torch.stack([grads(params, est(Fixed(slice(i, i + 1)), x[i : i + 1]).loss) for i in range(x.shape[0])])
    assert torch.allclose(batch, single.mean(0), atol=1e-12)


# ------------------------------------------------------------------ VAE / IWAE


@pytest.fixture(scope="module")
def fa():
    torch.manual_seed(12)
    model = HelmholtzMachine.factor_analysis(5, 2).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    _, x = model.sample(6)
    return model, x


def bound_estimates(model, x, est, repeats):
    with torch.no_grad():
        return torch.stack([est(model, x).metrics["objective"] for _ in range(repeats)])


def test_vae_and_iwae_bounds_lie_below_exact_and_iwae_tightens(fa):
    model, x = fa
    torch.manual_seed(13)
    exact = exact_log_marginal(model, x).mean().item()
    means = {}
    for name, est in {"vae": VAE(), "iwae1": IWAE(1), "iwae5": IWAE(5), "iwae50": IWAE(50)}.items():
        b = bound_estimates(model, x, est, 800)
        means[name] = (b.mean().item(), b.std().item() / math.sqrt(len(b)))
        assert means[name][0] + 3 * means[name][1] < exact, (name, means[name], exact)
    for a, b in (("iwae1", "iwae5"), ("iwae5", "iwae50")):
        (ma, sa), (mb, sb) = means[a], means[b]
        assert ma + 3 * math.hypot(sa, sb) < mb, means


def test_iwae_rejects_discrete_latents(sbn):
    model, x = sbn
    with pytest.raises(ValueError, match="rws"):
        IWAE(5)(model, x)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_particle_counts_are_validated(bad):
    with pytest.raises(ValueError, match="k"):
        RWS(k=bad)
    with pytest.raises(ValueError, match="k"):
        IWAE(k=bad)
