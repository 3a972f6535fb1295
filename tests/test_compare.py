"""The comparison configs shipped in experiments/ parse into the estimators they describe, and finished
runs are reused across harmless changes of the trainer's fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wakesleep.estimators import ALWS, ESTIMATORS
from wakesleep.kernels import MLPFeatures
from wakesleep.lab.compare import ConfigError, load_config, parse_config, run_compare

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def test_binarized_mnist_alws_row_parses_to_learned_feature_krr():
    cfg = load_config(EXPERIMENTS / "compare_binarized_mnist.toml")
    assert [s.label for s in cfg.estimators] == ["WS", "RWS K=5", "IWAE K=5", "ALWS"]
    spec = cfg.estimators[-1]
    est = ESTIMATORS[spec.algorithm](**spec.settings)
    assert isinstance(est, ALWS)
    s = est.settings()
    assert (s["target"], s["krr"], s["kernel"], s["features"]) == ("exp_family", "exact", "gaussian", "mlp")
    assert (s["sleep_samples"], s["valid_samples"], s["lam"], s["q_update"]) == (1000, 250, 1e-3, "sleep")
    # The TOML list feature_hidden = [256] builds a 784 -> 256 -> 32 feature network.
    features = [m for m in est.modules() if isinstance(m, MLPFeatures)]
    assert len(features) == 1
    widths = [(p.shape[1], p.shape[0]) for name, p in features[0].named_parameters() if name.endswith("weight")]
    assert widths == [(784, 256), (256, 32)]
    tcfg = cfg.train_config(spec, seed=1)
    assert tcfg.lr_estimator == 3e-3 and tcfg.max_seconds == 240 and tcfg.clock == "process" and tcfg.seed == 1
    # The other rows keep the shared learning rates.
    assert cfg.train_config(cfg.estimators[0], seed=0).lr_estimator == 1e-3


def test_alws_settings_the_estimator_rejects_name_the_row():
    raw = {
        "data": {"dataset": "digits"},
        "model": {"kind": "gaussian", "layers": [4]},
        "train": {"epochs": 1},
        "estimators": [{"label": "ALWS", "algorithm": "alws", "settings": {"features": "mlp"}}],  # no data_dim
    }
    with pytest.raises(ConfigError, match=r"estimators\[0\]\.settings.*data_dim"):
        parse_config(raw, "x.toml")


def tiny(**train) -> dict:
    """One estimator, one seed, one epoch on the embedded digits."""
    return {
        "name": "tiny",
        "seeds": [0],
        "threads": 1,
        "data": {"dataset": "digits"},
        "model": {"kind": "sbn", "layers": [8]},
        "train": {"epochs": 1, "batch_size": 100, "valid_k": 5, "clock": "process", **train},
        "evaluate": {"test_k": 10, "test_n": 20, "valid_n": 20},
        "estimators": [{"label": "WS", "algorithm": "ws"}],
    }


def test_a_run_recorded_before_a_trainer_field_existed_is_reused(tmp_path):
    out = tmp_path / "out"
    first, _, _ = run_compare(parse_config(tiny()), out, progress=False)
    run_json = out / "WS" / "seed0" / "run.json"
    recorded = json.loads(run_json.read_text())
    assert recorded["train"]["checkpoint_every"] is None
    # As written by a version of the trainer without checkpoint_every (default None): still this run.
    del recorded["train"]["checkpoint_every"]
    run_json.write_text(json.dumps(recorded))
    (out / "WS" / "seed0" / "metrics.jsonl").unlink()  # would be rewritten by a retrain
    again, _, _ = run_compare(parse_config(tiny()), out, progress=False)
    assert again == first and not (out / "WS" / "seed0" / "metrics.jsonl").exists()
    # A value other than the default is a different run.
    with pytest.raises(ConfigError, match="different config"):
        run_compare(parse_config(tiny(checkpoint_every=3)), out, progress=False)


def test_evaluate_and_sample_open_a_compare_run(tmp_path, capsys):
    from wakesleep.cli import main

    out = tmp_path / "out"
    run_compare(parse_config(tiny()), out, progress=False)
    run = out / "WS" / "seed0"
    assert (run / "config.json").is_file()  # one run-directory format: compare records its runs as `wakesleep train` does
    assert main(["evaluate", str(run), "--k", "10", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "test log-likelihood:" in said and "K=10, n=250" in said
    evaluations = json.loads((run / "summary.json").read_text())["evaluations"]
    assert evaluations[-1]["k"] == 10 and evaluations[-1]["n"] == 250
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    from wakesleep.runs import CheckpointError, load_run

    recorded = json.loads((run / "config.json").read_text())
    assert load_run(run)[1] == recorded
    (run / "config.json").unlink()  # a compare run written before compare recorded config.json: still read
    assert load_run(run)[1]["model"] == recorded["model"]
    (run / "run.json").write_text("{")
    with pytest.raises(CheckpointError, match="run.json is damaged"):
        load_run(run)


def test_key_lines_write_numbers_to_six_digits_and_the_rest_as_written():
    import numpy as np
    import torch

    from wakesleep.lab.tables import key_lines

    values = {"ll": -109.4712345, "steps": 1234567, "kind": "binary", "ok": True, "se": np.float32(0.25), "t": torch.tensor(1 / 3)}
    assert key_lines(values).splitlines() == ["ll: -109.471", "steps: 1234567", "kind: binary", "ok: True", "se: 0.25", "t: 0.333333"]
    with pytest.raises(TypeError):
        key_lines({"x": [1.0]})


@pytest.mark.parametrize("key, value", [("layers", [3, 10**20]), ("hidden", [2**31]), ("nade_hidden", 0)])
def test_absurd_layer_sizes_are_refused_by_the_config(key, value):
    raw = tiny()
    raw["model"] = {"kind": "gaussian" if key == "hidden" else "sbn", "layers": [3], key: value}
    if key == "nade_hidden":
        raw["model"]["p_layers"] = "nade"
    with pytest.raises(ConfigError, match=rf"model\.{key}: must be .*from 1 to 2\*\*30"):  # not an overflow inside torch
        parse_config(raw, "x.toml")


def test_one_seed_prints_a_dash_for_the_standard_error(tmp_path):
    from cli_helpers import run

    toml = tmp_path / "one.toml"
    toml.write_text(
        'name = "one"\nseeds = [0]\nthreads = 1\n[data]\ndataset = "digits"\n[model]\nkind = "sbn"\nlayers = [4]\n'
        "[train]\nepochs = 1\nvalid_k = 2\n[evaluate]\ntest_k = 5\ntest_n = 20\nvalid_n = 20\n"
        '[[estimators]]\nlabel = "WS"\nalgorithm = "ws"\n'
    )
    code, out, err = run(["compare", str(toml), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("| WS "))
    assert "nan" not in out and row.split("|")[5].strip() == "–", row
