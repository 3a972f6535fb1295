"""Data that streams (wakesleep.training.stream): a callable sample(n, generator) or a DataLoader
as training data; validation every block of steps; a streamed run and its resume (at a block's
end and within a block) are bit-exact against an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import wakesleep as ws
from wakesleep.runs import CHECKPOINT, METRICS

D = 8
TRUE_P = torch.linspace(0.1, 0.9, D)
VALID = (torch.rand(20, D, generator=torch.Generator().manual_seed(9)) < TRUE_P).float()


def simulator(n, generator):
    """Fresh binary data from a fixed factorial Bernoulli: n draws [n, D]."""
    return (torch.rand(n, D, generator=generator) < TRUE_P).float()


class Interrupted(Exception):
    pass


def interrupted_after(calls):
    """The simulator, raising at its ``calls + 1``-th training call (the checks' probe draws from a copy)."""
    count = {"n": 0}

    def sample(n, generator):
        count["n"] += 1
        if count["n"] > calls:
            raise Interrupted
        return simulator(n, generator)

    return sample


def fit(data, run, epochs, resume=False, **kw):
    torch.manual_seed(0)
    model = ws.models.HelmholtzMachine.sbn([D, 4])
    settings = dict(epochs=epochs, batch_size=10, steps_per_epoch=3, valid_k=5, progress=False, patience=None, seed=3) | kw
    result = ws.train(model, ws.RWS(k=3, q_update="both"), data, valid=VALID, run_dir=run, resume=resume, **settings)
    return model, result


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_simulator_trains_and_validates_every_block(tmp_path):
    model, result = fit(simulator, tmp_path / "a", epochs=2)
    assert [r["step"] for r in result.history] == [3, 6]
    assert all("valid_log_likelihood" in r for r in result.history)
    lines = (tmp_path / "a" / METRICS).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_a_streamed_run_and_its_resume_are_bit_exact(tmp_path):
    whole, whole_fit = fit(simulator, tmp_path / "whole", epochs=3)
    fit(simulator, tmp_path / "cut", epochs=1)  # stopped at a block's end
    resumed, resumed_fit = fit(simulator, tmp_path / "cut", epochs=3, resume=True)
    assert same(params(whole), params(resumed))
    assert [r["valid_log_likelihood"] for r in whole_fit.history] == [r["valid_log_likelihood"] for r in resumed_fit.history]
    # Interrupted within a block, after a checkpoint at step 5 (block 2, its second step).
    with pytest.raises(Interrupted):
        fit(interrupted_after(6), tmp_path / "mid", epochs=3, checkpoint_every=5)
    assert torch.load(tmp_path / "mid" / CHECKPOINT, weights_only=True)["batch"] == 2
    resumed, _ = fit(simulator, tmp_path / "mid", epochs=3, resume=True, checkpoint_every=5)
    assert same(params(whole), params(resumed))


def test_a_dataloader_with_its_own_generator_resumes_bit_exact_mid_pass(tmp_path):
    data = (torch.rand(50, D, generator=torch.Generator().manual_seed(1)) < TRUE_P).float()

    def loader():
        return DataLoader(TensorDataset(data), batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(4))

    whole, _ = fit(loader(), tmp_path / "whole", epochs=3)  # 9 steps: passes of 5 batches
    fit(loader(), tmp_path / "cut", epochs=1)  # 3 steps: stopped within the first pass
    resumed, _ = fit(loader(), tmp_path / "cut", epochs=3, resume=True)
    assert same(params(whole), params(resumed))


def test_streams_are_refused_where_they_cannot_work(tmp_path):
    with pytest.raises(ValueError, match="steps_per_epoch is for a stream"):
        fit(VALID, None, epochs=1)
    with pytest.raises(ValueError, match="keeps per-datapoint state"):
        ws.train(ws.models.HelmholtzMachine.sbn([D, 4]), ws.estimators.MemoisedWakeSleep(k=2), simulator, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"returned shape \(10,\)"):
        fit(lambda n, g: torch.zeros(10), None, epochs=1)
    with pytest.raises(ValueError, match="values outside"):
        fit(lambda n, g: torch.full((n, D), 0.5), None, epochs=1)
