"""Run Le et al. (2019)'s own PCFG code (tuananhle7/rrws, ``pcfg/``) from a checkout of it, and
record their metrics against iterations as JSON: the authors' side of ``experiments/le2019_pcfg.py``
and of ``benchmarks/pcfg_step.py``.  This project holds none of their code: it imports their
``models``, ``losses``, ``train`` and ``util`` modules from ``PATH/pcfg`` and calls their training
functions (``train.train_wake_wake``, ``train_wake_sleep``, ``train_iwae``) unmodified.

    python experiments/rrws_pcfg.py --rrws /tmp/rrws --grammar astronomers --algorithm ww --k 20 \\
        --seed 1 --iterations 2000 --out runs/rrws/ww-k20-s1.json

Their settings (``run.py``): batch 2, K = 20, 2000 iterations, Adam at torch's default 1e-3 for θ and
φ (one optimiser over both for vimco/reinforce), a fresh batch from the true grammar every
iteration, metrics every 10 iterations.  The metrics are theirs (``util.py``):

- ``p_error``: ``util.get_p_error``, the mean over non-terminals of KL(p_true ‖ p_θ) between the
  true and the learned production probabilities (nats);
- ``q_error_to_true`` / ``q_error_to_model``: ``util.get_q_error``, the sleep loss
  −(1/100) Σ log q_φ(tree | obs) over 100 (tree, obs) pairs drawn from the true / the learned
  grammar: E_p[KL(p(tree | obs) ‖ q(tree | obs))] plus the posterior entropy, a constant in φ.

``seconds_per_iteration`` is the mean wall time of an iteration (their training step, data drawn
included) without the metrics, on one torch thread.

Compatibility with Python 3.11, torch 2.13, numpy 2 and matplotlib 3.11 (monkeypatches applied at
run time, nothing in their checkout is edited):

1. ``Levenshtein`` (python-Levenshtein), ``nltk`` and ``seaborn`` are imported at the top of their
   ``util.py``.  ``Levenshtein.distance`` is used by the astronomers likelihood: the real package
   is used where it imports (``pip install levenshtein``, or ``--deps DIR`` for a ``pip install
   --target DIR``), else a pure-Python edit distance of the same definition stands in (slower; the
   JSON says which).  ``nltk`` (only ``tree_to_nltk_tree``, for display) and ``seaborn`` (only
   ``sns.despine`` when plotting a polynomial for the proposal's CNN) get stubs; the stub's
   ``despine`` hides the axes' spines as seaborn's does.
2. ``FigureCanvasAgg.tostring_argb`` is gone from matplotlib ≥ 3.10: their ``util.fig2rgba`` (the
   polynomial's curve → image) is replaced by the same conversion through ``buffer_rgba()``.
3. ``torch.tensor(t)`` of a tensor (their ``get_tree_log_prob``) warns on every call in torch 2:
   that UserWarning is silenced.
4. Not a version issue but a crash: a polynomial tree cut at ``max_depth`` has a non-terminal leaf,
   on which their ``util.eval_polynomial`` raises (``int('E1')``), at iteration 0 for seed 1 (a
   tree of the randn-initialised grammar or proposal).  Such a leaf evaluates to 0 (as
   ``examples/pcfg.py``'s does); every other tree is evaluated by their function.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
import types
import warnings
from pathlib import Path

ALGORITHMS = ("ws", "ww", "vimco", "reinforce")
GRAMMARS = ("astronomers", "polynomial")
PATCHES = (
    "Levenshtein: the real package where importable, else a pure-Python edit distance",
    "nltk: stub module (tree_to_nltk_tree only)",
    "seaborn: stub module whose despine hides the axes' spines",
    "util.fig2rgba: matplotlib >= 3.10 has no tostring_argb; same image through buffer_rgba()",
    "warnings: torch.tensor(tensor) UserWarning silenced",
    "util.eval_polynomial: a non-terminal leaf (a depth-cut tree) evaluates to 0 instead of raising",
)


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (unit insert, delete, substitute), the definition of python-Levenshtein's:
    ``examples/pcfg.py``'s, which takes any two sequences."""
    return _pcfg().edit_distance(a, b)


def _pcfg():
    """``examples/pcfg.py`` as a module (imported on first use: it needs Pyro)."""
    examples = str(Path(__file__).resolve().parents[1] / "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)
    import pcfg

    return pcfg


def _despine(fig=None, ax=None, top=True, right=True, left=False, bottom=False, **_):
    axes = [ax] if ax is not None else (fig.axes if fig is not None else [])
    for a in axes:
        for side, hide in (("top", top), ("right", right), ("left", left), ("bottom", bottom)):
            if hide:
                a.spines[side].set_visible(False)


def _fig2rgba(fig):
    """Their ``util.fig2rgba`` (figure → RGBA array [w, h, 4], figure closed) without ``tostring_argb``."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig.canvas.draw()
    w, h = fig.canvas.get_width_height()
    rgba = np.array(fig.canvas.buffer_rgba(), dtype=np.uint8).reshape(w, h, 4)
    plt.close(fig)
    return rgba


def load_rrws(path: str | os.PathLike, deps: str | None = None) -> types.SimpleNamespace:
    """Import their ``models``, ``losses``, ``train`` and ``util`` from ``path/pcfg`` with the
    compatibility patches of this module's docstring.

    Returns:
        a namespace with the four modules, ``pcfg_dir`` and ``levenshtein`` ("python-Levenshtein"
        or "pure-python").

    Raises:
        FileNotFoundError: when ``path/pcfg/models.py`` is missing (not a checkout of tuananhle7/rrws).
    """
    pcfg_dir = Path(path).expanduser().resolve() / "pcfg"
    if not (pcfg_dir / "models.py").is_file():
        raise FileNotFoundError(f"{pcfg_dir}/models.py not found: --rrws must be a checkout of tuananhle7/rrws")
    if deps:
        sys.path.insert(0, str(Path(deps).resolve()))
    try:
        import Levenshtein  # noqa: F401

        lev = "python-Levenshtein"
    except ImportError:
        sys.modules["Levenshtein"] = types.SimpleNamespace(distance=_edit_distance)
        lev = "pure-python"
    for name, attrs in (("nltk", {}), ("seaborn", {"despine": _despine})):
        try:
            importlib.import_module(name)
        except ImportError:
            mod = types.ModuleType(name)
            mod.__dict__.update(attrs)
            sys.modules[name] = mod
    warnings.filterwarnings("ignore", message="To copy construct from a tensor")
    for clash in ("models", "losses", "train", "util"):  # a module of the same name imported earlier
        sys.modules.pop(clash, None)
    sys.path.insert(0, str(pcfg_dir))
    util = importlib.import_module("util")
    util.fig2rgba = _fig2rgba
    evaluate = util.eval_polynomial

    def eval_polynomial(tree, x):  # their recursion calls util.eval_polynomial: this one
        if isinstance(tree, str) and tree != "x" and not tree.isdigit():
            return __import__("torch").zeros_like(x)
        return evaluate(tree, x)

    util.eval_polynomial = eval_polynomial
    return types.SimpleNamespace(
        util=util,
        models=importlib.import_module("models"),
        losses=importlib.import_module("losses"),
        train=importlib.import_module("train"),
        pcfg_dir=pcfg_dir,
        levenshtein=lev,
    )


def pcfg_path(rrws: types.SimpleNamespace, grammar: str) -> str:
    if grammar not in GRAMMARS:
        raise ValueError(f"grammar must be one of {GRAMMARS}, got {grammar!r}")
    return str(rrws.pcfg_dir / "pcfgs" / f"{grammar}_pcfg.json")


def init(rrws: types.SimpleNamespace, grammar: str, seed: int):
    """Their ``run.py`` start: ``util.set_seed(seed)`` then ``util.init_models`` →
    (generative_model, inference_network, true_generative_model)."""
    rrws.util.set_seed(seed)
    return rrws.util.init_models(pcfg_path(rrws, grammar))


def _trainer(rrws, algorithm: str, models, batch_size: int, iterations: int, k: int, callback):
    gm, inf, true = models
    if algorithm == "ww":
        return lambda: rrws.train.train_wake_wake(gm, inf, true, batch_size, iterations, k, callback)
    if algorithm == "ws":
        return lambda: rrws.train.train_wake_sleep(gm, inf, true, batch_size, iterations, k, callback)
    if algorithm in ("vimco", "reinforce"):
        return lambda: rrws.train.train_iwae(algorithm, gm, inf, true, batch_size, iterations, k, callback)
    raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


def metrics(rrws, models) -> dict:
    """Their three metrics (``util.get_p_error``, ``util.get_q_error`` on the true and on the
    learned grammar, 100 samples each) as floats."""
    gm, inf, true = models
    return {
        "p_error": float(rrws.util.get_p_error(true, gm)),
        "q_error_to_true": float(rrws.util.get_q_error(true, inf)),
        "q_error_to_model": float(rrws.util.get_q_error(gm, inf)),
    }


def run(
    rrws: types.SimpleNamespace,
    grammar: str = "astronomers",
    algorithm: str = "ww",
    k: int = 20,
    seed: int = 1,
    iterations: int = 2000,
    batch_size: int = 2,
    eval_interval: int = 10,
) -> dict:
    """Train with their code and record their metrics at iteration 0 and after every
    ``eval_interval`` iterations (their callbacks evaluate at ``iteration % 10 == 0``, i.e. after
    1, 11, 21, … updates; here after 0, eval_interval, 2·eval_interval, … updates and at the end).

    Returns: the record written by ``--out`` (see the module docstring)."""
    models = init(rrws, grammar, seed)
    records = [{"iteration": 0, **metrics(rrws, models)}]
    step_seconds: list[float] = []
    elbos: list[float] = []
    clock = {"t": time.perf_counter()}

    def callback(iteration, *args):
        step_seconds.append(time.perf_counter() - clock["t"])
        elbos.append(float(args[2] if algorithm in ("ww", "ws") else args[1]))
        done = iteration + 1
        if done % eval_interval == 0 or done == iterations:
            records.append({"iteration": done, **metrics(rrws, models)})
        clock["t"] = time.perf_counter()

    _trainer(rrws, algorithm, models, batch_size, iterations, k, callback)()
    return {
        "source": "rrws",
        "grammar": grammar,
        "algorithm": algorithm,
        "k": k,
        "seed": seed,
        "iterations": iterations,
        "batch_size": batch_size,
        "eval_interval": eval_interval,
        "records": records,
        "elbo": elbos,
        "seconds_per_iteration": sum(step_seconds) / max(len(step_seconds), 1),
        "levenshtein": rrws.levenshtein,
        "patches": list(PATCHES),
        "threads": __import__("torch").get_num_threads(),
    }


def time_steps(rrws, grammar: str, algorithm: str, k: int, batch_size: int, steps: int, seed: int = 0) -> list[float]:
    """Wall seconds of each of ``steps`` iterations of their training function (no metrics)."""
    models = init(rrws, grammar, seed)
    out: list[float] = []
    clock = {"t": time.perf_counter()}

    def callback(iteration, *args):
        out.append(time.perf_counter() - clock["t"])
        clock["t"] = time.perf_counter()

    clock["t"] = time.perf_counter()
    _trainer(rrws, algorithm, models, batch_size, steps, k, callback)()
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rrws", required=True, help="a checkout of tuananhle7/rrws (the folder holding pcfg/)")
    p.add_argument("--grammar", choices=GRAMMARS, default="astronomers")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="ww", help="their train modes (ww = RWS with wake-phi)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--eval-interval", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--deps", default=None, help="a folder of extra packages (pip install --target) put first on sys.path")
    p.add_argument("--out", default=None, help="write the record as JSON here")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    rrws = load_rrws(a.rrws, a.deps)
    t0 = time.process_time()
    rec = run(rrws, a.grammar, a.algorithm, a.k, a.seed, a.iterations, a.batch_size, a.eval_interval)
    rec["cpu_seconds"] = time.process_time() - t0
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(rec))
        tmp.replace(out)
    last = rec["records"][-1]
    for key in ("p_error", "q_error_to_true", "q_error_to_model"):
        print(f"{key}: {last[key]:.4f}")
    print(f"seconds_per_iteration: {rec['seconds_per_iteration']:.4f}")
    print(f"cpu_seconds: {rec['cpu_seconds']:.1f}")
    if not all(math.isfinite(r["p_error"]) for r in rec["records"]):
        print("warning: a non-finite p_error", file=sys.stderr)
    return rec


if __name__ == "__main__":
    main()
