"""The per-particle Pyro path against the vectorised one, and its overhead per sample site.

1. **Both paths on one model.** Le et al.'s Gaussian mixture as a Pyro program
   (``examples/gmm_pyro.py``, a vectorised ``pyro.plate`` over the data, which the per-particle path
   runs on one-row batches) through ``from_pyro`` and ``from_pyro(..., vectorize_particles=False)``,
   from the same parameters: one RWS step (K particles, batch B, wake-φ) each, the two interleaved
   in rounds, CPU time of this process on one thread, median over rounds; in microseconds per
   particle (per (particle, datapoint) pair).
2. **Per sample site.** A program of S independent ``Normal`` sites (no other work), run by the
   per-particle path's RWS step (guide run, model replayed, log-densities, backward) for S in
   ``--sites``; the least-squares slope over S is the cost per sample site per particle (both
   programs' runs), the intercept the cost per particle of a program with no site.  The same
   arithmetic written in plain torch (the distributions built, sampled and scored, no Pyro) gives
   the floor; the difference is Pyro's and the path's own overhead per site.

    PYTHONPATH=src python benchmarks/pyro_paths.py
    PYTHONPATH=src python benchmarks/pyro_paths.py --rounds 7 --k 20 --batch 50

Ends with ``key: value`` lines.  Needs ``pyro-ppl``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import wakesleep as ws
from wakesleep.lab.tables import key_lines
from wakesleep.pyro import from_pyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import gmm_pyro  # noqa: E402


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def rws_step(model, x, k):
    """One RWS step's work: the estimator's loss and its backward."""

    def run():
        model.zero_grad()
        ws.RWS(k=k, q_update="wake")(model, x).loss.backward()

    return run


class Sites(nn.Module):
    """S independent Normal sites, site i with a learned location: the model (observes x at "x") or the guide."""

    def __init__(self, sites: int, observe: bool):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(max(sites, 1)))
        self.sites, self.observe = sites, observe

    def forward(self, x):
        total = 0.0
        for i in range(self.sites):
            total = total + pyro.sample(f"z{i}", dist.Normal(self.loc[i], 1.0))
        if self.observe:
            pyro.sample("x", dist.Normal(total, 1.0), obs=x[0])


def plain_torch(sites: int, k: int, b: int):
    """The same arithmetic per particle without Pyro: the guide's S Normals drawn and scored, the
    model's S Normals and its observation scored, one backward."""
    loc_q, loc_p = nn.Parameter(torch.zeros(sites)), nn.Parameter(torch.zeros(sites))

    def run():
        terms = []
        for _ in range(k * b):
            z = [torch.distributions.Normal(loc_q[i], 1.0).sample() for i in range(sites)]
            log_q = sum(torch.distributions.Normal(loc_q[i], 1.0).log_prob(z[i]) for i in range(sites))
            log_p = sum(torch.distributions.Normal(loc_p[i], 1.0).log_prob(z[i]) for i in range(sites))
            terms.append(log_p + torch.distributions.Normal(sum(z), 1.0).log_prob(torch.zeros(())) + log_q)
        torch.stack(terms).sum().backward()

    return run


def slope(xs, ys) -> tuple[float, float]:
    """Least-squares (slope, intercept) of ys on xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    s = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
    return s, my - s * mx


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=10, help="particles")
    parser.add_argument("--batch", type=int, default=20, help="datapoints per step")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sites", type=int, nargs="+", default=[1, 4, 8, 16])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vec = gmm_pyro.mixture_pyro()
    per = from_pyro(gmm_pyro.MixtureModel(), gmm_pyro.MixtureGuide(), data_dim=1, vectorize_particles=False)
    per.load_state_dict(vec.state_dict())
    x = gmm_pyro.gmm.make_data(args.batch, seed=1)
    pairs = args.k * args.batch
    times = {"vectorised": [], "per_particle": []}
    for _ in range(args.rounds):
        for name, model in (("vectorised", vec), ("per_particle", per)):
            times[name].append(cpu_seconds(rws_step(model, x, args.k)) / pairs * 1e6)
    out = {f"{n}_us_per_particle_gmm": statistics.median(t) for n, t in times.items()}
    out["per_particle_vs_vectorised_gmm"] = out["per_particle_us_per_particle_gmm"] / out["vectorised_us_per_particle_gmm"]

    k, b = 4, 5  # the site sweep: 20 particles a step
    ours, floor = [], []
    for s in args.sites:
        model = from_pyro(Sites(s, True), Sites(s, False), data_dim=1, vectorize_particles=False, max_choices=max(64, s))
        xs = torch.zeros(b, 1)
        ours.append(statistics.median(cpu_seconds(rws_step(model, xs, k)) for _ in range(args.rounds)) / (k * b) * 1e6)
        floor.append(statistics.median(cpu_seconds(plain_torch(s, k, b)) for _ in range(args.rounds)) / (k * b) * 1e6)
    for s, a, f in zip(args.sites, ours, floor):
        print(f"sites {s:3d}: per particle {a:8.0f} us (plain torch {f:7.0f} us)")
    (per_site, per_run), (floor_site, _) = slope(args.sites, ours), slope(args.sites, floor)
    out.update(
        {
            "per_particle_us_per_site": per_site,
            "per_particle_us_per_particle_without_sites": per_run,
            "plain_torch_us_per_site": floor_site,
            "pyro_and_path_overhead_us_per_site": per_site - floor_site,
        }
    )
    print(key_lines(out))
    return out


if __name__ == "__main__":
    main()
