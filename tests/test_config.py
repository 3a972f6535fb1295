"""One grammar and one registry (wakesleep.config): the command line, compare's TOML and diagnose's
strings give the same estimator and model, built in one place; one run-directory record."""

import json

import pytest

import wakesleep as ws
from wakesleep import config
from wakesleep.cli import build_parser, estimator_settings, main
from wakesleep.config import Setting, build_estimator, build_model, estimator_parameters, model_record


def test_estimator_settings_come_from_the_constructor():
    params = estimator_parameters("rws")
    assert list(params)[:2] == ["k", "q_update"] and params["k"].default == 5
    assert estimator_parameters("vae")["k"].default == 1
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        estimator_parameters("nope")
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        build_estimator("nope", {})


def test_the_three_grammars_give_one_estimator():
    a = build_parser().parse_args(["train", "--algorithm", "rws", "--k", "8", "--q-update", "wake"])
    from_cli = Setting.of(a.algorithm, **estimator_settings(a))
    from_string = Setting.parse("rws:k=8,q_update=wake")
    from_toml = Setting.of("rws", **{"k": 8, "q_update": "wake"})  # an [[estimators]] table's settings
    assert from_cli == from_string == from_toml
    assert from_cli.build().settings()["k"] == 8


@pytest.mark.parametrize(
    "argv, settings",
    [
        (["--algorithm", "vae", "--k", "5"], {"k": 5}),
        (["--algorithm", "ws"], {"samples": 1}),
        (["--algorithm", "rws", "--defensive", "0.2"], {"k": 5, "q_update": "both", "defensive": 0.2}),
        (["--algorithm", "nvil", "--k", "3"], {"k": 3, "data_dim": 64}),
    ],
)
def test_command_line_settings(argv, settings):
    assert estimator_settings(build_parser().parse_args(["train", *argv]), 64) == settings


def test_vae_with_k_trains_with_k_particles(tmp_path):
    """``--algorithm vae --k 5`` once became k = 1; VAE takes k, so the run records and uses 5."""
    run = tmp_path / "vae"
    code = main(
        [
            "train",
            "--algorithm",
            "vae",
            "--k",
            "5",
            "--model",
            "gaussian",
            "--layers",
            "2",
            "--hidden",
            "8",
            "--epochs",
            "1",
            "--test-k",
            "5",
            "--valid-k",
            "5",
            "--no-progress",
            "--run-dir",
            str(run),
        ]
    )
    assert code == 0
    assert json.loads((run / "config.json").read_text())["estimator"] == {"k": 5}
    assert ws.VAE(**json.loads((run / "config.json").read_text())["estimator"]).k == 5


def test_a_model_table_and_its_record_build_one_model():
    table = {"kind": "gaussian", "layers": [3], "hidden": [8], "likelihood": "bernoulli"}
    record = model_record(table, 10)
    assert record == {"kind": "gaussian", "sizes": [10, 3], "hidden": [8], "likelihood": "bernoulli"}
    model = build_model(table, 10)
    assert model.config["sizes"] == [10, 3] and model.config["hidden"] == [8]
    assert set(config.MODEL_KINDS) == {"sbn", "gaussian"}


def test_tensorboard_is_an_option_of_train_given_only_when_asked():
    assert build_parser().parse_args(["train", "--tensorboard"]).tensorboard is True
    assert build_parser().parse_args(["train"]).tensorboard is False
