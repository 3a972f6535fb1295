"""Data that streams (wakesleep.training.stream): a callable sample(n, generator) or a DataLoader
as training data; validation every block of steps; a streamed run and its resume (at a block's
end and within a block) are bit-exact against an uninterrupted run."""

from __future__ import annotations

import json
import math

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


SIMULATOR_FILE = """
import torch

P = torch.linspace(0.1, 0.9, 12)


def make():
    def sample(n, generator):
        return (torch.rand(n, 12, generator=generator) < P).float()

    return sample
"""


def test_the_command_line_streams_from_a_factory_and_resumes_bit_exact(tmp_path):
    from cli_helpers import rejected, run

    (tmp_path / "sim.py").write_text(SIMULATOR_FILE)
    spec = f"{tmp_path / 'sim.py'}:make"
    base = [
        "train",
        "--data-from",
        spec,
        "--layers",
        "4",
        "--steps-per-epoch",
        "4",
        "--batch-size",
        "20",
        "--valid-k",
        "5",
        "--test-k",
        "5",
        "--no-progress",
    ]
    code, out, err = run([*base, "--epochs", "3", "--run-dir", str(tmp_path / "whole")])
    assert code == 0, err
    assert "streamed train, 1000 valid, 1000 test, D=12" in out
    assert run([*base, "--epochs", "1", "--run-dir", str(tmp_path / "cut")])[0] == 0
    rejected(
        ["train", "--resume", "--epochs", "3", "--no-progress", "--run-dir", str(tmp_path / "cut")],
        "opening a run runs no code it names",
        "--data-from",
    )
    rejected(  # an epoch's length is the run's: given otherwise with --resume it was once silently ignored
        ["train", "--resume", "--data-from", spec, "--steps-per-epoch", "9", "--epochs", "3", "--no-progress", "--run-dir", str(tmp_path / "cut")],
        "--steps-per-epoch 9 differs (the run has --steps-per-epoch 4)",
    )
    code, _, err = run(
        ["train", "--resume", "--data-from", spec, "--steps-per-epoch", "4", "--epochs", "3", "--no-progress", "--run-dir", str(tmp_path / "cut")]
    )
    assert code == 0, err
    whole, cut = (torch.load(tmp_path / r / CHECKPOINT, weights_only=True)["model"] for r in ("whole", "cut"))
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    rejected(
        ["train", "--steps-per-epoch", "4", "--dataset", "digits", "--run-dir", str(tmp_path / "x")], "--steps-per-epoch is for data that streams"
    )
    rejected([*base, "--dataset", "digits", "--run-dir", str(tmp_path / "y")], "drop --dataset/--data-dir")
    fixed = ["--layers", "4", "--dataset", "digits", "--valid-k", "2", "--test-k", "2", "--no-progress", "--run-dir", str(tmp_path / "fixed")]
    assert run(["train", *fixed, "--epochs", "1"])[0] == 0
    rejected(["train", "--resume", "--data-from", spec, "--epochs", "2", *fixed[-3:]], "trained on the fixed data set 'digits', not a stream")


def test_compare_streams_from_its_toml(tmp_path):
    from wakesleep.lab.compare import ConfigError, parse_config, run_compare

    (tmp_path / "sim.py").write_text(SIMULATOR_FILE)
    raw = {
        "name": "stream",
        "seeds": [0],
        "data": {"data_from": f"{tmp_path / 'sim.py'}:make"},
        "model": {"kind": "sbn", "layers": [3]},
        "train": {"epochs": 2, "batch_size": 20, "steps_per_epoch": 3, "valid_k": 3},
        "evaluate": {"test_k": 3, "test_n": 50, "valid_n": 50},
        "estimators": [{"label": "RWS", "algorithm": "rws", "settings": {"k": 3}}],
    }
    records, _, out = run_compare(parse_config(raw), tmp_path / "out", progress=False)
    assert records[0]["epochs"] == 2 and math.isfinite(records[0]["test_log_likelihood"])
    config = json.loads((out / "RWS" / "seed0" / "config.json").read_text())
    assert config["data"]["data_from"].endswith("sim.py:make")
    with pytest.raises(ConfigError, match="give one of dataset"):
        parse_config({**raw, "data": {"dataset": "digits", "data_from": raw["data"]["data_from"]}})


def test_a_one_shot_iterator_is_refused_and_a_sampler_that_ignores_its_generator_is_named():
    """A generator's first batch would go to the checks and its second pass find nothing; a sampler
    drawing from torch's global state resumes on other data."""
    batches = (torch.bernoulli(torch.full((10, D), 0.3)) for _ in range(3))
    with pytest.raises(ValueError, match="one-shot iterator"):
        fit(batches, None, epochs=1)
    with pytest.warns(UserWarning, match="did not draw from the generator"):
        fit(lambda n, g: torch.bernoulli(torch.full((n, D), 0.3)), None, epochs=1)
