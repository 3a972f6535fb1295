"""Sample quality of MNIST-like images: FID and KID on the penultimate features of a small
LeNet-style classifier trained once on labelled MNIST and cached.

- **FID** (Fréchet inception distance; Heusel, Ramsauer, Unterthiner, Nessler & Hochreiter 2017,
  "GANs trained by a two time-scale update rule converge to a local Nash equilibrium", NeurIPS):
  the Fréchet distance between Gaussians fitted to the two feature sets,
  ``FID = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})``.  Tr (Σ₁Σ₂)^{1/2} is computed by eigen-
  decompositions: with Σ₁^{1/2} the symmetric square root, Σ₁Σ₂ is similar to the symmetric PSD
  matrix M = Σ₁^{1/2} Σ₂ Σ₁^{1/2}, so Tr (Σ₁Σ₂)^{1/2} = Σᵢ √λᵢ(M) (no complex parts, no
  ``sqrtm`` iterations).  FID is biased upward in the sample sizes (by O(d/n)), so compare only
  FIDs computed with the same sizes, and against the real-against-real floor at those sizes.
  Its standard error here is the bootstrap's: the standard deviation of FID over ``bootstrap``
  resamplings (with replacement) of the rows of both sets.
- **KID** (kernel inception distance; Bińkowski, Sutherland, Arbel & Gretton 2018, "Demystifying
  MMD GANs", ICLR): the unbiased estimate of MMD² with the cubic polynomial kernel
  ``k(x, y) = (x·y / d + 1)³``,
  ``MMD²_u = Σ_{i≠j} k(xᵢ,xⱼ)/(m(m−1)) + Σ_{i≠j} k(yᵢ,yⱼ)/(m(m−1)) − 2 Σ_{i,j} k(xᵢ,yⱼ)/m²``.
  Both sets are shuffled and cut into ``blocks`` disjoint subsets of equal size m; KID is the mean
  of the per-block estimates (each unbiased, so the mean is), and its standard error is their
  standard deviation over √blocks (honest because the blocks are disjoint, hence independent).
  KID can be negative when the distributions agree.

The classifier (:class:`LeNet`): two 5×5 convolutions (6 and 16 channels, each with ReLU and 2×2
max-pooling), then 400 → 120 → 84 → 10 with ReLUs; the features are the 84 ReLU outputs of the
penultimate layer.  :func:`classifier` trains it on rows 0–7999 of the 10,000 grey-level MNIST
test images (``mnist_test_gray.npz`` with ``mnist_test_labels.npz``: the only labelled MNIST at
hand), holds out rows 8000–9999 for its accuracy, and caches the weights under
``$WAKESLEEP_CACHE_DIR`` (default ``~/.cache/wakesleep``) keyed by a SHA-256 of the data and the
settings (atomic write), so later calls load them.  ``kind="binary"`` trains a second network on
binarised copies: fresh Bernoulli draws x ~ Bernoulli(grey / 255) each epoch (the binarisation of
Larochelle & Murray's binarised MNIST), its held-out accuracy on one fixed draw of rows 8000–9999.

The reference images (:func:`reference_images`): for ``"grey"`` the held-out grey rows 8000–9999
(the rows ``wakesleep.data.mnist_gray`` keeps out of training, 2000 images); for ``"binary"`` the
10,000 validation images of binarised MNIST (drawn from MNIST's training set, seen neither by the
classifier nor by a generator trained on the ``train`` split).  :func:`score` shuffles them (seed
0), cuts them into halves A and B, scores the samples against A and the floor B against A, with
the same sizes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from wakesleep.fused import first_line
from wakesleep.io import atomic_torch_save

KINDS = ("grey", "binary")
TRAIN_ROWS = 8000  #: rows 0..7999 train the classifier; 8000..9999 are held out
FEATURE_DIM = 84
#: Training settings of the cached classifier (part of the cache key).
SETTINGS = {"epochs": 8, "batch_size": 64, "lr": 1e-3, "seed": 0, "version": 1}


class QualityError(ValueError):
    """Images or features that cannot be scored (the message names the fix)."""


class QualityWarning(UserWarning):
    """Something was done again rather than trusted: a damaged cached classifier, retrained."""


class LeNet(nn.Module):
    """LeNet-5-style classifier for 28×28 images in [0, 1] (module docstring);
    ``features(x)`` [n, 84], ``forward(x)`` logits [n, 10], for x [n, 1, 28, 28]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()
        )
        self.hidden = nn.Sequential(nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, FEATURE_DIM), nn.ReLU())
        self.out = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: Tensor) -> Tensor:
        return self.hidden(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.features(x))


# ------------------------------------------------------------------ input checks


def as_images(images: Any, what: str = "images") -> Tensor:
    """Images as a float32 CPU tensor [n, 1, 28, 28] in [0, 1].

    Accepts a tensor or array [n, 784], [n, 28, 28] or [n, 1, 28, 28]; uint8 is divided by 255
    unless every value is 0 or 1 (binary images, as binarised MNIST is stored), floats are used as
    they are.

    Raises:
        QualityError: another shape, fewer than 2 images, values not finite or outside [0, 1].
    """
    a = images.detach().cpu() if isinstance(images, Tensor) else torch.as_tensor(np.asarray(images))
    if a.dtype == torch.uint8:
        a = a.float() if a.numel() and a.max() <= 1 else a.float() / 255.0  # {0, 1} is binary, 0..255 grey
    elif not a.is_floating_point():
        a = a.float()
    shape = tuple(a.shape)
    if a.ndim == 2 and shape[1] == 784 or a.ndim == 3 and shape[1:] == (28, 28) or a.ndim == 4 and shape[1:] == (1, 28, 28):
        a = a.reshape(-1, 1, 28, 28).float()
    else:
        raise QualityError(f"{what} must be 28×28 images: [n, 784], [n, 28, 28] or [n, 1, 28, 28], got shape {list(shape)}; reshape them")
    if a.shape[0] < 2:
        raise QualityError(f"{what}: need at least 2 images to score, got {a.shape[0]}")
    if not torch.isfinite(a).all():
        raise QualityError(f"{what} hold NaN or infinite values; score finite images")
    lo, hi = a.min().item(), a.max().item()
    if lo < 0 or hi > 1:
        raise QualityError(
            f"{what} have values in [{lo:.4g}, {hi:.4g}], outside [0, 1]: pass intensities in [0, 1] "
            "(divide 0..255 by 255; score a Gaussian model's means, or clip its draws)"
        )
    return a


def as_features(f: Any, what: str = "features") -> np.ndarray:
    """Features as a float64 array [n, d] with n ≥ 2.

    Raises:
        QualityError: not 2-D, fewer than 2 rows, or not finite.
    """
    a = np.asarray(f.detach().cpu() if isinstance(f, Tensor) else f, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise QualityError(f"{what} must be [n, d] with n >= 2, got shape {list(a.shape)}")
    if not np.isfinite(a).all():
        raise QualityError(f"{what} hold NaN or infinite values")
    return a


def _same_width(f1: np.ndarray, f2: np.ndarray) -> None:
    if f1.shape[1] != f2.shape[1]:
        raise QualityError(f"the two feature sets differ in width: {f1.shape[1]} and {f2.shape[1]}; use features of one network")


# ------------------------------------------------------------------ FID


def fid_from_moments(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """The Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂):
    ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Σᵢ √λᵢ(Σ₁^{1/2} Σ₂ Σ₁^{1/2}) (module docstring); μ [d], Σ [d, d]
    symmetric PSD.  Tiny negative eigenvalues from rounding are set to 0."""
    mu1, mu2, s1, s2 = (np.asarray(v, dtype=np.float64) for v in (mu1, mu2, s1, s2))
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    tr_cross = np.sqrt(np.clip(lam, 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_cross)


def _moments(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return f.mean(0), np.cov(f, rowvar=False)


@dataclass
class Score:
    """An estimate with its standard error (``stderr``) and how it was obtained (``how``)."""

    value: float
    stderr: float
    how: str = ""

    def __str__(self) -> str:
        return f"{self.value:.4g} ± {self.stderr:.2g}"


def fid(f1: Any, f2: Any, bootstrap: int = 100, seed: int = 0) -> Score:
    """FID between feature sets f1 [n₁, d] and f2 [n₂, d] (module docstring), with the bootstrap
    standard error over ``bootstrap`` resamplings of the rows of both (0: no standard error, NaN).

    Raises:
        QualityError: features that are not [n, d] with n ≥ 2, not finite, or of different widths.
    """
    f1, f2 = as_features(f1, "first features"), as_features(f2, "second features")
    _same_width(f1, f2)
    value = fid_from_moments(*_moments(f1), *_moments(f2))
    rng = np.random.default_rng(seed)
    reps = [
        fid_from_moments(*_moments(f1[rng.integers(0, len(f1), len(f1))]), *_moments(f2[rng.integers(0, len(f2), len(f2))])) for _ in range(bootstrap)
    ]
    se = float(np.std(reps, ddof=1)) if bootstrap > 1 else float("nan")
    return Score(value, se, f"bootstrap over rows, {bootstrap} resamplings")


# ------------------------------------------------------------------ KID


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k(x, y) = (x·y / d + 1)³ for rows of a [n, d] and b [m, d]: [n, m]."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² (U-statistic) between x [m, d] and y [n, d] with the cubic polynomial
    kernel: off-diagonal means of k(x, x) and k(y, y), minus twice the mean of k(x, y)."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def kid(f1: Any, f2: Any, blocks: int = 10, seed: int = 0) -> Score:
    """KID between feature sets f1 [n₁, d] and f2 [n₂, d]: the mean over ``blocks`` disjoint random
    subsets (each of min(n₁, n₂) // blocks rows of each set) of the unbiased MMD² with the cubic
    polynomial kernel, with the standard error std/√blocks (module docstring).

    Raises:
        QualityError: bad features, blocks < 2, or fewer than 2 rows per block.
    """
    f1, f2 = as_features(f1, "first features"), as_features(f2, "second features")
    _same_width(f1, f2)
    if blocks < 2:
        raise QualityError(f"KID's standard error needs blocks >= 2, got {blocks}")
    size = min(len(f1), len(f2)) // blocks
    if size < 2:
        raise QualityError(f"{blocks} blocks of {min(len(f1), len(f2))} rows leave {size} per block; need >= 2: use fewer blocks or more images")
    rng = np.random.default_rng(seed)
    p1, p2 = rng.permutation(len(f1)), rng.permutation(len(f2))
    est = [mmd2_unbiased(f1[p1[b * size : (b + 1) * size]], f2[p2[b * size : (b + 1) * size]]) for b in range(blocks)]
    return Score(float(np.mean(est)), float(np.std(est, ddof=1) / math.sqrt(blocks)), f"{blocks} disjoint blocks of {size}")


# ------------------------------------------------------------------ the classifier


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$WAKESLEEP_CACHE_DIR``, else ``~/.cache/wakesleep`` (expanded)."""
    return Path(path or os.environ.get("WAKESLEEP_CACHE_DIR") or "~/.cache/wakesleep").expanduser()


def labelled_mnist(data_dir: str | os.PathLike | None = None) -> tuple[Tensor, Tensor, str]:
    """The 10,000 grey-level MNIST test images [10000, 1, 28, 28] in [0, 1], their labels [10000]
    (int64) and a SHA-256 of both files' arrays (for the cache key).

    Raises:
        wakesleep.data.DataError: a file missing, or arrays of the wrong shape.
    """
    from wakesleep.data import DataError, resolve_data_dir

    root = resolve_data_dir(data_dir)
    fix = f"put mnist_test_gray.npz and mnist_test_labels.npz in {root}, or point --data-dir / WAKESLEEP_DATA_DIR at them"
    try:
        with np.load(root / "mnist_test_gray.npz") as g, np.load(root / "mnist_test_labels.npz") as lab:
            x, y = g["data"], lab["labels"]
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"cannot read labelled MNIST ({e}); {fix}") from None
    if x.shape != (10000, 28, 28) or y.shape != (10000,):
        raise DataError(f"labelled MNIST has images {x.shape} and labels {y.shape}, expected (10000, 28, 28) and (10000,); {fix}")
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes()).hexdigest()
    return torch.from_numpy(x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28), torch.from_numpy(y.astype(np.int64)), digest


def _binarise(x: Tensor, generator: torch.Generator) -> Tensor:
    return torch.bernoulli(x, generator=generator)


@dataclass
class Classifier:
    """A trained :class:`LeNet` and what it was trained on: ``kind``, ``accuracy`` on the held-out
    rows 8000–9999, ``heldout``/``trained`` counts, ``settings`` and the cache ``path``."""

    net: LeNet
    kind: str
    accuracy: float
    trained: int
    heldout: int
    settings: dict = field(default_factory=dict)
    path: Path | None = None

    @torch.no_grad()
    def features(self, images: Any, batch_size: int = 1000, what: str = "images") -> np.ndarray:
        """Penultimate features [n, 84] (float64) of images (:func:`as_images`), in batches, on the
        classifier's device.

        Raises:
            QualityError: images of the wrong shape or outside [0, 1].
        """
        x = as_images(images, what)
        device = next(self.net.parameters()).device
        self.net.eval()
        return np.concatenate([self.net.features(x[i : i + batch_size].to(device)).double().cpu().numpy() for i in range(0, len(x), batch_size)])

    def to(self, device: torch.device | str) -> Classifier:
        self.net.to(device)
        return self


def _train(kind: str, x: Tensor, y: Tensor, settings: dict, progress: bool) -> tuple[LeNet, float]:
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(settings["seed"])
    torch.manual_seed(settings["seed"])
    net = LeNet()
    opt = torch.optim.Adam(net.parameters(), lr=settings["lr"])
    xt, yt, xh, yh = x[:TRAIN_ROWS], y[:TRAIN_ROWS], x[TRAIN_ROWS:], y[TRAIN_ROWS:]
    if kind == "binary":
        xh = _binarise(xh, torch.Generator().manual_seed(settings["seed"] + 1))  # one fixed draw to score
    bs = settings["batch_size"]
    net.train()
    for _ in tqdm(range(settings["epochs"]), desc=f"classifier ({kind})", disable=not progress):
        xe = _binarise(xt, g) if kind == "binary" else xt  # fresh binarisation each epoch
        for idx in torch.randperm(TRAIN_ROWS, generator=g).split(bs):
            loss = nn.functional.cross_entropy(net(xe[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(xh).argmax(1) == yh).double().mean().item()
    return net, accuracy


def classifier(
    kind: str = "grey",
    data_dir: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    retrain: bool = False,
    progress: bool = True,
    device: torch.device | str = "cpu",
    epochs: int = SETTINGS["epochs"],
) -> Classifier:
    """The LeNet for ``kind`` (``"grey"`` or ``"binary"``), loaded from the cache or trained once
    (module docstring: rows 0–7999 train, 8000–9999 are held out) and cached atomically as
    ``classifier-KIND-HASH.pt`` in :func:`cache_dir` (``cache``), HASH from the data and
    :data:`SETTINGS` (``epochs`` replaces its epochs: fewer for quick tests; they are cached apart).
    Training: Adam, 8 epochs of batches of 64 (under half a CPU-minute at one thread).  A damaged
    cache file (truncated, foreign) is trained again and written over, with a :class:`QualityWarning`.

    Raises:
        ValueError: an unknown kind, or epochs < 1.
        wakesleep.data.DataError: labelled MNIST not found.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    x, y, digest = labelled_mnist(data_dir)
    settings = {**SETTINGS, "epochs": epochs, "kind": kind, "train_rows": TRAIN_ROWS}
    key = hashlib.sha256((digest + json.dumps(settings, sort_keys=True)).encode()).hexdigest()[:16]
    path = cache_dir(cache) / f"classifier-{kind}-{key}.pt"
    cached = _load_cached(path) if path.is_file() and not retrain else None
    if cached is not None:
        net, accuracy = cached
    else:
        net, accuracy = _train(kind, x, y, settings, progress)
        atomic_torch_save({"state": net.state_dict(), "accuracy": accuracy, "settings": settings}, path)
    net.eval()
    return Classifier(net.to(device), kind, accuracy, TRAIN_ROWS, len(x) - TRAIN_ROWS, settings, path)


def _load_cached(path: Path) -> tuple[LeNet, float] | None:
    """The cached classifier at ``path`` (as data: ``weights_only=True``) and its accuracy, or None,
    with a :class:`QualityWarning` naming the file, when the file is damaged (truncated, foreign,
    other shapes): the caller trains it again and writes it over."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net = LeNet()
        net.load_state_dict(saved["state"])
        return net, float(saved["accuracy"])
    except Exception as e:  # torch raises several types (RuntimeError, EOFError, UnpicklingError, ...) for a damaged file
        warnings.warn(f"the cached classifier {path} is damaged ({first_line(e)[:200]}); training it again", QualityWarning, stacklevel=3)
        return None


# ------------------------------------------------------------------ scoring


def reference_images(kind: str, data_dir: str | os.PathLike | None = None) -> Tensor:
    """Real images to score against (module docstring): ``"grey"``: rows 8000–9999 of the grey-level
    images (2000); ``"binary"``: binarised MNIST's validation split (10,000); [n, 784] in [0, 1].

    Raises:
        ValueError: an unknown kind; wakesleep.data.DataError: data not found.
    """
    from wakesleep.data import binarized_mnist, mnist_gray

    if kind == "grey":
        d = mnist_gray(data_dir)
        return torch.cat([d.valid, d.test])
    if kind == "binary":
        return binarized_mnist(data_dir, download=False).valid
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


@dataclass
class QualityReport:
    """FID and KID of samples against real half A, and the real-against-real floor (half B
    against A), with sizes and the classifier's held-out accuracy."""

    fid: Score
    kid: Score
    fid_floor: Score
    kid_floor: Score
    n_samples: int
    n_reference: int
    kind: str
    accuracy: float

    def as_dict(self) -> dict[str, float]:
        out = {}
        for name in ("fid", "kid", "fid_floor", "kid_floor"):
            s = getattr(self, name)
            out[name], out[f"{name}_stderr"] = s.value, s.stderr
        return {**out, "n_samples": self.n_samples, "n_reference": self.n_reference, "classifier_accuracy": self.accuracy}


def score(
    samples: Any,
    clf: Classifier,
    reference: Any,
    n: int | None = None,
    bootstrap: int = 100,
    blocks: int = 10,
    seed: int = 0,
) -> QualityReport:
    """FID and KID of ``samples`` against half A of ``reference`` (shuffled with ``seed``), and the
    floor: half B against A.  Both use n images (default and at most: the half's size and the
    number of samples; the first n samples are used), so that sample and floor share their bias.

    Raises:
        QualityError: images of the wrong shape or outside [0, 1], or n < 2 blocks' worth.
    """
    ref = as_images(reference, "reference images")
    smp = as_images(samples, "samples")
    half = len(ref) // 2
    n = min(half, len(smp)) if n is None else n
    if n > half or n > len(smp):
        raise QualityError(f"n={n} is more than the {len(smp)} samples or the {half} reference images per half; lower n")
    perm = torch.randperm(len(ref), generator=torch.Generator().manual_seed(seed))
    fa = clf.features(ref[perm[:half]], what="reference images")
    fb = clf.features(ref[perm[half : half + n]], what="reference images")
    fs = clf.features(smp[:n], what="samples")
    return QualityReport(
        fid=fid(fs, fa, bootstrap, seed),
        kid=kid(fs, fa, blocks, seed),
        fid_floor=fid(fb, fa, bootstrap, seed),
        kid_floor=kid(fb, fa, blocks, seed),
        n_samples=n,
        n_reference=half,
        kind=clf.kind,
        accuracy=clf.accuracy,
    )
