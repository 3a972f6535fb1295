"""The example models of ``examples/`` (users' own models) against exact answers.

- importance-sampled log-likelihoods (:func:`wakesleep.log_likelihood`) against the exact ones
  (:func:`wakesleep.exact_log_likelihood`), compared per datapoint (paired differences) with the
  delta method's bias −χ²/(2K) taken off, within 3 standard errors of the differences;
- RWS θ- and wake-φ gradients (Bornschein & Bengio 2015) against the exact ones of
  :mod:`wakesleep.models.exact` (its generic branch: forward algorithm and enumeration), with
  per-coordinate z-scores bounded by a Bonferroni t-quantile (family-wise false alarm 0.1%) and
  a bias that shrinks with K by more than its noise;
- the HMM's forward algorithm against enumeration, the circle's quadrature against a doubled grid
  and the closed form;
- the examples' ``main()`` at a small size.

Everything in float64.  Premises of a comparison (K ≫ χ² for the delta method) are asserted, so a
test whose statistics would not hold fails instead of passing by luck.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from exactness import bias_norm_band, grads
from scipy.stats import t as student_t

import wakesleep as ws
from wakesleep.estimators import RWS, train_proposal
from wakesleep.models.exact import NoExactReference, chi_square, exact_theta_grad, exact_wake_phi_target
from wakesleep.models.exact import reference_log_marginal as exact_log_marginal

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import circle  # noqa: E402
import gmm  # noqa: E402
import hmm  # noqa: E402

#: Family-wise false-alarm rate of the per-coordinate z-score bounds.
ALPHA = 1e-3


def z_bound(coordinates: int, repeats: int) -> float:
    """The Bonferroni bound on max |z| over ``coordinates`` z-scores of means of ``repeats``
    estimates: the t-quantile (``repeats`` − 1 degrees of freedom) at 1 − ALPHA / (2·coordinates)."""
    return float(student_t.ppf(1 - ALPHA / (2 * coordinates), repeats - 1))


def z_scores(samples: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """(mean − target) / standard error per coordinate for R estimates [R, P] of K particles each.

    The standard error has a floor at the float64 rounding bound of a K-term sum,
    K·eps·max(|target|, 1): coordinates that do not vary between repeats (a component no datapoint
    is near, a saturated tanh) otherwise give z-scores of rounding error over zero."""
    se = samples.std(0, unbiased=True) / math.sqrt(samples.shape[0])
    floor = k * torch.finfo(samples.dtype).eps * target.abs().max().clamp_min(1.0)
    return (samples.mean(0) - target) / torch.maximum(se, floor)


# ------------------------------------------------------------------ models


def hmm_chi_square(model: hmm.HMM, x: torch.Tensor) -> torch.Tensor:
    """χ²(p(z | x) ‖ q(z | x)) = Σ_z p(x, z)² / (q(z | x) p(x)²) − 1 per sequence [B], exact for
    any T: p(x, z)²/q(z | x) is a product of factors of (z_{t-1}, z_t), so the sum over the 3^T
    sequences is a forward recursion like the forward algorithm's."""
    with torch.no_grad():
        log_e = model._emission(x)
        log_a = torch.log_softmax(model.trans_logits, -1)
        log_q = model.proposal_table(x)  # [B, T, 4, 3]
        g = 2 * (torch.log_softmax(model.init_logits, 0) + log_e[:, 0]) - log_q[:, 0, hmm.STATES]
        for t in range(1, x.shape[1]):
            g = torch.logsumexp(g[:, :, None] + 2 * log_a - log_q[:, t, : hmm.STATES], 1) + 2 * log_e[:, t]
        return torch.expm1(torch.logsumexp(g, -1) - 2 * model.exact_log_marginal(x))


class PriorProposalCircle(circle.CircleModel):
    """The circle model with the prior as its proposal, q(a | x) = p(a), so importance sampling
    applies (the example itself has no proposal)."""

    def propose(self, x, k):
        a = self.prior.angle_dist().sample((k, x.shape[0])).to(x.dtype)
        return a, self.log_prior(a)

    def log_proposal(self, x, a):
        return self.log_prior(a).expand(a.shape)


def circle_chi_square(model: circle.CircleModel, x: torch.Tensor, grid: int = circle.GRID) -> torch.Tensor:
    """χ² of the prior as proposal per datapoint [B]: ∫ p(a | x)² / p(a) da − 1 by the same
    trapezoid rule as the model's quadrature."""
    with torch.no_grad():
        a = (torch.arange(grid, dtype=x.dtype) * (2 * math.pi / grid) - math.pi)[:, None].expand(grid, x.shape[0])
        log_post = model.log_joint(x, a) - model.exact_log_marginal(x, grid)
        return torch.expm1(torch.logsumexp(2 * log_post - model.log_prior(a), 0) + math.log(2 * math.pi / grid))


def random_hmm(length: int, seed: int = 0, sleep_steps: int = 0) -> hmm.HMM:
    """A float64 HMM with means (−1.5, 0, 1.5), N(0, 1) logits of π and A, a 4-unit GRU proposal,
    fitted by ``sleep_steps`` sleep-phase steps (θ fixed)."""
    torch.manual_seed(seed)
    model = hmm.HMM(length, hidden=4, means=(-1.5, 0.0, 1.5)).double()
    with torch.no_grad():
        model.init_logits.normal_()
        model.trans_logits.normal_()
    if sleep_steps:
        train_proposal(model, steps=sleep_steps, batch_size=100, lr=1e-2, progress=False)
    return model


@pytest.fixture(scope="module")
def hmm20():
    """The true HMM (T = 20) with its proposal fitted by 200 sleep-phase steps, and 30 sequences
    from it.  An unfitted proposal has χ² ≈ 10¹¹ at T = 20: no K would do."""
    torch.manual_seed(0)
    model = hmm.true_hmm(20).double()
    train_proposal(model, steps=200, batch_size=100, lr=1e-2, progress=False)
    return model, hmm.make_data(30, seed=5).double()


# ------------------------------------------------------------------ log-likelihood


def paired_check(model, x: torch.Tensor, k: int, chi2: torch.Tensor) -> None:
    """ws.log_likelihood per datapoint minus the exact log p(x): by the delta method each difference
    has mean −χ²_b/(2K) and variance χ²_b/K (valid for K ≫ χ²); their mean, with the bias taken
    off, must be within 3 standard errors of 0."""
    assert k >= 20 * chi2.max().item(), f"premise: K = {k} must be >> chi^2 (max {chi2.max().item():.3g})"
    exact = ws.evaluate.exact_log_marginal(model, x).detach()
    est = torch.tensor([ws.log_likelihood(model, x[i : i + 1], k=k).mean for i in range(x.shape[0])], dtype=x.dtype)
    d = est - exact + chi2 / (2 * k)
    se = d.std(unbiased=True).item() / math.sqrt(len(d))
    assert abs(d.mean().item()) < 3 * se, (d.mean().item(), se)
    # and the batch API gives the mean of such estimates, against the exact batch mean
    total = ws.log_likelihood(model, x, k=k)
    assert abs(total.mean - ws.exact_log_likelihood(model, x).mean + chi2.mean().item() / (2 * k)) < 3 * se


@pytest.mark.parametrize("build", [gmm.mixture, gmm.HandWrittenMixture], ids=["from_distributions", "hand_written"])
def test_mixture_log_likelihood_matches_exact(build):
    torch.manual_seed(1)
    model = build().double()
    x = gmm.make_data(50, seed=1).double()
    paired_check(model, x, 2000, chi_square(model, x))


def test_hmm_log_likelihood_matches_forward_algorithm(hmm20):
    model, x = hmm20
    torch.manual_seed(2)
    paired_check(model, x, 1000, hmm_chi_square(model, x))


def test_circle_log_likelihood_matches_quadrature():
    torch.manual_seed(3)
    model = PriorProposalCircle(**circle.TRUE).double()
    x = model.sample(50)[1]
    paired_check(model, x, 2000, circle_chi_square(model, x))


def test_hmm_chi_square_recursion_matches_enumeration():
    model = random_hmm(5, seed=4)
    x = model.sample(4)[1]
    assert torch.allclose(hmm_chi_square(model, x), chi_square(model, x), rtol=1e-10)


# ------------------------------------------------------------------ gradients


def rws_grads(model, x, k: int, repeats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``repeats`` RWS(K, wake) estimates of the θ-gradient [R, P_θ] and the wake-φ gradient [R, P_φ]."""
    est = RWS(k=k, q_update="wake")
    n_theta = sum(p.numel() for p in model.p_parameters())
    out = torch.stack([grads(model.p_parameters() + model.q_parameters(), -est(model, x).loss) for _ in range(repeats)])
    return out[:, :n_theta], out[:, n_theta:]


def gradient_case(name: str):
    if name == "hmm":
        # T = 5: 3^5 = 243 sequences to enumerate for the wake-φ target.  30 sleep steps leave q
        # with χ² ≈ 1.4–2.5 on these x: far enough from the posterior for a clear bias at K = 2,
        # close enough for the bias at K = 5000 to be small against 100 repeats' noise (an
        # unfitted q has χ² in the hundreds, where it is not).
        model = random_hmm(5, seed=6, sleep_steps=30)
        torch.manual_seed(7)
        return model, model.sample(4)[1]
    torch.manual_seed(6)
    model = (gmm.mixture() if name == "mixture" else gmm.HandWrittenMixture()).double()
    return model, gmm.make_data(4, seed=6).double()


@pytest.mark.parametrize("name", ["mixture", "hand_written_mixture", "hmm"])
def test_rws_gradients_converge_to_exact(name):
    model, x = gradient_case(name)
    targets = exact_theta_grad(model, x), exact_wake_phi_target(model, x)
    torch.manual_seed(8)
    small, medium, large = ((k, r, rws_grads(model, x, k, r)) for k, r in ((2, 1000), (50, 300), (5000, 100)))
    for part, target in enumerate(targets):
        (b_small, n_small), (b_medium, n_medium) = (bias_norm_band(est[part], target) for _, _, est in (small, medium))
        # The self-normalised bias shrinks with K, by more than the noise of its measurement.
        assert b_small - 3 * n_small > b_medium + 3 * n_medium, (part, b_small, n_small, b_medium, n_medium)
        # At K = 5000 the O(χ²/K) bias is below the noise of 100 repeats: every coordinate is
        # consistent with the exact gradient, and so is the norm of the error.
        k, r, est = large
        z = z_scores(est[part], target, k)
        assert z.abs().max() < z_bound(len(z), r), (part, z.abs().max().item())
        bias, noise = bias_norm_band(est[part], target)
        assert bias < 3 * noise, (part, bias, noise)


def test_generic_references_refuse_what_they_cannot_do():
    x = hmm.make_data(2, length=20).double()
    model = hmm.true_hmm(20).double()
    assert exact_theta_grad(model, x).shape == (15,)  # the forward algorithm serves any T
    with pytest.raises(NoExactReference, match="3\\^20"):
        exact_wake_phi_target(model, x)  # ...but posterior expectations enumerate
    c = circle.true_circle().double()
    xc = c.sample(3)[1]
    assert torch.isfinite(exact_theta_grad(c, xc)).all()  # quadrature serves θ
    with pytest.raises(NoExactReference, match="needs a proposal"):
        exact_wake_phi_target(c, xc)  # the example has no q
    with pytest.raises(NoExactReference, match="enumerate_latents"):
        exact_wake_phi_target(PriorProposalCircle(**circle.TRUE).double(), xc)  # a q, but a continuous latent

    class Neither(torch.nn.Module):
        def log_joint(self, x, z):
            return x.sum(-1)

    with pytest.raises(NoExactReference):
        exact_log_marginal(Neither(), x)


# ------------------------------------------------------------------ exact forms


def test_hmm_forward_algorithm_equals_enumeration():
    model = random_hmm(4, seed=9)
    x = model.sample(6)[1]
    z = model.enumerate_latents()
    assert z.shape == (81, 4) and len({tuple(s) for s in z.tolist()}) == 81 and z.min() == 0 and z.max() == 2
    enumerated = torch.logsumexp(model.log_joint(x, z[:, None].expand(-1, 6, -1)), 0)
    forward = model.exact_log_marginal(x)
    assert torch.allclose(forward, enumerated, rtol=0, atol=1e-12)
    params = model.p_parameters()
    assert torch.allclose(grads(params, forward.sum()), grads(params, enumerated.sum()), rtol=0, atol=1e-12)
    # each sequence's prior mass, summed over the sequences, is 1
    assert torch.logsumexp(model.log_prior(z), 0).abs().item() < 1e-12


def test_hmm_enumeration_is_refused_beyond_2_to_the_24():
    with pytest.raises(ValueError, match="2\\^24"):
        hmm.HMM(16).enumerate_latents()


def test_hmm_proposal_is_normalised_and_scores_its_draws():
    model = random_hmm(4, seed=10)
    x = model.sample(3)[1]
    z = model.enumerate_latents()[:, None].expand(-1, 3, -1)
    assert torch.allclose(torch.logsumexp(model.log_proposal(x, z), 0), torch.zeros(3, dtype=x.dtype), atol=1e-12)
    zs, log_q = model.propose(x, 7)
    assert zs.shape == (7, 3, 4) and zs.dtype == torch.long
    assert torch.allclose(log_q, model.log_proposal(x, zs), rtol=0, atol=1e-12)


def test_circle_quadrature_against_doubled_grid_and_closed_form():
    torch.manual_seed(11)
    for model in (circle.true_circle().double(), circle.circle().double()):
        x = circle.true_circle().double().sample(40)[1]
        g = circle.GRID
        lp, doubled, closed = model.exact_log_marginal(x, g), model.exact_log_marginal(x, 2 * g), circle.closed_form_log_marginal(model, x)
        # The trapezoid error at G = 2000 is far below rounding here (module docstring), so what
        # is left is the rounding of a G-term sum: relative error <= G·eps in p, absolute in log p.
        tol = 2 * g * torch.finfo(x.dtype).eps
        assert (lp - doubled).abs().max() < tol
        assert (lp - closed).abs().max() < tol
        params = model.p_parameters()
        ga, gb = grads(params, lp.mean()), grads(params, closed.mean())
        assert torch.allclose(ga, gb, rtol=0, atol=tol * max(1.0, gb.abs().max().item()))


# ------------------------------------------------------------------ main() and the factories


def run_main(module, argv, capsys) -> dict:
    out = module.main(argv)
    printed = dict(line.split(": ", 1) for line in capsys.readouterr().out.strip().splitlines())
    assert set(printed) == set(out)
    assert all(math.isfinite(v) for value in out.values() for v in (value if isinstance(value, list) else [value]))
    return out


def test_hmm_main_runs(capsys):
    out = run_main(hmm, ["--n", "100", "--n-test", "20", "--length", "6", "--epochs", "1", "--k", "5", "--eval-k", "50"], capsys)
    for key in ("log_likelihood", "log_likelihood_stderr", "exact_log_likelihood", "exact_log_likelihood_true", "means"):
        assert key in out


def test_circle_main_runs(capsys):
    out = run_main(circle, ["--n", "200", "--n-test", "50", "--epochs", "1", "--fine-epochs", "1", "--sleep-samples", "100"], capsys)
    for key in ("mu", "kappa", "r", "s", "mu_true", "exact_log_likelihood", "exact_log_likelihood_start", "r_mle"):
        assert key in out


def test_factories_build_through_the_model_loader():
    from wakesleep.models.loading import build_user_model

    model = build_user_model(f"{EXAMPLES / 'hmm.py'}:hmm", 7)
    assert model.data_dim == 7 and model.sample(2)[1].shape == (2, 7)
    assert build_user_model(f"{EXAMPLES / 'circle.py'}:circle", 2).sample(3)[1].shape == (3, 2)
    with pytest.raises(ValueError, match="width 2"):
        circle.circle(3)
