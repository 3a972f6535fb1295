"""Data sets: loading, download and cache, validation.

Every loader returns a :class:`Dataset` whose splits are float32 CPU tensors of shape [N, D], one
row per datapoint; images are flattened row-major and ``Dataset.image_shape`` remembers (H, W) for
plotting. Every loader checks its splits with :func:`validate`, and every problem with the data
(a missing, corrupt or malformed file, NaN/inf, non-binary values for a Bernoulli likelihood, a
wrong width, a failed download) raises :class:`DataError` with a message naming the source, what
is wrong and how to fix it.

Data sets:

- ``digits``: the 8x8 digits embedded in scikit-learn, binarised (no download, always available).
- ``binarized-mnist``: MNIST with the fixed binarisation of Larochelle & Murray (2011),
  50000/10000/10000, downloaded and cached on first use.
- ``mnist-gray``: the 10000 grey-level MNIST test images, split 8000/1000/1000.
- a path to a ``.npz``: the user's own data, see :func:`load_npz`.

Data directory: the ``data_dir`` argument, else the environment variable ``WAKESLEEP_DATA_DIR``,
else ``~/.cache/wakesleep`` (see :func:`resolve_data_dir`).
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import pickle
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wakesleep.io import atomic_file, atomic_savez

__all__ = [
    "DataError",
    "Dataset",
    "resolve_data_dir",
    "digits",
    "binarized_mnist",
    "mnist_gray",
    "load_npz",
    "load_dataset",
    "validate",
    "DATASET_NAMES",
    "BINARIZED_MNIST_URL",
]

BINARIZED_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist"
"""Canonical base address of the Larochelle & Murray ``.amat`` files; override the base with the
environment variable ``WAKESLEEP_BINARIZED_MNIST_URL`` (e.g. a mirror or a local server)."""

BINARIZED_MNIST_ROWS = (50000, 10000, 10000)
DATASET_NAMES = ("digits", "binarized-mnist", "mnist-gray")
SPLITS = ("train", "valid", "test")

# Everything numpy/zipfile may raise while reading a damaged or foreign .npz file.
_NPZ_READ_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    KeyError,
    zipfile.BadZipFile,
    zlib.error,
    pickle.UnpicklingError,
)


class DataError(ValueError):
    """A problem with data: missing, corrupt or malformed file, bad values, failed download.

    The message names the file or source, what is wrong, and how to fix it.
    """


@dataclass
class Dataset:
    """A data set split three ways.

    Attributes:
        name: short name, e.g. ``"digits"`` or the file name of a user's ``.npz``.
        train, valid, test: float32 CPU tensors of shape [N_split, D], one row per datapoint.
        image_shape: (H, W) when each row is a row-major flattened H x W image, else None;
            used only for plotting.
        binary: True when every value is 0 or 1 (suitable for a Bernoulli likelihood).

    Raises:
        DataError: if a split is not a 2-D float32 CPU tensor, the widths differ, or
            ``image_shape`` does not match the width. (Values are checked by the loaders, with
            :func:`validate`, where the source is known.)
    """

    name: str
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    image_shape: tuple[int, int] | None
    binary: bool

    def __post_init__(self) -> None:
        for split in SPLITS:
            x = getattr(self, split)
            if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.dim() != 2:
                raise DataError(
                    f"Dataset {self.name!r}: split {split!r} must be a 2-D float32 tensor [N, D], "
                    f"got {type(x).__name__} "
                    f"{getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}; "
                    "convert with torch.as_tensor(x, dtype=torch.float32).reshape(len(x), -1)"
                )
            if x.device.type != "cpu":
                raise DataError(
                    f"Dataset {self.name!r}: split {split!r} is on {x.device}; datasets live on "
                    "the CPU and the trainer moves batches to the device; pass x.cpu()"
                )
        widths = {split: getattr(self, split).shape[1] for split in SPLITS}
        if len(set(widths.values())) != 1:
            raise DataError(f"Dataset {self.name!r}: splits differ in width {widths}; every split needs the same number of columns D")
        if self.image_shape is not None:
            h, w = self.image_shape
            if h * w != self.dim:
                raise DataError(
                    f"Dataset {self.name!r}: image_shape {self.image_shape} has {h * w} pixels "
                    f"but rows have D={self.dim}; pass image_shape=None or the right (H, W)"
                )

    @property
    def dim(self) -> int:
        """D, the number of columns (pixels) per datapoint."""
        return int(self.train.shape[1])

    def __repr__(self) -> str:
        sizes = "/".join(str(len(getattr(self, s))) for s in SPLITS)
        return f"Dataset(name={self.name!r}, train/valid/test={sizes}, dim={self.dim}, image_shape={self.image_shape}, binary={self.binary})"


def fingerprint(data: Dataset) -> str:
    """The SHA-256 (hex) of a data set's three splits: each split's name, shape and dtype, then its
    bytes, in the order train, valid, test (for data that streams, the training stream's first
    draws, ``probe``).  A run records it when it starts and ``--resume``
    refuses other data (a data file replaced between the two)."""
    h = hashlib.sha256()
    for split in SPLITS:
        x = getattr(data, split)
        if not isinstance(x, torch.Tensor):  # a stream (wakesleep.training.stream.StreamData): its first draws
            x = data.probe
        x = x.contiguous()
        h.update(f"{split}{tuple(x.shape)}{x.dtype};".encode())
        h.update(memoryview(x.numpy()).cast("B"))
    return h.hexdigest()


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Directory for data files: ``data_dir`` if given, else ``$WAKESLEEP_DATA_DIR`` if set and
    non-empty, else ``~/.cache/wakesleep``. ``~`` is expanded; the directory need not exist."""
    if data_dir is None:
        data_dir = os.environ.get("WAKESLEEP_DATA_DIR") or Path("~/.cache/wakesleep")
    return Path(data_dir).expanduser()


# --------------------------------------------------------------------------- validation


def validate(
    x: np.ndarray | torch.Tensor,
    *,
    binary: bool,
    dim: int | None,
    source: str,
    split: str,
) -> None:
    """Check one split of a data set, raising :class:`DataError` naming ``source`` and ``split``.

    Args:
        x: array or tensor, expected shape [N, D].
        binary: require every value in {0, 1} (a Bernoulli likelihood).
        dim: required width D, or None to accept any width.
        source: where the data came from (a file path or data set name), for the message.
        split: ``"train"``, ``"valid"`` or ``"test"``, for the message.

    Raises:
        DataError: wrong rank (not 2-D), an empty split, wrong width, non-numeric or complex
            values, NaN or inf values, or non-binary values when ``binary`` is True.
    """
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    where = f"{source} (split {split!r})"
    if a.ndim != 2:
        raise DataError(
            f"{where}: expected a 2-D array [N, D] with one row per datapoint, got shape {a.shape}; reshape it, e.g. x.reshape(len(x), -1)"
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise DataError(
            f"{where}: split is empty (shape {a.shape}); every split needs at least one "
            "datapoint with at least one value; check the file or the split fractions"
        )
    if dim is not None and a.shape[1] != dim:
        raise DataError(
            f"{where}: wrong width: expected D={dim} values per datapoint, got {a.shape[1]} "
            f"(shape {a.shape}); use data of the model's dimension, or build the model for "
            f"D={a.shape[1]}"
        )
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise DataError(f"{where}: values have non-numeric dtype {a.dtype}; store numbers (e.g. float32 or uint8)")
    if np.iscomplexobj(a):
        raise DataError(
            f"{where}: values are complex ({a.dtype}), and the models take real numbers (the imaginary part would be "
            "dropped); store the real and imaginary parts as columns of their own, e.g. np.concatenate([x.real, x.imag], axis=1)"
        )
    if np.issubdtype(a.dtype, np.inexact):
        _refuse_values(a, ~np.isfinite(a), where, "NaN or inf value(s); the first at", "remove or impute those datapoints before training")
    if binary:
        _refuse_values(
            a,
            (a != 0) & (a != 1),
            where,
            "value(s) not in {0, 1}, the first at",
            "a Bernoulli likelihood needs values in {0,1}; binarise first, e.g. x > 0.5",
        )


def _refuse_values(a: np.ndarray, bad: np.ndarray, where: str, what: str, fix: str) -> None:
    """Raise a :class:`DataError` naming how many entries of ``a`` are ``bad``, the first one and the fix."""
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        row, col = np.argwhere(bad)[0]
        raise DataError(f"{where}: {n_bad} {what} row {row}, column {col} (value {a[row, col]}); {fix}")


def _is_binary(a: np.ndarray) -> bool:
    return bool(np.all((a == 0) | (a == 1)))


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


# --------------------------------------------------------------------------- file helpers


def _read_npz(path: Path, fix: str) -> dict[str, np.ndarray]:
    """All arrays of a .npz file, read eagerly so that damage shows up here, as a DataError."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; {fix}")
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):  # a plain .npy: an array, not a context manager
            raise DataError(
                f"{path}: is a single .npy array, not a .npz archive of named arrays; "
                "save with numpy.savez(path, train=..., valid=..., test=...) or "
                "numpy.savez(path, data=...)"
            )
        with f:
            return {key: f[key] for key in f.files}
    except DataError:
        raise
    except _NPZ_READ_ERRORS as err:
        raise DataError(
            f"{path}: not a readable .npz archive ({type(err).__name__}: {err}); the file is corrupt or of another format: {fix}"
        ) from err


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a compressed .npz atomically (:func:`wakesleep.io.atomic_savez`)."""
    atomic_savez(path, arrays)


def _read_amat(path: Path) -> np.ndarray:
    """Parse a Larochelle-style .amat text file (one datapoint per line, space-separated numbers)
    into a float32 array [N, D]."""
    try:
        with warnings.catch_warnings():
            # An empty file warns and returns shape (0, 1); validate() reports it as empty.
            warnings.simplefilter("ignore", UserWarning)
            return np.loadtxt(path, dtype=np.float32, ndmin=2)
    except (ValueError, OSError) as err:
        raise DataError(
            f"{path}: malformed .amat file ({err}); each line must hold 784 space-separated "
            "0/1 values; delete the file to download it again, or replace it with a good copy"
        ) from err


def _download(url: str, dest: Path, manual_fix: str) -> None:
    """Download ``url`` to ``dest`` with a progress bar, via a temporary file in the same
    directory renamed into place only once every byte has arrived."""
    from tqdm import tqdm

    with atomic_file(dest, suffix=".part") as fh:
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                received = 0
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
                    while chunk := resp.read(1 << 20):
                        fh.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:  # URLError, HTTPError, timeouts
            raise DataError(f"could not download {url}: {err}; {manual_fix}") from err
        if total is not None and received != total:
            raise DataError(f"could not download {url}: connection closed after {received} of {total} bytes; try again, or {manual_fix}")


# --------------------------------------------------------------------------- data sets


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's embedded 8x8 digits (1797 images, grey levels 0..16), binarised.

    Binarisation: pixel >= 8 becomes 1, else 0 (8 is half of the maximum grey level 16).
    Split: rows are permuted with ``numpy.random.default_rng(seed)`` and cut into
    1297 train / 250 valid / 250 test; with the default ``seed=0`` the split is fixed.

    Returns:
        Dataset with D = 64, ``image_shape=(8, 8)``, ``binary=True``. No download needed.
    """
    from sklearn.datasets import load_digits

    x = (load_digits().data >= 8).astype(np.float32)  # [1797, 64], row-major 8x8
    perm = np.random.default_rng(seed).permutation(len(x))
    parts = {"train": x[perm[:1297]], "valid": x[perm[1297:1547]], "test": x[perm[1547:]]}
    for split, a in parts.items():
        validate(a, binary=True, dim=64, source="scikit-learn digits", split=split)
    return Dataset("digits", **{s: _to_tensor(a) for s, a in parts.items()}, image_shape=(8, 8), binary=True)


def binarized_mnist(
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    expected_rows: Sequence[int] | None = BINARIZED_MNIST_ROWS,
) -> Dataset:
    """MNIST with the fixed binarisation of Larochelle & Murray (2011): 50000/10000/10000 x 784.

    The split used by RWS (Bornschein & Bengio 2015), the IWAE appendix, VIMCO and most
    discrete-latent papers. Looks in ``resolve_data_dir(data_dir)`` for, in order:

    1. ``binarized_mnist.npz`` with uint8 arrays ``train``, ``valid``, ``test``;
    2. the text files ``binarized_mnist_{train,valid,test}.amat`` (one image per line, 784
       space-separated 0/1 values), which are parsed and then cached as ``binarized_mnist.npz``
       (atomic write; skipped with a warning if the directory is not writable);
    3. if ``download`` is True, downloads the missing ``.amat`` files from
       ``$WAKESLEEP_BINARIZED_MNIST_URL`` or else :data:`BINARIZED_MNIST_URL`, then does 2.

    Args:
        data_dir: directory of the files; see :func:`resolve_data_dir`.
        download: allow downloading missing files.
        expected_rows: required row counts of (train, valid, test); the default is the real
            sizes, so a truncated file is caught. Pass None to accept any positive number of
            rows (e.g. small test files). Width (784) and values (0/1) are always checked.

    Returns:
        Dataset with D = 784, ``image_shape=(28, 28)``, ``binary=True``.

    Raises:
        DataError: files missing and ``download`` False; download failed (the message says where
            to put the files by hand); a corrupt ``.npz`` or malformed ``.amat``; wrong row
            counts, width or values.
    """
    root = resolve_data_dir(data_dir)
    npz_path = root / "binarized_mnist.npz"
    amat = {s: root / f"binarized_mnist_{s}.amat" for s in SPLITS}
    base = os.environ.get("WAKESLEEP_BINARIZED_MNIST_URL") or BINARIZED_MNIST_URL
    urls = {s: f"{base.rstrip('/')}/binarized_mnist_{s}.amat" for s in SPLITS}
    manual_fix = (
        f"download binarized_mnist_{{train,valid,test}}.amat by hand from {base}/ and put them "
        f"in {root}, or point data_dir / WAKESLEEP_DATA_DIR at a directory that holds them or "
        "binarized_mnist.npz"
    )

    if npz_path.exists():
        arrays = _read_npz(npz_path, f"delete {npz_path} to rebuild it from the .amat files (downloaded if missing), or replace it with a good copy")
        missing = [s for s in SPLITS if s not in arrays]
        if missing:
            raise DataError(
                f"{npz_path}: missing key(s) {missing} (has {sorted(arrays)}); the file needs "
                f"arrays 'train', 'valid' and 'test'; delete it to rebuild it from the .amat files"
            )
        sources = {s: str(npz_path) for s in SPLITS}
        from_amat = False
    else:
        missing = [s for s in SPLITS if not amat[s].exists()]
        if missing and not download:
            raise DataError(
                f"binarized MNIST not found in {root}: no binarized_mnist.npz and missing "
                f"{[amat[s].name for s in missing]}; pass download=True, or {manual_fix}"
            )
        if missing:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise DataError(f"cannot create data directory {root} ({err}); pass a writable data_dir or set WAKESLEEP_DATA_DIR") from err
        downloaded = set()
        for s in missing:
            _download(urls[s], amat[s], manual_fix)
            downloaded.add(s)
        arrays = {}
        for s in SPLITS:
            try:
                arrays[s] = _read_amat(amat[s])
            except DataError:
                if s in downloaded:  # a bad download must not stay in the cache
                    amat[s].unlink(missing_ok=True)
                raise
        sources = {s: str(amat[s]) for s in SPLITS}
        from_amat = True

    for i, s in enumerate(SPLITS):
        a = arrays[s]
        validate(a, binary=True, dim=784, source=sources[s], split=s)
        if expected_rows is not None and len(a) != expected_rows[i]:
            raise DataError(
                f"{sources[s]} (split {s!r}): expected {expected_rows[i]} rows, got {len(a)}; "
                "the file is truncated or not the Larochelle & Murray binarised MNIST; delete it "
                "to download it again (or pass expected_rows=None to accept other sizes)"
            )

    if from_amat:
        try:
            _atomic_savez(npz_path, {s: arrays[s].astype(np.uint8) for s in SPLITS})
        except OSError as err:
            warnings.warn(f"could not cache binarized MNIST as {npz_path}: {err}", stacklevel=2)

    return Dataset("binarized-mnist", **{s: _to_tensor(arrays[s]) for s in SPLITS}, image_shape=(28, 28), binary=True)


def mnist_gray(data_dir: str | os.PathLike | None = None) -> Dataset:
    """The 10000 grey-level MNIST test images, for continuous-data experiments.

    Reads ``mnist_test_gray.npz`` (key ``data``, uint8 [10000, 28, 28], 0..255) from
    ``resolve_data_dir(data_dir)``; no download. Values are scaled to [0, 1] by dividing by 255.
    Split in file order (no shuffle): rows 0..7999 train, 8000..8999 valid, 9000..9999 test.

    Returns:
        Dataset with D = 784, ``image_shape=(28, 28)``, ``binary=False``.

    Raises:
        DataError: file missing or corrupt, key ``data`` missing, shape not [10000, 28, 28],
            or values that are not finite.
    """
    path = resolve_data_dir(data_dir) / "mnist_test_gray.npz"
    fix = (
        f"put mnist_test_gray.npz (key 'data', uint8 [10000, 28, 28]) in {path.parent}, "
        "or point data_dir / WAKESLEEP_DATA_DIR at the directory that holds it"
    )
    arrays = _read_npz(path, fix)
    if "data" not in arrays:
        raise DataError(f"{path}: no array 'data' (has {sorted(arrays)}); {fix}")
    a = arrays["data"]
    if a.shape != (10000, 28, 28):
        raise DataError(f"{path}: array 'data' has shape {a.shape}, expected (10000, 28, 28); {fix}")
    x = a.reshape(10000, 784).astype(np.float32)
    if a.dtype == np.uint8:
        x /= 255.0
    parts = {"train": x[:8000], "valid": x[8000:9000], "test": x[9000:]}
    for s, p in parts.items():
        validate(p, binary=False, dim=784, source=str(path), split=s)
    if x.min() < 0 or x.max() > 1:
        raise DataError(f"{path}: values outside [0, 1] after scaling (uint8 is divided by 255, floats are used as stored); {fix}")
    return Dataset("mnist-gray", **{s: _to_tensor(p) for s, p in parts.items()}, image_shape=(28, 28), binary=False)


def load_npz(
    path: str | os.PathLike,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    binary: bool | None = None,
) -> Dataset:
    """The user's own data from a ``.npz`` file.

    The file holds either arrays ``train``, ``valid`` and ``test`` (used as they are), or exactly
    one array (under any key) that is split: rows are permuted with
    ``numpy.random.default_rng(seed)`` and cut into ``round(fractions[1] * N)`` valid,
    ``round(fractions[2] * N)`` test and the rest train. Arrays are [N, D], or [N, H, W] images
    that are flattened row-major to [N, H*W] with ``image_shape=(H, W)``. Values are used as
    stored (converted to float32, not rescaled).

    Args:
        path: the ``.npz`` file.
        fractions: (train, valid, test) fractions, non-negative, summing to 1; ignored when the
            file has its own splits.
        seed: seed of the permutation for a single array.
        binary: True requires every value in {0, 1}; False declares real-valued data; None infers
            it (True iff every value is 0 or 1).

    Returns:
        Dataset named after the file's stem.

    Raises:
        DataError: missing or corrupt file, unusable keys (only some of train/valid/test, or
            several arrays that are not train/valid/test), bad fractions or too few rows for
            them, rank other than 2 or 3, mismatched shapes, NaN/inf, non-binary values when
            ``binary`` is True.
    """
    path = Path(path).expanduser()
    fix = "save your data with numpy.savez(path, train=..., valid=..., test=...) or numpy.savez(path, data=...) for one array split by fractions"
    arrays = _read_npz(path, fix)
    present = [s for s in SPLITS if s in arrays]
    if len(present) == 3:
        parts = {s: arrays[s] for s in SPLITS}
    elif present:
        raise DataError(
            f"{path}: has {present} but not {[s for s in SPLITS if s not in arrays]}; "
            "give all of train/valid/test, or a single array to be split by fractions"
        )
    elif len(arrays) == 1:
        (a,) = arrays.values()
        parts = _split(a, fractions, seed, str(path))
    else:
        raise DataError(
            f"{path}: has arrays {sorted(arrays)}; expected keys 'train', 'valid', 'test', or exactly one array to be split by fractions; {fix}"
        )

    image_shape = None
    shapes = {s: a.shape for s, a in parts.items()}
    if all(a.ndim == 3 for a in parts.values()):
        if len({a.shape[1:] for a in parts.values()}) != 1:
            raise DataError(f"{path}: image splits differ in shape {shapes}; all need the same (H, W)")
        image_shape = tuple(int(n) for n in parts["train"].shape[1:])
        parts = {s: a.reshape(len(a), -1) for s, a in parts.items()}
    elif any(a.ndim == 3 for a in parts.values()):
        raise DataError(f"{path}: splits mix images and vectors {shapes}; use [N, D] or [N, H, W] for all")

    dim = parts["train"].shape[1] if parts["train"].ndim == 2 else None
    for s, a in parts.items():
        validate(a, binary=bool(binary), dim=dim, source=str(path), split=s)
    if binary is None:
        binary = all(_is_binary(a) for a in parts.values())
    return Dataset(path.stem, **{s: _to_tensor(a) for s, a in parts.items()}, image_shape=image_shape, binary=binary)


def _split(a: np.ndarray, fractions: Sequence[float], seed: int, source: str) -> dict[str, np.ndarray]:
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or any(not math.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
        raise DataError(f"{source}: fractions must be three non-negative numbers (train, valid, test) summing to 1, got {tuple(fractions)}")
    if a.ndim == 0:
        raise DataError(f"{source}: the array is a scalar; expected [N, D] or [N, H, W]")
    n = len(a)
    n_valid, n_test = round(fr[1] * n), round(fr[2] * n)
    n_train = n - n_valid - n_test
    if min(n_train, n_valid, n_test) < 1:
        raise DataError(
            f"{source}: {n} rows split by fractions {tuple(fractions)} gives "
            f"{n_train}/{n_valid}/{n_test} train/valid/test; every split needs at least one row: "
            "use more data or other fractions"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return {"train": a[perm[:n_train]], "valid": a[perm[n_train : n_train + n_valid]], "test": a[perm[n_train + n_valid :]]}


def load_dataset(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None, **kw: Any) -> Dataset:
    """Load a data set by name, or the user's ``.npz`` by path.

    Args:
        name_or_path: ``"digits"``, ``"binarized-mnist"``, ``"mnist-gray"`` (underscores also
            accepted), or a path to a ``.npz`` file (see :func:`load_npz`).
        data_dir: directory for the named data sets that need files (see
            :func:`resolve_data_dir`); ignored for ``digits`` and paths.
        **kw: passed on to the loader (e.g. ``seed``, ``download``, ``fractions``).

    Raises:
        DataError: unknown name (the message lists the valid names), or any error of the loader.
    """
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or text.endswith(".npz") or os.sep in text:
        return load_npz(text, **kw)
    name = text.lower().replace("_", "-")
    if name == "digits":
        return digits(**kw)
    if name == "binarized-mnist":
        return binarized_mnist(data_dir, **kw)
    if name == "mnist-gray":
        return mnist_gray(data_dir, **kw)
    raise DataError(
        f"unknown data set {text!r}; valid names are {', '.join(DATASET_NAMES)}, or a path to "
        "a .npz file of your own (keys train/valid/test, or one array)"
    )
