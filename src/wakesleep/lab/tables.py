"""What the lab tools share: tables (CSV, markdown), ``key: value`` lines, and the torch thread count while they time things."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """The rows as CSV text with header ``columns`` (full precision; empty cells for None or missing
    keys; other keys ignored)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def key_lines(values: Mapping[str, object]) -> str:
    """``values`` as ``key: value`` lines, one per entry in order (the form scripts here end with,
    for other scripts to read): integers, booleans and strings as written, every other number
    (float, numpy scalar, 0-d tensor) to 6 significant digits.

    Raises:
        TypeError: a value that is none of these (``format(value, ".6g")`` fails).
    """

    def text(v: object) -> str:
        return str(v) if isinstance(v, (int, str)) else format(v, ".6g")

    return "\n".join(f"{key}: {text(value)}" for key, value in values.items())


def _number(v: float | None, digits: int = 2) -> str:
    """``v`` to ``digits`` decimals, or "–" where there is none (None or NaN)."""
    return "–" if v is None or v != v else f"{v:.{digits}f}"


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(n)`` (None: leave the count as is); the previous count is restored after."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def markdown_table(summary: list[dict]) -> str:
    """The summary as a markdown table: test log-likelihood ± s.e. across seeds, with time and epochs;
    "–" for the standard error of one seed (none can be estimated from one)."""
    if not summary:
        return ""
    k, n, clock = summary[0]["test_k"], summary[0]["test_n"], summary[0]["clock"]
    lines = [
        f"| estimator | settings | seeds | test log-likelihood (nats, K={k}, {n} points) | ± s.e. (seeds) | train time (s, {clock}) | epochs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        lines.append(
            f"| {r['label']} | `{r['settings']}` | {r['seeds']} | {r['test_log_likelihood']:.2f} | {_number(r['stderr_seeds'])} "
            f"| {r['train_seconds']:.3g} | {r['epochs']:.1f} |"
        )
    return "\n".join(lines)
