"""examples/neural_process.py: a latent-variable neural process on sine functions trained by ALWS
(Wenliang et al. 2020; ALGORITHMS.md §7.8) against the NP's ELBO (Garnelo et al. 2018).

- log_joint against torch.distributions with the decoder applied point by point;
- the set features are invariant to the order of the points; the encoder's mask equals dropping points;
- the predictive estimator is unbiased for p(y_T | x_T, C) on a linear-Gaussian model
  y_i = (sin x_i, cos x_i)·z + ε with z ~ N(0, I) (the sine family a sin(x − b) in other
  coordinates), whose predictive given the context is Gaussian in closed form;
- the sine data's noise has the stated s.d.; a tiny run of the command writes its figure and numbers.
"""

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import neural_process as npx  # noqa: E402


def test_log_joint_matches_torch_distributions():
    torch.manual_seed(0)
    m = npx.NeuralProcess(n_points=5, z_dim=3, hidden=8, r_dim=6).double()
    with torch.no_grad():
        m.prior_mu.normal_()
        m.noise_raw.fill_(-1.0)
    z, data = m.sample(4)
    zk = torch.randn(2, 4, 3, dtype=torch.float64)
    x, y = data[:, :5], data[:, 5:]
    want = Normal(m.prior_mu, m.prior_log_s.exp()).log_prob(zk).sum(-1)
    for i in range(5):  # the decoder on one point at a time
        mean = m.decoder(torch.cat([x[:, i].expand(2, 4)[..., None], zk], dim=-1))[..., 0]
        want = want + Normal(mean, 0.01 + torch.nn.functional.softplus(m.noise_raw)).log_prob(y[:, i]) - math.log(2 * math.pi)
    torch.testing.assert_close(m.log_joint(data, zk), want)


def test_model_meets_the_contract():
    from wakesleep.models.contract import GENERATIVE, TRAINING_WITH_PROPOSAL, check_model, check_shapes

    m = npx.NeuralProcess(n_points=6, z_dim=2, hidden=8, r_dim=5)
    members = GENERATIVE + TRAINING_WITH_PROPOSAL + ("log_proposal", "log_prior")
    check_model(m, members, "the test")
    check_shapes(m, npx.sine_data(4, 6)[0], members)


def test_set_features_and_encoder_ignore_order_and_masked_points():
    torch.manual_seed(1)
    f = npx.SetFeatures(hidden=8, out_dim=4).double()
    m = npx.NeuralProcess(n_points=6, z_dim=2, hidden=8, r_dim=5).double()
    data, _ = npx.sine_data(3, 6, seed=2)
    data = data.double()
    perm = torch.randperm(6)
    permuted = torch.cat([data[:, :6][:, perm], data[:, 6:][:, perm]], dim=1)
    torch.testing.assert_close(f(permuted), f(data))
    x, y = npx.split(data)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[:, :4] = True
    q_mask, q_cut = m.encode(x, y, mask), m.encode(x[:, :4], y[:, :4])
    torch.testing.assert_close(q_mask.loc, q_cut.loc)
    torch.testing.assert_close(q_mask.scale, q_cut.scale)
    with pytest.raises(ValueError):
        npx.split(torch.zeros(2, 5))


def test_predictive_estimator_is_unbiased_on_a_linear_gaussian_model():
    # z ~ N(0, I_2), y_i = φ(x_i)·z + ε_i, φ(x) = (sin x, cos x), ε ~ N(0, s²): the posterior of z given C
    # and the predictive of y_T given C are Gaussian in closed form.
    g = torch.Generator().manual_seed(0)
    s = 0.3
    xc, xt = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64), torch.tensor([0.0, 1.5], dtype=torch.float64)
    phi_c, phi_t = torch.stack([xc.sin(), xc.cos()], 1), torch.stack([xt.sin(), xt.cos()], 1)
    z_true = torch.tensor([1.2, -0.7], dtype=torch.float64)
    yc = phi_c @ z_true + s * torch.randn(3, generator=g, dtype=torch.float64)
    yt = phi_t @ z_true + s * torch.randn(2, generator=g, dtype=torch.float64)
    prec = torch.eye(2, dtype=torch.float64) + phi_c.T @ phi_c / s**2
    cov = torch.linalg.inv(prec)
    mean = cov @ phi_c.T @ yc / s**2
    exact = MultivariateNormal(phi_t @ mean, phi_t @ cov @ phi_t.T + s**2 * torch.eye(2, dtype=torch.float64)).log_prob(yt).exp()
    reps, k = 4000, 5
    z = MultivariateNormal(mean, cov).sample((k, reps))  # [K, R, 2]: exact posterior draws, R independent estimates
    ll_t = Normal(z @ phi_t.T, s).log_prob(yt).sum(-1)  # [K, R]
    p_hat = npx.predictive_log_likelihood(ll_t).exp()
    se = p_hat.std() / math.sqrt(reps)
    assert abs(p_hat.mean() - exact) < 4 * se
    # the self-normalised mode with prior draws converges to the same value (checked at K = 200000)
    zp = torch.randn(200000, 1, 2, dtype=torch.float64, generator=g)
    ll_c = Normal(zp @ phi_c.T, s).log_prob(yc).sum(-1)
    ll_tp = Normal(zp @ phi_t.T, s).log_prob(yt).sum(-1)
    snis = npx.predictive_log_likelihood(ll_tp, ll_c)
    # delta-method standard error of the self-normalised estimate μ̂ = Σ w f / Σ w (w = p(y_C | z), f = p(y_T | z)):
    # var μ̂ ≈ Σ w² (f − μ̂)² / (Σ w)², and of log μ̂ that over μ̂²; its O(1/K) bias is far smaller here
    w, f = (ll_c - ll_c.max()).exp()[:, 0], ll_tp.exp()[:, 0]
    se_log = ((w.square() * (f - snis.exp()).square()).sum().sqrt() / w.sum() / snis.exp()).item()
    assert abs(snis.item() - exact.log().item()) < 4 * se_log
    with pytest.raises(ValueError):
        npx.predictive_log_likelihood(ll_t, ll_t[:, :3])


def test_sine_data_has_stated_ranges_and_noise():
    data, params = npx.sine_data(2000, 10, seed=3)
    x, y = npx.split(data)
    a, b = params[:, :1], params[:, 1:]
    assert a.min() >= 0.1 and a.max() <= 5 and b.min() >= 0 and b.max() <= math.pi and x.abs().max() <= math.pi
    r = (y - a * torch.sin(x - b)).flatten()
    # the sample s.d. of 20000 normal residuals has standard error ≈ σ / sqrt(2n)
    assert abs(r.std().item() - npx.NOISE) < 4 * npx.NOISE / math.sqrt(2 * r.numel())


def test_alws_code_setup_has_its_ranges_and_sizes(tmp_path):
    """--setup alws-code: a in (−0.5, 1), b in (−0.5, 0.5), 4 context + 4 target points, N = 5000, Adam 1e-4;
    options given on the command line win; the default setup is unchanged."""
    a = npx.parse_args(["--setup", "alws-code"])
    assert (a.n_points, a.contexts, a.sleep_samples, a.lr) == (8, [4], 5000, 1e-4)
    data, params = npx.sine_data(4000, a.n_points, seed=5, a_range=a.a_range, b_range=a.b_range)
    amp, shift = params[:, 0], params[:, 1]
    assert data.shape == (4000, 16) and amp.min() >= -0.5 and amp.max() <= 1 and shift.min() >= -0.5 and shift.max() <= 0.5
    assert amp.min() < -0.45 and amp.max() > 0.95 and shift.min() < -0.45 and shift.max() > 0.45  # the whole ranges
    x, y = npx.split(data)
    assert x.abs().max() <= math.pi and (y - amp[:, None] * torch.sin(x - shift[:, None])).abs().max() < 1  # noise 0.1
    assert npx.parse_args(["--setup", "alws-code", "--sleep-samples", "50"]).sleep_samples == 50
    d = npx.parse_args([])
    assert (d.setup, d.n_points, d.contexts, d.sleep_samples, d.lr, d.a_range, d.b_range) == ("np", 20, [3, 10], 1000, 1e-3, npx.A_RANGE, npx.B_RANGE)
    out = npx.main(
        ["--setup", "alws-code", "--n-train", "50", "--n-test", "10", "--epochs", "1", "--sleep-samples", "60", "--sleep-steps", "3",
         "--k", "10", "--out", str(tmp_path), "--no-progress"]
    )  # fmt: skip
    assert math.isfinite(out["alws_pred_ll_c4"]) and math.isfinite(out["oracle_pred_ll_c4"])


def test_tiny_run_writes_figure_and_numbers(tmp_path, capsys):
    out = npx.main(
        ["--n-train", "100", "--n-test", "20", "--n-points", "8", "--contexts", "3", "--epochs", "1", "--sleep-samples", "100",
         "--sleep-steps", "5", "--k", "20", "--prior-k", "30", "--prior-n", "5", "--out", str(tmp_path), "--no-progress"]
    )  # fmt: skip
    for key in ("elbo_pred_ll_c3", "alws_pred_ll_c3", "oracle_pred_ll_c3", "alws_bayes_pred_ll_c3_first5", "alws_pred_ll_c3_first5"):
        assert math.isfinite(out[key])
    assert (tmp_path / "neural_process.png").exists()
    assert "alws_pred_ll_c3:" in capsys.readouterr().out
