"""Plots: sample grids, learning curves, comparison plots; and reading metrics JSON-lines files.

Figures are drawn with matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never
through pyplot, so no display is needed, no global backend is switched, and no figure is left
open. Every plot is written atomically: to a temporary file in the target directory, then renamed
with ``os.replace``, so an interrupted run never leaves a half-written image under the final name.
The file format follows the path's suffix (``.png`` if it has none).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from wakesleep.data import DataError
from wakesleep.io import atomic_save_figure

__all__ = ["tile_images", "sample_grid", "learning_curves", "read_jsonl", "comparison_plot"]


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def _save_atomic(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    return atomic_save_figure(fig, path, dpi)


def tile_images(
    x: np.ndarray | torch.Tensor,
    image_shape: tuple[int, int],
    nrow: int | None = None,
    padding: int = 1,
    pad_value: float = 0.5,
) -> np.ndarray:
    """Tile flattened images into one 2-D array, row by row (like ``torchvision.utils.make_grid``).

    Args:
        x: [n, H*W] images, each flattened row-major (the layout of :class:`wakesleep.data.Dataset`).
        image_shape: (H, W).
        nrow: images per grid row; default ``ceil(sqrt(n))``.
        padding: pixels between and around images.
        pad_value: value of the padding (0.5: grey, visible against both black and white).

    Returns:
        float32 array [rows * (H + padding) + padding, nrow * (W + padding) + padding]; image i
        sits in grid row ``i // nrow``, column ``i % nrow``; unused cells hold ``pad_value``.

    Raises:
        ValueError: x is not [n, H*W] with n >= 1, or nrow < 1.
    """
    a = _numpy(x)
    h, w = (int(s) for s in image_shape)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] != h * w:
        raise ValueError(f"tile_images: expected images [n, H*W] = [n, {h * w}] for image_shape {(h, w)}, got shape {a.shape}")
    n = a.shape[0]
    ncol = nrow if nrow is not None else math.ceil(math.sqrt(n))
    if ncol < 1:
        raise ValueError(f"tile_images: nrow must be >= 1, got {nrow}")
    nrows = math.ceil(n / ncol)
    grid = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value, dtype=np.float32)
    for i, img in enumerate(a.reshape(n, h, w)):
        r, c = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top : top + h, left : left + w] = img
    return grid


def sample_grid(
    x: np.ndarray | torch.Tensor,
    image_shape: tuple[int, int] | None,
    path: str | os.PathLike,
    nrow: int | None = None,
    title: str | None = None,
) -> Path:
    """Save datapoints or model samples as a grid of grey images.

    Args:
        x: [n, D] values in [0, 1] (probabilities or binary samples; values outside are clipped
            by the colour scale). 0 is black, 1 is white.
        image_shape: (H, W) with H * W = D to draw each row as an image (row-major, upright); None
            to draw the rows of x as a heatmap [n, D] instead.
        path: output file; parent directories are created.
        nrow: images per grid row; default ``ceil(sqrt(n))``.
        title: optional figure title.

    Returns:
        The path written.

    Raises:
        ValueError: x is not [n, D] with n >= 1, or image_shape does not match D.
    """
    a = _numpy(x)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"sample_grid: expected x of shape [n, D] with n >= 1, got {a.shape}")
    if image_shape is not None:
        img = tile_images(a, image_shape, nrow=nrow)
        # Each grid pixel becomes k x k output pixels (integer, so nearest-neighbour stays
        # crisp), giving an image about 512 pixels across.
        k, dpi = max(1, round(512 / max(img.shape))), 100
        w_in, h_in, title_in = img.shape[1] * k / dpi, img.shape[0] * k / dpi, 0.35 * bool(title)
        fig = Figure(figsize=(w_in, h_in + title_in))
        ax = fig.add_axes((0, 0, 1, h_in / (h_in + title_in)))
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_axis_off()
        if title:
            fig.text(0.5, 1 - 0.5 * title_in / (h_in + title_in), title, ha="center", va="center")
        return _save_atomic(fig, path, dpi=dpi)
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(a, cmap="gray", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xlabel("dimension")
    ax.set_ylabel("datapoint")
    fig.colorbar(im, ax=ax)
    if title:
        ax.set_title(title)
    return _save_atomic(fig, path)


def samples_against_data(
    samples: np.ndarray | torch.Tensor, data: np.ndarray | torch.Tensor | None, path: str | os.PathLike, max_dims: int = 4
) -> Path:
    """Model samples beside the data, for data that are not images: a scatter of both for D = 2,
    otherwise density histograms of each of the first ``max_dims`` dimensions.

    Args:
        samples: [n, D] draws x ~ p_θ(x).
        data: [m, D] data (e.g. the training set), or None to draw the samples alone.
        path: output PNG (written atomically; parent directories are created).

    Returns:
        The path written.

    Raises:
        ValueError: samples not [n, D] with n ≥ 1, or data of another width.
    """
    a = _numpy(samples)
    d = None if data is None else _numpy(data)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"samples_against_data: expected samples of shape [n, D] with n >= 1, got {a.shape}")
    if d is not None and (d.ndim != 2 or d.shape[1] != a.shape[1]):
        raise ValueError(f"samples_against_data: data of shape {d.shape} do not match samples of width {a.shape[1]}")
    if a.shape[1] == 2:
        fig = Figure(figsize=(5, 5), layout="constrained")
        ax = fig.add_subplot()
        if d is not None:
            ax.scatter(d[:, 0], d[:, 1], s=3, alpha=0.4, label=f"data ({len(d)})")
        ax.scatter(a[:, 0], a[:, 1], s=3, alpha=0.4, label=f"model samples ({len(a)})")
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(loc="upper right")
        ax.set_title("model samples against the data")
        return _save_atomic(fig, path)
    dims = min(a.shape[1], max_dims)
    fig = Figure(figsize=(4 * dims, 3.2), layout="constrained")
    for j in range(dims):
        ax = fig.add_subplot(1, dims, j + 1)
        both = a[:, j] if d is None else np.concatenate([a[:, j], d[:, j]])
        bins = np.histogram_bin_edges(both[np.isfinite(both)], bins=60)
        if d is not None:
            ax.hist(d[:, j], bins=bins, density=True, alpha=0.5, label="data")
        ax.hist(a[:, j], bins=bins, density=True, alpha=0.5, label="model samples")
        ax.set_xlabel(f"x[{j}]")
        if j == 0:
            ax.set_ylabel("density")
            ax.legend()
    fig.suptitle(
        f"model samples against the data (first {dims} of {a.shape[1]} dimensions)" if a.shape[1] > dims else "model samples against the data"
    )
    return _save_atomic(fig, path)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines metrics file: one JSON object per line, blank lines ignored.

    A writer that was interrupted may leave a truncated final line: an unparseable *last* line
    is skipped with a warning. An unparseable line anywhere else means the file is corrupt.

    Returns:
        The records, in file order.

    Raises:
        DataError: the file is missing or unreadable, a line other than the last is not valid
            JSON, or a line holds JSON that is not an object.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read metrics file ({err})") from err
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    records = []
    for j, (lineno, line) in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            if j == len(lines) - 1:
                warnings.warn(f"{path}: skipping unparseable last line {lineno} (an interrupted write?): {line[:80]!r}", stacklevel=2)
                break
            raise DataError(
                f"{path}: line {lineno} is not valid JSON ({err.msg}): {line[:80]!r}; the file "
                "is corrupt in the middle, not just truncated; repair or delete that line"
            ) from err
        if not isinstance(rec, dict):
            raise DataError(f"{path}: line {lineno} is JSON {type(rec).__name__}, not an object {{...}}; each line must be one record")
        records.append(rec)
    return records


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def learning_curves(
    records: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    keys: Sequence[str] | None = None,
    x: str = "epoch",
) -> Path:
    """Plot metrics against ``x``, one panel per metric, stacked, sharing the x axis.

    Args:
        records: dicts, e.g. from :func:`read_jsonl`, such as
            ``{"epoch": 1, "train_objective": -60.1, "valid_log_likelihood": -58.0, "time": 12.3}``.
        path: output file; parent directories are created.
        keys: metrics to plot, in this order; default every key with a numeric value (bool
            excluded) in some record, except ``x``, in order of first appearance.
        x: the key for the horizontal axis. Records without it, or without a numeric value for a
            metric, are skipped for that metric; if no record has ``x``, the record index is used.

    Returns:
        The path written.

    Raises:
        ValueError: no records, no numeric metric to plot, or a requested key absent from every
            record.
    """
    if not records:
        raise ValueError("learning_curves: no records to plot")
    if keys is None:
        keys = list(dict.fromkeys(k for r in records for k, v in r.items() if k != x and _is_number(v)))
        if not keys:
            raise ValueError(f"learning_curves: no numeric metrics besides {x!r} in the records")
    else:
        present = {k for r in records for k in r}
        absent = [k for k in keys if k not in present]
        if absent:
            raise ValueError(f"learning_curves: key(s) {absent} in no record; available: {sorted(present)}")
    use_index = not any(_is_number(r.get(x)) for r in records)

    fig = Figure(figsize=(6, 2.2 * len(keys) + 0.4), layout="constrained")
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        pts = [(i if use_index else r.get(x), r.get(key)) for i, r in enumerate(records)]
        pts = [(u, v) for u, v in pts if _is_number(u) and _is_number(v)]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="." if len(pts) < 50 else None)
        ax.set_title(key.replace("_", " "))
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("record" if use_index else x)
    return _save_atomic(fig, path)


def comparison_plot(
    series: Mapping[str, Sequence[Sequence[float]]],
    path: str | os.PathLike,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    logx: bool = False,
    logy: bool = False,
    legend_below: bool = False,
) -> Path:
    """One line per named series, e.g. held-out log-likelihood (nats) against time (s) for
    several estimators.

    Args:
        series: name -> points; each point ``(x, y)`` or ``(x, y, se)`` with ``se`` the standard
            error drawn as an error bar (all points of one series must have the same length).
            Points are sorted by x.
        path: output file; parent directories are created.
        xlabel: the x axis's label (put the units in it).
        ylabel: the y axis's label.
        title: optional title.
        logx: a logarithmic x axis (e.g. error against time per estimate).
        logy: a logarithmic y axis.
        legend_below: put the legend under the axes (the figure grows to fit it), for many or
            long series names that would cover the data inside the axes.

    Returns:
        The path written.

    Raises:
        ValueError: no series, an empty series, or points that are not all 2- or all 3-tuples.
    """
    if not series:
        raise ValueError("comparison_plot: no series to plot")
    fig = Figure(figsize=(6, 4 + (0.2 * len(series) + 0.2 if legend_below else 0)), layout="constrained")
    ax = fig.add_subplot()
    for name, points in series.items():
        lengths = {len(p) for p in points}
        if not points or len(lengths) != 1 or lengths.pop() not in (2, 3):
            raise ValueError(f"comparison_plot: series {name!r} needs a non-empty list of points, all (x, y) or all (x, y, se)")
        pts = np.array(sorted(points, key=lambda p: p[0]), dtype=float)
        if pts.shape[1] == 3:
            ax.errorbar(pts[:, 0], pts[:, 1], yerr=pts[:, 2], label=name, marker=".", capsize=3)
        else:
            ax.plot(pts[:, 0], pts[:, 1], label=name, marker=".")
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both" if (logx or logy) else "major")
    if legend_below:
        fig.legend(loc="outside lower center", fontsize="small", ncols=1)
    else:
        ax.legend(fontsize="small")
    return _save_atomic(fig, path)
