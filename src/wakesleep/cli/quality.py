"""``wakesleep fid SOURCE``: FID and KID of a run's samples, or of images in an ``.npz`` file,
against held-out MNIST, with the real-against-real floor (:mod:`wakesleep.lab.quality`).

SOURCE is a run directory (its model draws the images) or an ``.npz`` file of 28×28 images in
[0, 1] (uint8 0..255 is divided by 255; key ``--key``, else the file's only array).  The LeNet of
``--kind`` (grey or binary; ``auto``: binary for a run whose model needs binary data or for files
whose values are all 0 or 1) is trained once and cached.  Prints ``key: value`` lines: fid,
fid_stderr, kid, kid_stderr, fid_floor, ..., and writes them as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from wakesleep import fused
from wakesleep.cli.options import MODEL_HELP, UsageError, _add_device, _positive_int, _seed, add_command, resolve_device
from wakesleep.io import atomic_write_text
from wakesleep.lab import quality
from wakesleep.lab.tables import key_lines

WHAT = ("auto", "draws", "means")


def add_parsers(sub) -> None:
    """Add the ``fid`` parser to ``sub`` (an argparse subparsers object)."""
    f = add_command(
        sub,
        "fid",
        "FID and KID of a run's samples or an .npz of images against held-out MNIST",
        "Score images by FID and KID on the penultimate features of a small LeNet trained once on labelled MNIST "
        "(cached), against half of the held-out real images, with the real-against-real floor (the other half) at "
        "the same size. SOURCE: a run directory or an .npz of 28x28 images in [0, 1].",
    )
    f.add_argument("source", help="run directory, or .npz file of images [n, 784] / [n, 28, 28]")
    f.add_argument("--model", default=None, metavar="FILE.py:FACTORY", help=f"a run's model: {MODEL_HELP}")
    f.add_argument("--kind", choices=["auto", *quality.KINDS], default="auto", help="classifier and reference images (default: auto)")
    f.add_argument("--key", default=None, help="array of the .npz to score (default: its only array)")
    f.add_argument(
        "--what",
        choices=WHAT,
        default="auto",
        help="a run's images: draws x ~ p(x | z) or means E[x | z] (auto: draws for binary models, means where the model has sample_mean)",
    )
    f.add_argument("--n", type=_positive_int, default=None, help="images scored (default: half the reference set: 1000 grey, 5000 binary)")
    f.add_argument("--bootstrap", type=_positive_int, default=100, help="bootstrap resamplings for FID's standard error (default: 100)")
    f.add_argument("--blocks", type=_positive_int, default=10, help="disjoint blocks for KID's standard error (default: 10)")
    f.add_argument("--seed", type=_seed, default=0, help="seeds the samples, the halves and the resamplings (default: 0)")
    f.add_argument("--data-dir", default=None, help="directory with the MNIST files (default: $WAKESLEEP_DATA_DIR or ~/.cache/wakesleep)")
    f.add_argument(
        "--cache-dir", default=None, help="where the classifier's weights are cached (default: $WAKESLEEP_CACHE_DIR or ~/.cache/wakesleep)"
    )
    f.add_argument("--retrain", action="store_true", help="train the classifier again even if cached")
    f.add_argument(
        "--epochs", type=_positive_int, default=quality.SETTINGS["epochs"], help="the classifier's training epochs (default: 8; cached apart)"
    )
    f.add_argument("--out", default=None, help="also write the scores to this JSON file")
    f.add_argument("--no-progress", action="store_true")
    _add_device(f)


def images_from_npz(path: Path, key: str | None) -> np.ndarray:
    """The array ``key`` of an ``.npz`` (its only array when ``key`` is None).

    Raises:
        UsageError: an empty, truncated or unreadable file, a plain ``.npy`` array, a missing key,
            or several arrays and no key.
    """
    fix = "give a run directory or an .npz file of images"
    if path.stat().st_size == 0:
        raise UsageError(f"{path} is empty; {fix}")
    try:
        with contextlib.ExitStack() as stack:
            z = np.load(path)  # allow_pickle=False: an object array is refused, unopened
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise UsageError(f"{path} is a plain .npy array, not an .npz; save it with np.savez(FILE.npz, images=x) and score that")
            stack.enter_context(z)
            names = list(z.files)
            if key is None and len(names) != 1:
                raise UsageError(f"{path} holds arrays {names}: name the one to score with --key")
            key = key or names[0]
            if key not in names:
                raise UsageError(f"{path} has no array {key!r} (has {names}); pass --key with one of them")
            return z[key]
    except UsageError:
        raise
    except Exception as e:  # numpy and zipfile raise many types (OSError, ValueError, EOFError, BadZipFile, ...) for a damaged file
        raise UsageError(f"cannot read {path} as .npz ({fused.first_line(e)}); it is truncated or not an .npz: {fix}") from None


def model_images(model, n: int, what: str, seed: int) -> torch.Tensor:
    """n images [n, D] from a run's model (on the CPU): draws x ~ p(x | z) or means E[x | z] (``what``;
    auto: draws for a model that needs binary data or has no ``sample_mean``, else means).

    Raises:
        UsageError: ``means`` for a model without ``sample_mean``.
    """
    binary = bool(getattr(model, "binary_data", False))
    if what == "auto":
        what = "draws" if binary or not hasattr(model, "sample_mean") else "means"
    torch.manual_seed(seed)
    with torch.no_grad():
        if what == "means":
            if not hasattr(model, "sample_mean"):
                raise UsageError(f"{type(model).__name__} has no sample_mean(n): score its draws with --what draws")
            return model.sample_mean(n).detach().cpu()
        return model.sample(n)[1].detach().cpu()


def cmd_fid(a: argparse.Namespace) -> int:
    source = Path(a.source)
    device = resolve_device(a.device)
    if source.is_dir():
        from wakesleep.runs import load_run

        model, _ = load_run(source, a.model)
        model.to(device).eval()
        kind = a.kind if a.kind != "auto" else ("binary" if getattr(model, "binary_data", False) else "grey")
        reference = quality.reference_images(kind, a.data_dir)
        images = model_images(model, a.n or len(reference) // 2, a.what, a.seed)
    elif source.is_file():
        if a.what != "auto" or a.model is not None:
            raise UsageError(f"{'--what' if a.what != 'auto' else '--model'} applies to a run's model; an .npz is scored as it is: drop it")
        images = images_from_npz(source, a.key)
        kind = a.kind
        if kind == "auto":
            kind = "binary" if np.isin(np.asarray(images), (0, 1)).all() else "grey"
        reference = quality.reference_images(kind, a.data_dir)
    else:
        raise UsageError(f"{source} is neither a run directory nor a file; give a run directory or an .npz of images")
    with warnings.catch_warnings(record=True) as caught:  # e.g. a damaged cache, trained again
        warnings.simplefilter("always", quality.QualityWarning)
        clf = quality.classifier(kind, a.data_dir, a.cache_dir, retrain=a.retrain, progress=not a.no_progress, device=device, epochs=a.epochs)
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    report = quality.score(images, clf, reference, n=a.n, bootstrap=a.bootstrap, blocks=a.blocks, seed=a.seed)
    out = {"kind": kind, **report.as_dict()}
    print(f"classifier: LeNet ({kind}), held-out accuracy {clf.accuracy:.4f}, cached at {clf.path}")
    print(key_lines(out))
    if a.out:
        try:
            atomic_write_text(Path(a.out), json.dumps(out, indent=2))
        except OSError as e:
            raise UsageError(f"cannot write {a.out} ({e.strerror or e}); give --out a path you can write") from None
    return 0


COMMANDS = {"fid": cmd_fid}
