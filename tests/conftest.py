import os
import pathlib
import shutil
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
os.environ.setdefault("WAKESLEEP_DATA_DIR", str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run of the command line's ``train`` (``cli_helpers.TINY``), once per test module."""
    from cli_helpers import TINY, run

    d = tmp_path_factory.mktemp("run")
    code, out, err = run(["train", *TINY, "--run-dir", str(d)])
    assert code == 0, err
    return d


@pytest.fixture
def copy(trained, tmp_path):
    """A copy of :func:`trained` that a test may damage."""
    d = tmp_path / "run"
    shutil.copytree(trained, d)
    return d
