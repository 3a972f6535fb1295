"""The trainer: learning happens, resume reproduces an uninterrupted run, files are consistent."""

from __future__ import annotations

import json

import pytest
import torch

from wakesleep.data import digits
from wakesleep.estimators import IWAE, RWS, WakeSleep
from wakesleep.evaluate import exact_log_likelihood
from wakesleep.models import HelmholtzMachine
from wakesleep.models.probes import ModelCheckError
from wakesleep.runs import BEST, CHECKPOINT, METRICS, CheckpointError
from wakesleep.training import TrainConfig, TrainingError, train


@pytest.fixture(scope="module")
def data():
    return digits()


def small(seed=0, latents=8):
    torch.manual_seed(seed)
    return HelmholtzMachine.sbn([64, latents])


def test_rws_training_raises_the_exact_likelihood(data):
    """On an 8-latent SBN the exact test log-likelihood must rise by far more than evaluation noise (none: it is exact)."""
    model = small()
    before = exact_log_likelihood(model, data.test)
    fit = train(model, RWS(k=5), data.train, data.valid, epochs=15, batch_size=50, lr_p=3e-3, lr_q=3e-3, progress=False, valid_k=20)
    after = exact_log_likelihood(model, data.test)
    assert after.mean > before.mean + 5, (before, after)
    assert len(fit.history) == 15 and fit.best_epoch is not None


@pytest.mark.parametrize("estimator", [RWS(k=3), WakeSleep()])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, data, estimator):
    cfg = dict(batch_size=100, lr_p=3e-3, lr_q=3e-3, progress=False, valid_k=5, seed=3, patience=None)
    whole = small(seed=1)
    torch.manual_seed(7)
    train(whole, estimator, data.train[:400], data.valid[:50], epochs=4, run_dir=tmp_path / "a", **cfg)

    part = small(seed=1)
    torch.manual_seed(7)
    train(part, estimator, data.train[:400], data.valid[:50], epochs=2, run_dir=tmp_path / "b", **cfg)
    resumed = small(seed=99)  # a fresh process would start from other parameters
    torch.manual_seed(12345)  # ...and another RNG state
    fit = train(resumed, estimator, data.train[:400], data.valid[:50], epochs=4, run_dir=tmp_path / "b", resume=True, **cfg)

    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=False)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["epoch"] for r in fit.history] == [1, 2, 3, 4]
    recs = [json.loads(line) for line in (tmp_path / "b" / METRICS).read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "a" / METRICS).read_text().splitlines()]
    assert [r["valid_log_likelihood"] for r in recs] == [r["valid_log_likelihood"] for r in ref]


def test_best_parameters_are_restored(tmp_path, data):
    model = small()
    fit = train(model, RWS(k=2), data.train[:200], data.valid[:50], epochs=3, run_dir=tmp_path, progress=False, valid_k=5)
    best = torch.load(tmp_path / BEST, weights_only=False)
    assert best["epoch"] == fit.best_epoch
    for k, v in model.state_dict().items():
        assert torch.equal(v, best["model"][k])


def test_resume_rejects_a_different_model(tmp_path, data):
    train(small(), RWS(k=2), data.train[:100], None, epochs=1, run_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="model"):
        train(small(latents=9), RWS(k=2), data.train[:100], None, epochs=2, run_dir=tmp_path, resume=True, progress=False)


def test_resume_without_checkpoint_names_the_file(tmp_path, data):
    with pytest.raises(CheckpointError, match="checkpoint"):
        train(small(), RWS(k=2), data.train[:100], None, epochs=2, run_dir=tmp_path, resume=True, progress=False)


def test_truncated_checkpoint_is_reported(tmp_path, data):
    train(small(), RWS(k=2), data.train[:100], None, epochs=1, run_dir=tmp_path, progress=False)
    raw = (tmp_path / CHECKPOINT).read_bytes()
    (tmp_path / CHECKPOINT).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        train(small(), RWS(k=2), data.train[:100], None, epochs=2, run_dir=tmp_path, resume=True, progress=False)


def test_bad_settings_and_data_are_rejected(data):
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr_p"):
        TrainConfig(lr_p=-1.0)
    with pytest.raises(ValueError, match="binarise"):
        train(small(), RWS(), data.train * 0.5, progress=False, epochs=1)
    with pytest.raises(ValueError, match="width"):
        train(small(), RWS(), data.train[:, :10], progress=False, epochs=1)
    with pytest.raises(ValueError, match="NaN"):
        bad = data.train.clone()
        bad[0, 0] = float("nan")
        train(small(), RWS(), bad, progress=False, epochs=1)
    with pytest.raises(ValueError, match="rws"):
        train(small(), IWAE(5), data.train, progress=False, epochs=1)


def test_nonfinite_loss_stops_or_is_skipped(data):
    model = small()
    with torch.no_grad():
        model.generative[0].net.bias[0] = float("nan")
    with pytest.raises(ModelCheckError, match="HelmholtzMachine.log_joint returned NaN .* before any training step"):
        train(model, RWS(k=2), data.train[:100], epochs=1, progress=False)  # refused before the first step

    class NaNOnLargeBatches(type(model)):  # finite on the checks' three datapoints, NaN on a training batch
        def log_joint(self, x, z):
            return super().log_joint(x, z) + (float("nan") if x.shape[0] > 3 else 0.0)

    model = small()
    model.__class__ = NaNOnLargeBatches
    with pytest.raises(TrainingError, match="step 1 .*rws.*non-finite loss.*NaNOnLargeBatches.log_joint returned non-finite"):
        train(model, RWS(k=2), data.train[:100], epochs=1, progress=False)
    fit = train(model, RWS(k=2), data.train[:100], epochs=1, progress=False, nan_policy="skip")
    assert fit.skipped_steps == 1
