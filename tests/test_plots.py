"""Tests of wakesleep.plots: each plot writes a real PNG, atomically; read_jsonl's tolerance."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
import torch

from wakesleep import plots
from wakesleep.data import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 0 and img.shape[1] > 0
    assert img.std() > 0  # something was drawn
    # The atomic write leaves no temporary file behind.
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    return img


def test_tile_images_places_images_upright_in_reading_order():
    # Image i is constant i/10 except its top-left pixel, which is 1: catches transposes/flips.
    h, w = 2, 3
    x = np.repeat(np.arange(5, dtype=np.float32)[:, None] / 10, h * w, axis=1)
    x[:, 0] = 1.0
    grid = plots.tile_images(x, (h, w), nrow=2, padding=1, pad_value=-1)
    assert grid.shape == (3 * (h + 1) + 1, 2 * (w + 1) + 1)
    for i in range(5):
        r, c = divmod(i, 2)
        cell = grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w]
        assert np.array_equal(cell, x[i].reshape(h, w))
    assert (grid[7:9, 5:8] == -1).all()  # the sixth cell (row 2, column 1) is empty padding
    assert (grid[0] == -1).all() and (grid[:, 0] == -1).all()


def test_tile_images_rejects_wrong_width():
    with pytest.raises(ValueError, match=r"\[n, 6\]"):
        plots.tile_images(np.zeros((4, 5)), (2, 3))


def test_sample_grid_png(tmp_path):
    x = torch.rand(10, 64, requires_grad=True)  # tensors with grad are accepted
    path = plots.sample_grid(x, (8, 8), tmp_path / "sub" / "grid.png", title="samples")
    assert path == tmp_path / "sub" / "grid.png"
    assert_png(path)
    out = plots.sample_grid(np.eye(5, 64), None, tmp_path / "heat.png")
    assert_png(out)
    with pytest.raises(ValueError, match="shape"):
        plots.sample_grid(np.zeros((0, 64)), (8, 8), tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_sample_grid_overwrites_atomically(tmp_path):
    path = tmp_path / "g.png"
    plots.sample_grid(np.zeros((4, 4)), (2, 2), path)
    first = path.read_bytes()
    plots.sample_grid(np.ones((4, 4)) * np.eye(4), (2, 2), path)
    assert path.read_bytes() != first
    assert_png(path)


def test_learning_curves_png(tmp_path):
    records = [
        {"epoch": 1, "train_objective": -60.1, "valid_log_likelihood": -58.0, "time": 12.3},
        {"epoch": 2, "train_objective": -55.0, "time": 24.0, "note": "no valid this epoch"},
        {"epoch": 3, "train_objective": -52.5, "valid_log_likelihood": -53.1, "time": 36.1, "converged": False},
    ]
    assert_png(plots.learning_curves(records, tmp_path / "curves.png"))
    assert_png(plots.learning_curves(records, tmp_path / "two.png", keys=["valid_log_likelihood"], x="time"))
    with pytest.raises(ValueError, match=r"\['nope'\] in no record"):
        plots.learning_curves(records, tmp_path / "x.png", keys=["nope"])
    with pytest.raises(ValueError, match="no records"):
        plots.learning_curves([], tmp_path / "x.png")


def test_comparison_plot_png(tmp_path):
    series = {
        "RWS K=5": [(10.0, -95.0, 0.5), (1.0, -110.0, 1.0), (100.0, -90.0, 0.3)],
        "VAE": [(1.0, -112.0), (10.0, -100.0), (100.0, -96.0)],
    }
    path = plots.comparison_plot(series, tmp_path / "cmp.png", "time (s)", "test log-likelihood (nats)", title="estimators")
    inside = assert_png(path)
    # Legend under the axes: the figure grows by the legend's height; the axes keep the top rows.
    below = assert_png(
        plots.comparison_plot(series, tmp_path / "below.png", "time (s)", "test log-likelihood (nats)", title="estimators", legend_below=True)
    )
    assert below.shape[1] == inside.shape[1] and below.shape[0] > inside.shape[0]
    with pytest.raises(ValueError, match="'bad'"):
        plots.comparison_plot({"bad": [(1.0, 2.0), (1.0, 2.0, 0.1)]}, tmp_path / "b.png", "x", "y")


def test_read_jsonl_skips_truncated_last_line(tmp_path):
    recs = [{"epoch": i, "loss": -1.0 * i} for i in range(3)]
    path = tmp_path / "metrics.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in recs)
    path.write_text(text + '{"epoch": 3, "lo')  # an interrupted writer
    with pytest.warns(UserWarning, match="unparseable last line 4"):
        assert plots.read_jsonl(path) == recs
    path.write_text(text + "\n")  # trailing blank lines are fine
    assert plots.read_jsonl(path) == recs


def test_read_jsonl_rejects_corrupt_middle_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n{"epoch": 1,,}\n{"epoch": 2}\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        plots.read_jsonl(path)
    path.write_text('{"epoch": 0}\n[1, 2]\n')
    with pytest.raises(DataError, match="line 2 is JSON list"):
        plots.read_jsonl(path)
    with pytest.raises(DataError, match="cannot read"):
        plots.read_jsonl(tmp_path / "absent.jsonl")
