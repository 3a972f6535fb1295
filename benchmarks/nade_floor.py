"""The floor under a NADE RWS step on this machine, per operation: what issue 24's
``nade_step_vs_sbn <= 10`` asks of the elementwise work that a NADE layer cannot avoid.

NADE's log-density of N = K·B particles over D units with H hidden units evaluates every
h_i = σ(W_{:,<i} v_<i + c), i = 1..D: N·D·H sigmoids forward, and backward their derivatives
σ(1 − σ) times the incoming gradient, plus the running sums (cumulative pre-activations) and the
read-out V_i·h_i, each N·D·H multiply-adds.  Counted at the best rate this machine reaches for each
operation (a 256 KB tensor, in cache, one thread), the forward and backward of RWS's NADE p(x | z)
(N = 500, D = 784, H = 200) and q(z | x) (D = 200) need at least:

    forward:  1 sigmoid + 2 multiply-add passes over N·D·H elements
    backward: 3 multiply-add passes (σ', the read-out's and the running sums' gradients)

The step also draws x ~ p(x | z) unit by unit in the sleep phase and z ~ q(z | x) in the wake phase
(D sequential small steps each), not counted here: the floor printed is a lower bound.  The SBN step
it is compared with is ``benchmarks/layers_step.py``'s, measured in the same process.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/nade_floor.py

Ends with ``key: value`` lines.
"""

from __future__ import annotations

import argparse
import time

import torch

from wakesleep.lab.tables import key_lines


def ns_per_element(fn, x: torch.Tensor, out: torch.Tensor, repeats: int = 2000) -> float:
    for _ in range(50):
        fn(x, out)
    start = time.process_time()
    for _ in range(repeats):
        fn(x, out)
    return (time.process_time() - start) / repeats / x.numel() * 1e9


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--particles", type=int, default=500, help="K·B (RWS's K = 5 times batch 100)")
    p.add_argument("--hidden", type=int, default=200, help="NADE's H")
    p.add_argument("--sbn-rounds", type=int, default=3, help="rounds of layers_step.py's SBN step")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    x, out = torch.randn(64 * 1024), torch.empty(64 * 1024)
    sigmoid = ns_per_element(lambda a, o: torch.sigmoid(a, out=o), x, out)
    fma = ns_per_element(lambda a, o: torch.addcmul(a, a, a, out=o), x, out)
    elements = args.particles * args.hidden * (784 + 200)  # p(x | z) over 784 pixels and q(z | x) over 200 latents
    floor_ms = elements * (sigmoid + 5 * fma) * 1e-6
    from layers_step import main as layers_step  # benchmarks/ is the script's directory, first on sys.path

    step = layers_step(["--rounds", str(args.sbn_rounds), "--steps", "2"])
    out = {
        "sigmoid_ns_per_element_in_cache": sigmoid,
        "multiply_add_ns_per_element_in_cache": fma,
        "nade_elementwise_floor_ms": floor_ms,
        "sbn_ms_per_step": step["sbn_ms_per_step"],
        "nade_ms_per_step": step["nade_ms_per_step"],
        "nade_floor_vs_sbn": floor_ms / step["sbn_ms_per_step"],
        "nade_step_vs_floor": step["nade_ms_per_step"] / floor_ms,
    }
    print(key_lines(out))
    return out


if __name__ == "__main__":
    main()
