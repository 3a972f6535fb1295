"""Numerical trouble: estimators stay finite where the math allows it; otherwise training stops
with an error naming the step, estimator and quantity, keeping the last good checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from exactness import grads, small_sbn

from wakesleep.estimators import IWAE, RWS
from wakesleep.evaluate import importance_log_marginal
from wakesleep.importance import effective_sample_size
from wakesleep.runs import CHECKPOINT, load_checkpoint
from wakesleep.training import train


class Shifted(torch.nn.Module):
    """Wraps a model, adding a constant to log p(x, z) per datapoint (e.g. −inf, or ±1e4)."""

    def __init__(self, model, shift):
        super().__init__()
        self.model, self.shift = model, shift
        self.data_dim, self.latent_sizes = model.data_dim, model.latent_sizes

    def propose(self, x, k, reparameterize=False):
        return self.model.propose(x, k, reparameterize)

    def log_joint(self, x, zs):
        return self.model.log_joint(x, zs) + self.shift

    def log_proposal(self, x, zs):
        return self.model.log_proposal(x, zs)

    def sample(self, n):
        return self.model.sample(n)

    def log_weights(self, x, k):
        with torch.no_grad():
            zs, lq = self.propose(x, k)
            return self.log_joint(x, zs) - lq


@pytest.fixture
def sbn():
    model = small_sbn()
    torch.manual_seed(0)
    _, x = model.sample(3)
    return model, x


def test_all_minus_inf_log_weights_for_one_datapoint(sbn):
    model, x = sbn
    shift = torch.tensor([-math.inf, 0.0, 0.0], dtype=x.dtype)
    wrapped = Shifted(model, shift)
    out = RWS(k=4)(wrapped, x)
    assert torch.isfinite(out.loss)
    assert out.metrics["dead_datapoints"].item() == 1
    g = grads(model.p_parameters() + model.q_parameters(), out.loss)
    assert torch.isfinite(g).all()
    # Evaluation reports log p(x) = −inf for that datapoint and finite values for the others.
    ll = importance_log_marginal(wrapped, x, 50)
    assert ll[0].item() == -math.inf and torch.isfinite(ll[1:]).all()


@pytest.mark.parametrize("shift", [1e4, -1e4, 3e38])
def test_huge_log_weights_do_not_overflow(sbn, shift):
    model, x = sbn
    wrapped = Shifted(model, torch.full((3,), shift, dtype=x.dtype))
    out = RWS(k=5)(wrapped, x)
    assert torch.isfinite(out.loss) and torch.isfinite(out.metrics["ess"])
    assert torch.isfinite(grads(model.p_parameters(), out.loss)).all()
    ll = importance_log_marginal(wrapped, x, 20)
    assert torch.isfinite(ll).all()
    # Normalised weights do not depend on a shift that float64 can still resolve.
    if abs(shift) < 1e6:
        lw = wrapped.log_weights(x, 7)
        assert torch.allclose(effective_sample_size(lw), effective_sample_size(lw - shift), rtol=1e-6)


def test_iwae_with_no_finite_weight_is_a_named_training_error(tmp_path):
    """IWAE's bound is −inf when every weight is 0: the math allows no finite answer, so training
    is refused, naming the member and what went non-finite, and the last good checkpoint survives."""
    from wakesleep.models import HelmholtzMachine

    torch.manual_seed(0)
    model = HelmholtzMachine.gaussian([6, 2], hidden=(4,))
    x = torch.bernoulli(torch.full((40, 6), 0.5))
    train(model, IWAE(3), x, epochs=1, batch_size=20, run_dir=tmp_path, progress=False)
    good = load_checkpoint(tmp_path / CHECKPOINT)
    with torch.no_grad():
        model.generative[0].net[-1].bias.fill_(float("inf"))
    # Now caught before the first step (the checks name the member that returned NaN); a value that
    # goes non-finite only at a later step is the trainer's TrainingError (tests/test_train.py).
    with pytest.raises(ValueError, match=r"log_joint returned NaN.*before any training step"):
        train(model, IWAE(3), x, epochs=2, batch_size=20, run_dir=tmp_path, resume=False, progress=False)
    after = load_checkpoint(tmp_path / CHECKPOINT)
    # The failed run started over in the same directory; its first epoch never completed, so the
    # checkpoint on disk is still the good one.
    for k in good["model"]:
        assert torch.equal(good["model"][k], after["model"][k])
