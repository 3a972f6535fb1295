"""Files written atomically, and JSON lines.

Every file the package writes goes through :func:`atomic_file`: to a temporary file
(``.NAME.XXXX.tmp``) in the target's directory, flushed and fsynced, then renamed over the target
with ``os.replace``, so that a crash leaves either the old file or the new one, never a torn one
under the final name.

One permission rule: a written file gets ``0o666 & ~umask``, what ``open(path, "w")`` would give it
(``mkstemp`` alone makes 0600 files, which the others sharing a data cache or a run directory
could not read).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from wakesleep.faults import fault_point

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a temporary file ``.NAME.XXXX<suffix>`` beside it,
    renamed over ``path`` (with the usual permissions) when the block ends, and removed instead if
    the block raises.  Creates ``path``'s directory if needed.

    Raises:
        OSError: as the file system raises it, with ``filename`` set to ``path`` where the
            system gave none (a write, flush or fsync on a full disk: ENOSPC names no file), so
            that the message names the file that could not be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    with atomic_file(path) as f:
        f.write(data[: len(data) // 2])
        f.flush()
        fault_point("write-" + path.name)
        f.write(data[len(data) // 2 :])


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a compressed .npz via a temporary file in the same directory and an atomic rename,
    so an interrupted write never leaves a truncated archive under the final name."""
    with atomic_file(path) as fh:
        np.savez_compressed(fh, **arrays)


def atomic_save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib ``Figure`` to ``path`` atomically, drawn on the Agg canvas (no display
    needed), in the format of the path's suffix (``.png`` if it has none).  Returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # here: `import wakesleep` stays free of matplotlib

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_file(path) as fh:
        FigureCanvasAgg(fig)
        fig.savefig(fh, format=fmt, dpi=dpi)
    return path


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Write ``records`` to ``path`` atomically as JSON lines: one JSON object per line."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
