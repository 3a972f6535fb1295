"""A hand-written model with a variable-size latent (``examples/objects.py``: a loop until a random
stop, the latent padded with a mask): its prior normalises over the 121 listed states, sleep draws
follow P(n), MWS keeps distinct latents and, with every state in memory, gives the exact
gradients, and RWS training from a wrong start recovers the truth."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from exactness import grads

import wakesleep as ws
from wakesleep.models.contract import check_shapes, states_against_batch
from wakesleep.models.exact import exact_theta_grad, exact_wake_phi_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import objects  # noqa: E402


def test_the_prior_normalises_and_sleep_draws_follow_it():
    model = objects.truth().double()
    states = model.enumerate_latents()
    assert states["count"].shape == (121,) and len({(c, *t) for c, t in zip(states["count"].tolist(), states["types"].tolist())}) == 121
    assert abs(torch.logsumexp(model.log_prior(states), 0).item()) < 1e-12
    torch.manual_seed(0)
    z, x = model.sample(20000)
    s = 0.6
    p = torch.tensor([s**n * (1 - s) for n in range(objects.N_MAX)] + [s**objects.N_MAX], dtype=torch.float64)
    counts = torch.bincount(z["count"], minlength=objects.N_MAX + 1).double()
    chi2 = ((counts - 20000 * p) ** 2 / (20000 * p)).sum().item()
    assert chi2 < 25.0, chi2  # χ²(4): P(> 25) ≈ 5e-5
    assert (z["types"][torch.arange(objects.N_MAX) >= z["count"][:, None]] == 0).all()  # canonical padding
    check_shapes(model, x, ["propose", "log_joint", "log_proposal", "sample", "log_prior"])


def test_mws_with_every_state_in_memory_gives_the_exact_gradients():
    torch.manual_seed(1)
    model = objects.Objects().double()
    x = objects.truth().double().sample(4)[1]
    est = ws.estimators.MemoisedWakeSleep(k=20, memory_size=130, q_update="wake")
    est.prepare(model, x)
    index = torch.arange(4)
    est(model, x, index)
    filled = est.memory_filled.sum(1)
    assert (filled >= 10).all() and (filled <= 121).all()
    states = torch.utils._pytree.tree_flatten(states_against_batch(model.enumerate_latents(), 4))[0]
    est.remember(index, states, torch.ones(121, 4, dtype=torch.bool))
    g = grads(model.p_parameters() + model.q_parameters(), -est(model, x, index).loss)
    assert est.memory_filled.sum(1).tolist() == [121] * 4  # every proposal a repeat of a held state
    n = sum(p.numel() for p in model.p_parameters())
    assert torch.allclose(g[:n], exact_theta_grad(model, x), rtol=1e-9, atol=1e-12)
    assert torch.allclose(g[n:], exact_wake_phi_target(model, x), rtol=1e-9, atol=1e-12)


def test_rws_recovers_the_truth_from_a_wrong_start(capsys):
    objects.main(["--n", "2000", "--epochs", "5", "--seed", "2"])
    lines = dict(line.split(": ") for line in capsys.readouterr().out.strip().splitlines())
    assert float(lines["type_error"]) < 0.5 * float(lines["type_error_before"]), lines
    assert float(lines["test_ll_learned"]) > float(lines["test_ll_true"]) - 0.1 and math.isfinite(float(lines["test_ll_learned"]))
