"""Bring-your-own-model speed: epochs per second of one model written three ways.

The Gaussian mixture of Le et al. 2019 (``examples/gmm.py``: 20 components, q(c | x) an MLP
1-16-16-20) trained by RWS (``--k`` particles, wake-φ and sleep-φ updates, batch 100) on
``--n`` points, as

- **hand-written** against the contract (``gmm.HandWrittenMixture``): the baseline;
- **from_distributions** (``gmm.mixture()``): three functions returning ``torch.distributions``;
- **from_pyro** (``gmm_pyro.mixture_pyro()``): a Pyro model and guide, where ``pyro-ppl`` is installed.

Each timed unit is one epoch through :func:`wakesleep.train` (no validation), the variants
interleaved in rounds so that a slow patch of the machine hits all of them; epochs per second are
the median over ``--rounds`` of CPU time of this process with one intra-op thread (``--clock wall``
for elapsed time), and each ratio is the median over rounds of the ratio within a round.  All
three start from the same parameters and seed.

    PYTHONPATH=src python benchmarks/own_model.py
    PYTHONPATH=src python benchmarks/own_model.py --rounds 9 --n 20000

Prints one ``key: value`` line per figure: epochs per second of each, and each front end's ratio
to the hand-written model (the goal for from_distributions: at least 0.7).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import wakesleep as ws

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import gmm  # noqa: E402


def variants() -> dict:
    out = {"hand_written": gmm.HandWrittenMixture, "from_distributions": gmm.mixture}
    try:
        import gmm_pyro

        out["from_pyro"] = gmm_pyro.mixture_pyro
    except ImportError as e:  # pyro-ppl not installed: say so and time the other two
        print(f"note: from_pyro left out ({e}); pip install 'wakesleep[pyro]'")
    return out


def _prior_logits(model):
    return next(p for p in model.p_parameters() if p.shape == (gmm.COMPONENTS,))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="training points (batch 100)")
    p.add_argument("--k", type=int, default=10, help="RWS particles")
    p.add_argument("--rounds", type=int, default=7, help="timed epochs of each variant (median reported)")
    p.add_argument("--clock", choices=["process", "wall"], default="process")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    now = time.process_time if a.clock == "process" else time.perf_counter
    x = gmm.make_data(a.n, seed=0)
    models = {}
    for name, build in variants().items():
        torch.manual_seed(0)
        models[name] = build()
    # Same starting parameters: copy the hand-written model's prior logits and proposal network.
    ref = models["hand_written"]
    for name, m in models.items():
        with torch.no_grad():
            _prior_logits(m).copy_(ref.prior.logits)
            for dst, src in zip(m.q_parameters(), ref.q_parameters()):
                dst.copy_(src)
    times = {name: [] for name in models}
    cfg = ws.TrainConfig(epochs=1, batch_size=100, lr_p=1e-2, lr_q=1e-2, patience=None, progress=False)
    for r in range(a.rounds + 1):  # round 0 warms up (first calls, allocator)
        for name, m in models.items():
            torch.manual_seed(r)
            t0 = now()
            ws.train(m, ws.RWS(k=a.k), x, None, cfg)
            if r:
                times[name].append(now() - t0)
    out = {}
    for name, ts in times.items():
        out[f"{name}_epochs_per_s"] = 1.0 / statistics.median(ts)
    for name, ts in times.items():
        if name != "hand_written":
            # the ratio within each round (the versions ran back to back), then the median over
            # rounds: a slow patch of a shared machine slows both sides of a round alike
            ratios = [h / t for h, t in zip(times["hand_written"], ts)]
            out[f"{name}_vs_hand_written"] = statistics.median(ratios)
            out[f"{name}_vs_hand_written_min"] = min(ratios)
    print(f"# the mixture, n={a.n}, batch 100, RWS k={a.k} (q_update=both), {a.rounds} rounds, {a.clock} clock, 1 thread")
    for key, value in out.items():
        print(f"{key}: {value:.3f}")
    return out


if __name__ == "__main__":
    main()
