"""examples/nmf.py: beta–gamma matrix factorisation trained by ALWS (Wenliang et al. 2020;
ALGORITHMS.md §7.5) against a VAE.

- log_joint against torch.distributions written independently (U(0, 1) pushed through logit by a
  TransformedDistribution, Bernoulli with logits), the exponential-family view against the
  likelihood, the Gamma weight prior against torch's Gamma;
- the MAP latent search against the optimum of a tiny case found by root-finding on its derivative;
- pixel flips flip exactly the stated number of pixels; the MAP-prior wrapper adds exactly −log p(W)/N;
- a tiny run of the command writes its figures and numbers.
"""

import math
import sys
from pathlib import Path

import pytest
import torch
from scipy.optimize import brentq
from torch.distributions import Bernoulli, Gamma, TransformedDistribution, Uniform
from torch.distributions.transforms import SigmoidTransform

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import nmf  # noqa: E402


def _model(k=3, d=5, seed=0):
    torch.manual_seed(seed)
    m = nmf.NMFModel(factors=k, dim=d, hidden=7, w_scale=0.7, seed=seed).double()
    with torch.no_grad():
        m.bias.normal_()
    return m


def test_log_joint_matches_torch_distributions():
    m = _model()
    u, x = m.sample(6)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    u4 = 2 * torch.randn(4, 6, 3, dtype=torch.float64)  # [S, B, K] particles
    logit_uniform = TransformedDistribution(
        Uniform(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)), [SigmoidTransform().inv]
    )
    w = torch.nn.functional.softplus(m.w_raw.detach())
    want = logit_uniform.log_prob(u4).sum(-1) + Bernoulli(logits=u4 @ w + m.bias.detach()).log_prob(x).sum(-1)
    torch.testing.assert_close(m.log_joint(x, u4), want)
    assert (m.weights >= 0).all()


def test_factory_meets_the_contract():
    from wakesleep.models.contract import EXPONENTIAL_FAMILY, GENERATIVE, TRAINING_WITH_PROPOSAL, check_model, check_shapes
    from wakesleep.models.loading import build_user_model

    m = build_user_model(f"{nmf.__file__}:nmf", 784)
    members = GENERATIVE + EXPONENTIAL_FAMILY + TRAINING_WITH_PROPOSAL + ("log_proposal",)
    check_model(m, members, "the test")
    check_shapes(m, torch.bernoulli(torch.full((4, 784), 0.2)), members)


def test_exponential_family_is_the_likelihood_and_weight_prior_is_gamma():
    m = _model()
    u, x = m.sample(8)
    eta, psi = m.exponential_family(u)
    # Bernoulli: log h(x) = 0, so η·S(x) − Ψ is the whole log-likelihood
    torch.testing.assert_close((eta * m.sufficient_statistics(x)).sum(-1) - psi, m.log_joint(x, u) - m.log_prior(u))
    want = Gamma(torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)).log_prob(m.weights).sum()
    torch.testing.assert_close(m.log_weight_prior(), want)


def test_map_latents_finds_the_optimum_of_a_one_factor_case():
    # K = 1: f(u) = Σ_d [x_d η_d − softplus(η_d)] − softplus(u) − softplus(−u), η = u w + b, concave in u;
    # its maximiser solves f'(u) = Σ_d w_d (x_d − σ(η_d)) + 1 − 2σ(u) = 0 (root found by brentq).
    m = _model(k=1, d=4, seed=3)
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    w, b = m.weights.detach()[0].numpy(), m.bias.detach().numpy()

    def deriv(u, xd):
        eta = u * w + b
        return float((w * (xd - 1 / (1 + math.e ** (-eta)))).sum() + 1 - 2 / (1 + math.e ** (-u)))

    want = [brentq(deriv, -50, 50, args=(row.numpy(),), xtol=1e-12) for row in x]
    got = nmf.map_latents(m, x, steps=2000, lr=0.05)[:, 0]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), atol=1e-4, rtol=0)
    with pytest.raises(ValueError):
        nmf.map_latents(m, x, steps=0)


def test_flip_pixels_flips_exactly_the_fraction():
    x = torch.bernoulli(torch.full((5, 784), 0.3))
    y = nmf.flip_pixels(x, 0.1, seed=1)
    assert ((y != x).sum(-1) == round(0.1 * 784)).all()
    assert torch.equal(nmf.flip_pixels(x, 0.1, seed=1), y)
    with pytest.raises(ValueError):
        nmf.flip_pixels(x, 1.5)


def test_pixel_errors_on_known_values():
    clean = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    p = torch.tensor([[0.9, 0.2, 0.4, 0.0]])
    e = nmf.pixel_errors(clean, p)
    assert e["mae"][0] == pytest.approx((0.1 + 0.2 + 0.6) / 4)
    assert e["mse"][0] == pytest.approx((0.01 + 0.04 + 0.36) / 4)
    assert e["err01"][0] == pytest.approx(0.25)


def test_weight_prior_wrapper_adds_exactly_the_map_term():
    import wakesleep as ws

    m = _model()
    _, x = m.sample(4)
    inner = ws.VAE()
    torch.manual_seed(5)
    base = inner(m, x).loss
    torch.manual_seed(5)
    wrapped = nmf.WithWeightPrior(inner, n_train=50)(m, x)
    torch.testing.assert_close(wrapped.loss, base - m.log_weight_prior() / 50)
    with pytest.raises(ValueError):
        nmf.WithWeightPrior(inner, n_train=0)


def test_tiny_run_writes_figures_and_numbers(tmp_path, capsys):
    data = Path(__import__("os").environ.get("WAKESLEEP_DATA_DIR", "/nonexistent")) / "binarized_mnist.npz"
    if not data.exists():
        pytest.skip("binarized_mnist.npz not available (set WAKESLEEP_DATA_DIR)")
    out = nmf.main(
        ["--n-train", "200", "--n-test", "20", "--factors", "10", "--epochs", "1", "--fine-epochs", "0", "--sleep-samples", "200",
         "--map-steps", "30", "--out", str(tmp_path), "--no-progress"]
    )  # fmt: skip
    for key in ("alws_recon_mae", "alws_denoise_mae", "vae_recon_mae", "vae_denoise_mae", "start_recon_mae"):
        assert 0 <= out[key] <= 1
    assert out["noisy_input_err01"] == pytest.approx(round(0.1 * 784) / 784)
    assert (tmp_path / "nmf.png").exists() and (tmp_path / "nmf_factors.png").exists()
    assert "alws_denoise_mae:" in capsys.readouterr().out
