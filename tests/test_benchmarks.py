"""The benchmark scripts run and end with their key lines (tiny sizes; no timing is checked), and
the plain PyTorch RWS loop of ``benchmarks/time_to_quality.py`` is the RWS gradient.  The script
runs but rws_step.py's are marked slow (each starts its own Python and torch)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import time_to_quality as ttq  # noqa: E402

import wakesleep as ws  # noqa: E402

NUMBER = r"-?[0-9]+\.[0-9]+"


def have_mnist() -> bool:
    d = os.environ.get("WAKESLEEP_DATA_DIR")
    return d is not None and (Path(d) / "binarized_mnist.npz").is_file()


needs_mnist = pytest.mark.skipif(not have_mnist(), reason="binarized_mnist.npz not in $WAKESLEEP_DATA_DIR")


def script(name: str, *args: str, timeout: float = 600) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, str(BENCH / name), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def key_lines(out: str) -> dict[str, str]:
    return dict(re.findall(r"^([a-z0-9_]+): (.+)$", out, flags=re.M))


# ------------------------------------------------------------------ the plain loop is RWS


def test_plain_rws_loop_has_our_rws_gradients_on_the_same_draws():
    """Same particles and sleep samples: the plain torch.distributions loop and wakesleep.RWS
    (q_update="both") give the same loss and the same gradients for every parameter (float64;
    only rounding differs)."""
    torch.manual_seed(0)
    model = ws.HelmholtzMachine.sbn([7, 4]).double()
    x = (torch.rand(6, 7, dtype=torch.float64) < 0.4).double()
    k = 5
    z = (torch.rand(k, 6, 4, dtype=torch.float64) < 0.5).double()
    z_sleep = (torch.rand(6, 4, dtype=torch.float64) < 0.5).double()
    x_sleep = (torch.rand(6, 7, dtype=torch.float64) < 0.5).double()
    net = ttq.PlainSBN.from_helmholtz(model)

    model.propose = lambda x_, k_, reparameterize=False: ([z], ws.HelmholtzMachine.log_proposal(model, x_, [z]))
    model.sample = lambda n: ([z_sleep], x_sleep)
    ours = ws.RWS(k=k)(model, x).loss
    ours.backward()
    plain = ttq.plain_rws_loss(net, x, k, draws=(z, z_sleep, x_sleep))
    plain.backward()
    torch.testing.assert_close(plain, ours, rtol=1e-12, atol=1e-12)
    grads = {name: p.grad for name, p in model.named_parameters()}
    mapped = {
        "prior.logits": net.prior_logits.grad,
        "generative.0.net.weight": net.decoder.weight.grad,
        "generative.0.net.bias": net.decoder.bias.grad,
        "recognition.0.net.weight": net.encoder.weight.grad,
        "recognition.0.net.bias": net.encoder.bias.grad,
    }
    assert set(grads) == set(mapped)
    for name, g in grads.items():
        assert g is not None and g.abs().sum() > 0, name
        torch.testing.assert_close(mapped[name], g, rtol=1e-10, atol=1e-12, msg=name)
    assert all(torch.equal(net.helmholtz_state_dict()[n], p.detach()) for n, p in model.named_parameters())


def test_ratio_reports_a_lower_bound_and_the_bracket():
    ours = ttq.Curve("ours", 10, times=[0, 2, 4], values=[-500, -150, -100], reached=4, reached_after=2)
    slow = ttq.Curve("pyro", 100, times=[0, 50, 100], values=[-500, -200, -180])
    value, note = ttq.ratio(slow, ours)
    assert value == ">= 25.00" and "did not reach" in note
    plain = ttq.Curve("plain", 100, times=[0, 6, 8], values=[-500, -120, -105], reached=8, reached_after=6)
    value, note = ttq.ratio(plain, ours)
    assert value == "2.00" and "1.50 to 4.00" in note
    never = ttq.Curve("ours", 10, times=[0, 10], values=[-500, -300])
    assert ttq.ratio(plain, never)[0] == "nan"


# ------------------------------------------------------------------ the scripts end with their key lines


@pytest.mark.slow  # ~12 s of CPU
@needs_mnist
def test_time_to_quality_prints_its_key_lines_and_figure(tmp_path):
    fig = tmp_path / "ttq.png"
    out = script(
        "time_to_quality.py",
        *("--budget", "1.5", "--baseline-budget", "1.5", "--level", "-450", "--eval-every", "0.5"),
        *("--valid-n", "50", "--valid-k", "5", "--train-n", "1000", "--plot", str(fig), "--no-progress"),
    )
    keys = key_lines(out)
    for key in ("time_to_quality_vs_pyro", "time_to_quality_vs_plain_torch"):
        assert re.fullmatch(rf"(>= )?{NUMBER}|nan", keys[key]), (key, out)
    assert out.rstrip().splitlines()[-1].startswith("time_to_quality_vs_plain_torch: ")
    assert fig.stat().st_size > 1000


def test_rws_step_prints_its_key_lines():
    out = script("rws_step.py", "--models", "sbn1", "gauss", "--warmup", "1", "--repeats", "10", "--profile")
    keys = key_lines(out)
    for key in ("rws_step_share_of_matmul", "rws_step_vs_pyro", "iwae_step_share_of_matmul", "rws_step_products_alone_share"):
        assert re.fullmatch(NUMBER, keys[key]) and float(keys[key]) > 0, (key, keys)
    # The step does its products and more, so the products alone run at a higher share (by about 2x here).
    assert float(keys["rws_step_products_alone_share"]) > float(keys["rws_step_share_of_matmul"]), keys
    assert float(keys["iwae_step_products_alone_share"]) > float(keys["iwae_step_share_of_matmul"]), keys
    assert "| matrix products |" in out and "per-op profile, SBN 784-200, RWS, ours" in out


def test_replayed_products_are_the_steps_products():
    """rws_step --profile times the step's matrix products alone: the replay must do exactly the
    products of the step (same FLOPs, same shapes), forward and backward."""
    import rws_step

    torch.manual_seed(0)
    model = ws.HelmholtzMachine.sbn([784, 200])
    x = (torch.rand(100, 784) < 0.3).float()
    step = rws_step.our_step(model, ws.RWS(k=5), x)
    products = rws_step.record_products(step)
    shapes = sorted(tuple(a[0] for a in args if isinstance(a, tuple)) for _, args, _ in products)
    assert ((784,), (500, 200), (200, 784)) in shapes  # the decoder (addmm: bias, z, Wᵀ) on the K·B particles
    # 2·(K·B)·200·784 for the decoder's forward and its weight gradient, 2·B·784·200 for each of
    # five [B]-row products: wake encoder forward and weight gradient, sleep decoder, sleep encoder
    # forward and weight gradient.
    expected = 2 * (2 * 500 * 200 * 784) + 5 * (2 * 100 * 784 * 200)
    assert rws_step.matmul_flops(rws_step.replay_products(products, torch.device("cpu"))) == rws_step.matmul_flops(step) == expected


def test_levels_table_reads_each_level_off_the_curves():
    ours = ttq.Curve("ours", 100, [0, 10, 20, 30], [-300, -130, -121, -118], [0, 1, 2, 3])
    pyro = ttq.Curve("pyro", 1000, [0, 10, 40, 80, 120], [-300, -150, -125, -121, -120.5], [0, 1, 2, 3, 4])
    rows = ttq.levels_table({"ours": ours, "pyro": pyro}, [-125, -121, -119])
    assert rows[2] == "| -125 | 20 (10–20) | 40 (10–40) | 2.00 |"
    assert rows[3] == "| -121 | 20 (10–20) | 80 (40–80) | 4.00 |"
    # Pyro never reached -119 within its 120 s: a lower bound against ours' 30 s.
    assert rows[4] == "| -119 | 30 (20–30) | not within 120 | >= 4.00 |"


@pytest.mark.slow  # ~12 s of CPU (two processes)
@needs_mnist
def test_evaluate_prints_its_matmul_bound():
    out = script("evaluate.py", "--n", "100", "--k", "20", "--profile")
    keys = key_lines(out)
    share = float(keys["evaluate_share_of_matmul_bound"])
    assert math.isfinite(share) and share > 0  # a share of the machine's rate; a tiny run's timing is too noisy to bound it above
    assert float(keys["evaluate_products_alone_share"]) > 0 and "| matrix products |" in out
    assert out.rstrip().splitlines()[-1].startswith("evaluate_share_of_matmul_bound: ")


@pytest.mark.slow  # ~9 s of CPU
@needs_mnist
def test_alws_step_mnist_prints_its_ratio_last():
    out = script("alws_step.py", "--problem", "mnist", "--sizes", "120", "--rounds", "1", "--num-features", "50", "--num-inducing", "20")
    keys = key_lines(out)
    assert -1 <= float(keys["alws_theta_cosine_vs_exact"]) <= 1
    assert out.rstrip().splitlines()[-1].startswith("alws_step_vs_rws: ") and float(keys["alws_step_vs_rws"]) > 0


@pytest.mark.slow
@needs_mnist
def test_scaling_prints_the_two_process_efficiency():
    out = script("scaling.py", "--train-n", "1000", "--epochs", "2", "--test-n", "50", "--test-k", "5")
    keys = key_lines(out)
    assert 0 < float(keys["torchrun_2_process_efficiency"]) < 2


@pytest.mark.slow  # ~60 s of CPU: two child processes each compile a step
def test_bernoulli_kernel_prints_its_key_lines():
    out = script("bernoulli_kernel.py", "--rounds", "1", "--repeats", "1")
    keys = key_lines(out)
    for key in ("kernel_speedup_step_shape", "kernel_speedup_evaluation_shape", "compiled_rws_step_speedup", "compiled_iwae_step_speedup"):
        assert re.fullmatch(NUMBER, keys[key]) and float(keys[key]) > 0, (key, keys)
    assert out.rstrip().splitlines()[-1].startswith("compiled_iwae_step_speedup: ")


def test_pyro_paths_prints_its_key_lines():
    pytest.importorskip("pyro")
    out = script("pyro_paths.py", "--k", "2", "--batch", "3", "--rounds", "1", "--sites", "1", "3")
    keys = key_lines(out)
    for key in ("per_particle_vs_vectorised_gmm", "per_particle_us_per_site", "plain_torch_us_per_site", "pyro_and_path_overhead_us_per_site"):
        assert re.fullmatch(NUMBER, keys[key]), (key, keys)
    assert float(keys["per_particle_us_per_particle_gmm"]) > 0 and float(keys["vectorised_us_per_particle_gmm"]) > 0


def test_hmws_step_prints_its_key_lines():
    out = script("hmws_step.py", "--rounds", "1", "--steps", "1", "--batch", "4", "--k", "2", "--continuous-k", "2", "--memory-size", "2")
    keys = key_lines(out)
    for key in ("hmws_ms_per_step", "rws_ms_per_step", "rws_same_particles_ms_per_step", "hmws_step_vs_rws", "hmws_step_vs_rws_same_particles"):
        assert re.fullmatch(NUMBER, keys[key]) and float(keys[key]) > 0, (key, keys)
    assert out.rstrip().splitlines()[-1].startswith("hmws_step_vs_rws_same_particles: ")


@pytest.mark.slow  # compiles the NADE kernels (~1 minute)
def test_nade_floor_prints_the_compiled_kernels_key_lines():
    out = script("nade_floor.py", "--sbn-rounds", "1", "--particles", "50", "--compiled")
    keys = key_lines(out)
    for key in (
        "compiled_forward_ns_per_element",
        "nade_compiled_kernel_floor_ms",
        "nade_compiled_step_vs_sbn",
        "nade_compiled_step_vs_kernel_floor",
    ):
        assert re.fullmatch(NUMBER, keys[key]) and float(keys[key]) > 0, (key, keys)


def test_nade_floor_prints_its_key_lines():
    out = script("nade_floor.py", "--sbn-rounds", "1", "--particles", "50")
    keys = key_lines(out)
    for key in ("nade_elementwise_floor_ms", "nade_floor_vs_sbn", "nade_step_vs_floor", "sigmoid_ns_per_element_in_cache"):
        assert re.fullmatch(NUMBER, keys[key]) and float(keys[key]) > 0, (key, keys)
