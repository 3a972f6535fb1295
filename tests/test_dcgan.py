"""The DCGAN-style image model of ``examples/dcgan.py`` and ``experiments/alws_images.py``.

- log p(x | z) against torch.distributions (Bernoulli, Normal), and the exponential-family view
  η(z)·S(x) − Ψ(z) against log p(x | z) (exact: log h(x) = 0), in float64;
- the proposal: propose's log q equals log_proposal at the same z; reparameterised draws carry
  the gradient; the model meets the contract for ALWS, the VAE and RWS (shapes checked);
- ``wakesleep train --model examples/dcgan.py:grey`` then ``wakesleep fid RUN`` (the command's
  run path);
- the experiment's script at a tiny size: every method trains and is scored, and untrained-ish
  generators score far above the real-against-real floor.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wakesleep.estimators import ALWS, RWS, VAE
from wakesleep.models.contract import check_model, check_shapes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "experiments"))

import alws_images  # noqa: E402
import dcgan  # noqa: E402


@pytest.mark.parametrize("likelihood", dcgan.LIKELIHOODS)
def test_likelihood_against_torch_distributions_and_its_exponential_family(likelihood):
    torch.manual_seed(0)
    model = dcgan.DCGANModel(likelihood, width=4).double()
    with torch.no_grad():
        model.noise_raw.fill_(-0.3)
    b, k = 3, 2
    x = torch.rand(b, 784, dtype=torch.float64)
    if likelihood == "bernoulli":
        x = torch.bernoulli(x)
    z = torch.randn(k, b, 16, dtype=torch.float64)
    logits = model.logits(z)
    if likelihood == "bernoulli":
        ref = torch.distributions.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(-1)
    else:
        ref = torch.distributions.Normal(torch.sigmoid(logits), model.noise).log_prob(x).sum(-1)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(model.log_joint(x, z), prior + ref, rtol=1e-12, atol=1e-9)
    assert model.log_joint(x, z).shape == (k, b)
    # exponential family on n = B pairs (x_n, z_n)
    eta, psi = model.exponential_family(z[0])
    stats = model.sufficient_statistics(x)
    torch.testing.assert_close((eta * stats).sum(-1) - psi, model.log_likelihood(x, z[0]), rtol=1e-12, atol=1e-9)


def test_proposal_and_contract():
    torch.manual_seed(1)
    model = dcgan.DCGANModel("gaussian", width=4, encoder="mlp")
    x = torch.rand(5, 784)
    z, log_q = model.propose(x, 7)
    assert z.shape == (7, 5, 16) and log_q.shape == (7, 5) and not z.requires_grad and log_q.requires_grad
    torch.testing.assert_close(log_q, model.log_proposal(x, z))
    zr, _ = model.propose(x, 2, reparameterize=True)
    assert zr.requires_grad
    for model in (dcgan.grey(width=4), dcgan.binary(width=4)):
        xb = model.sample(4)[1]
        assert xb.shape == (4, 784) and model.sample_mean(4).shape == (4, 784)
        if model.binary_data:
            assert set(xb.unique().tolist()) <= {0.0, 1.0}
        for est in (ALWS(sleep_samples=10, krr="rff", num_features=20), VAE(), RWS(k=3, q_update="both")):
            check_model(model, est.requires(model), est.name)
            check_shapes(model, xb, est.requires(model))
    with pytest.raises(ValueError, match="784"):
        dcgan.grey(data_dim=100)
    with pytest.raises(ValueError, match="likelihood"):
        dcgan.DCGANModel("poisson")


@pytest.fixture(scope="module")
def data_dir():
    from wakesleep.data import resolve_data_dir

    root = resolve_data_dir()
    if not all((root / f).is_file() for f in ("mnist_test_gray.npz", "mnist_test_labels.npz", "binarized_mnist.npz")):
        pytest.skip("MNIST files not at hand (WAKESLEEP_DATA_DIR)")
    return root


def test_train_a_user_run_and_score_it(data_dir, tmp_path, capsys):
    from wakesleep.cli import main

    x = np.load(data_dir / "mnist_test_gray.npz")["data"][:60].reshape(60, 784).astype(np.float32) / 255
    np.savez(tmp_path / "d.npz", train=x[:40], valid=x[40:50], test=x[50:])
    run = tmp_path / "run"
    args = ["train", "--model", f"{ROOT / 'examples' / 'dcgan.py'}:grey", "--dataset", str(tmp_path / "d.npz"), "--algorithm", "vae"]
    args += ["--epochs", "1", "--batch-size", "20", "--valid-k", "5", "--test-k", "5", "--run-dir", str(run), "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    fid_args = ["fid", str(run), "--model", f"{ROOT / 'examples' / 'dcgan.py'}:grey", "--n", "100", "--epochs", "1", "--bootstrap", "10"]
    fid_args += ["--blocks", "5", "--no-progress"]  # the run's own model, named again: the run alone runs no code
    assert main([*fid_args, "--data-dir", str(data_dir), "--cache-dir", str(tmp_path)]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if ": " in line)
    assert lines["kind"] == "grey" and int(lines["n_samples"]) == 100
    assert float(lines["fid"]) > float(lines["fid_floor"]) > 0  # a generator after 2 steps is no digit source
    # a Gaussian model's draws leave [0, 1]: refused, naming the fix
    assert main([*fid_args, "--what", "draws", "--data-dir", str(data_dir), "--cache-dir", str(tmp_path)]) == 2
    assert "means" in capsys.readouterr().err


def test_experiment_script_at_a_tiny_size(data_dir, tmp_path, capsys):
    args = ["--dataset", "grey", "--cpu-minutes", "0.02", "--epochs", "1", "--train-n", "200", "--width", "4", "--sleep-samples", "100"]
    args += ["--valid-samples", "50", "--num-features", "50", "--n-score", "200", "--bootstrap", "10", "--classifier-epochs", "1"]
    args += ["--data-dir", str(data_dir), "--cache-dir", str(tmp_path), "--out", str(tmp_path / "out"), "--figure-prefix", str(tmp_path / "fig")]
    out = alws_images.main([*args, "--no-progress"])
    h = out["headline"]
    assert (tmp_path / "fig-grey.png").is_file() and (tmp_path / "out" / "summary.json").is_file()
    for method in alws_images.METHODS:
        assert out["results"]["grey"][method]["steps"] >= 1
        se = h[f"grey_{method}_fid_stderr"] + h["grey_fid_floor_stderr"]
        assert h[f"grey_{method}_fid"] > h["grey_fid_floor"] + 3 * se  # a few steps from the start: far from digits
        assert np.isfinite(h[f"grey_{method}_kid"]) and h[f"grey_{method}_kid_stderr"] > 0
    assert h["grey_training_images_fid"] < min(h[f"grey_{m}_fid"] for m in alws_images.METHODS)  # real digits beat untrained generators
    printed = capsys.readouterr().out
    assert "grey_alws_fid: " in printed and "grey_fid_floor: " in printed
