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
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/nade_floor.py --compiled

With ``--compiled``, also the rate of the compiled kernels that ``--compile`` runs NADE on
(:func:`wakesleep.fused._nade_block_forward` and ``_nade_block_backward``, one pass each over a block's
[P, N, m, H] pre-activations, on RWS's p(x | z) shapes), the log-densities' cost at that rate over the
same 98.4 M elements (``nade_compiled_kernel_floor_ms``: the bound on a step with these kernels, before
sampling and Adam), and the compiled step itself (``layers_step.py --compile``).

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


def compiled_block_rates(particles: int, hidden: int, pixels: int = 784, block: int = 8) -> tuple[float, float]:
    """Thread-CPU ns per element of [P, N, m, H] for the compiled NADE block kernels' forward and
    backward on p(x | z)'s shapes (data [1, N, m] against c [K, N, H], K = 5)."""
    from wakesleep import fused

    fused.use_compiled_kernels(True)
    k = 5
    n = max(1, particles // k)
    torch.manual_seed(0)
    v = (torch.rand(1, n, block) < 0.13).float()
    w, r = torch.randn(hidden, block) * 0.05, torch.randn(block, hidden) * 0.05
    c, running = torch.randn(k, n, hidden), torch.randn(1, n, hidden)
    fwd = torch.compile(fused._nade_block_forward, dynamic=None)
    bwd = torch.compile(fused._nade_block_backward, dynamic=None)
    g = fwd(v, w, running, c, r)[0]
    times = []
    for call in (lambda: fwd(v, w, running, c, r), lambda: bwd(v, w, running, c, r, g, running.clone(), False)):
        call()
        reps = 20 * (pixels // block)
        start = time.thread_time()
        for _ in range(reps):
            call()
        times.append((time.thread_time() - start) / reps / (k * n * block * hidden) * 1e9)
    fused.use_compiled_kernels(False)
    return times[0], times[1]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--particles", type=int, default=500, help="K·B (RWS's K = 5 times batch 100)")
    p.add_argument("--hidden", type=int, default=200, help="NADE's H")
    p.add_argument("--sbn-rounds", type=int, default=3, help="rounds of layers_step.py's SBN step")
    p.add_argument("--compiled", action="store_true", help="also the compiled NADE kernels' rate and step")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    x, out = torch.randn(64 * 1024), torch.empty(64 * 1024)
    sigmoid = ns_per_element(lambda a, o: torch.sigmoid(a, out=o), x, out)
    fma = ns_per_element(lambda a, o: torch.addcmul(a, a, a, out=o), x, out)
    elements = args.particles * args.hidden * (784 + 200)  # p(x | z) over 784 pixels and q(z | x) over 200 latents
    floor_ms = elements * (sigmoid + 5 * fma) * 1e-6
    from layers_step import main as layers_step  # benchmarks/ is the script's directory, first on sys.path

    step = layers_step(["--rounds", str(args.sbn_rounds), "--steps", "2", *(["--compile"] if args.compiled else [])])
    out = {
        "sigmoid_ns_per_element_in_cache": sigmoid,
        "multiply_add_ns_per_element_in_cache": fma,
        "nade_elementwise_floor_ms": floor_ms,
        "sbn_ms_per_step": step["sbn_ms_per_step"],
        "nade_ms_per_step": step["nade_ms_per_step"],
        "nade_floor_vs_sbn": floor_ms / step["sbn_ms_per_step"],
        "nade_step_vs_floor": step["nade_ms_per_step"] / floor_ms,
    }
    if args.compiled:
        fwd_ns, bwd_ns = compiled_block_rates(args.particles, args.hidden)
        kernel_floor_ms = elements * (fwd_ns + bwd_ns) * 1e-6
        out.update(
            compiled_forward_ns_per_element=fwd_ns,
            compiled_backward_ns_per_element=bwd_ns,
            nade_compiled_kernel_floor_ms=kernel_floor_ms,
            nade_compiled_kernel_floor_vs_sbn=kernel_floor_ms / step["sbn_ms_per_step"],
            nade_compiled_ms_per_step=step["nade_compiled_ms_per_step"],
            nade_compiled_step_vs_sbn=step["nade_compiled_step_vs_sbn"],
            nade_compiled_step_vs_kernel_floor=step["nade_compiled_ms_per_step"] / kernel_floor_ms,
        )
    print(key_lines(out))
    return out


if __name__ == "__main__":
    main()
