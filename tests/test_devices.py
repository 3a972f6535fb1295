"""Devices and bounded evaluation memory.

The CUDA tests skip on machines without CUDA; they train, checkpoint, resume and evaluate on the
GPU and load the GPU's checkpoints on the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from wakesleep.cli import UsageError, main, resolve_device
from wakesleep.estimators import IWAE, RWS
from wakesleep.evaluate import WORKING_COPIES, chunk_sizes, log_likelihood
from wakesleep.models import HelmholtzMachine
from wakesleep.models.contract import particle_width
from wakesleep.runs import CHECKPOINT, load_checkpoint
from wakesleep.training import train

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def binary(n, d, seed=0):
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


# ------------------------------------------------------------------ evaluation memory


@pytest.mark.parametrize("cap", [0.01, 1.0, 64.0, 10_000.0])
def test_chunks_stay_within_the_memory_cap(cap):
    b, k = chunk_sizes(784, n=10_000, k=5000, batch_size=100, max_memory_mib=cap)
    assert 1 <= b <= 100 and 1 <= k <= 5000
    used = WORKING_COPIES * b * k * 784 * 4 / 2**20
    assert used <= cap or (b, k) == (1, 1)  # one particle for one datapoint is the floor


def test_chunk_sizes_reject_a_non_positive_cap():
    with pytest.raises(ValueError, match="max_memory_mib"):
        chunk_sizes(8, 10, 10, 10, 0.0)


def test_particle_chunking_does_not_change_the_estimate():
    """Particles are drawn k-major, so a one-layer SBN sees the same random numbers in any number
    of particle chunks: the estimates agree to rounding."""
    torch.manual_seed(0)
    model = HelmholtzMachine.sbn([20, 6]).double()
    x = binary(30, 20).double()
    whole = log_likelihood(model, x, k=64, batch_size=30, seed=3)
    cap = WORKING_COPIES * 30 * 5 * 20 * 8 / 2**20  # room for 5 particles of 30 datapoints
    assert chunk_sizes(particle_width(model, x), 30, 64, 30, cap, 8) == (30, 5)
    chunked = log_likelihood(model, x, k=64, batch_size=30, max_memory_mib=cap, seed=3)
    assert math.isclose(whole.mean, chunked.mean, rel_tol=1e-12) and math.isclose(whole.stderr, chunked.stderr, rel_tol=1e-9)


# ------------------------------------------------------------------ devices


def test_device_names_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="--device cpu"):
            resolve_device("cuda")


@CUDA
@pytest.mark.parametrize(
    "build,estimator",
    [
        (lambda: HelmholtzMachine.sbn([30, 8, 4]), RWS(k=3)),
        (lambda: HelmholtzMachine.gaussian([30, 4], hidden=(16,)), IWAE(k=3)),
        (lambda: HelmholtzMachine.sbn([30, 6], p_layers="nade", q_layers="nade", nade_hidden=8, prior="nade"), RWS(k=3)),
    ],
)
def test_training_on_cuda_checkpoints_load_on_the_cpu(tmp_path, build, estimator):
    torch.manual_seed(0)
    model = build().to("cuda")
    x = binary(200, 30)
    fit = train(model, estimator, x[:160], x[160:], epochs=2, batch_size=40, valid_k=5, run_dir=tmp_path, progress=False)
    assert len(fit.history) == 2 and all(p.is_cuda for p in model.parameters())
    ckpt = load_checkpoint(tmp_path / CHECKPOINT)  # mapped to the CPU
    cpu_model = build()
    cpu_model.load_state_dict(ckpt["model"])
    for (name, p), q in zip(model.state_dict().items(), cpu_model.state_dict().values()):
        assert torch.equal(p.cpu(), q), name
    # The run resumes on the CPU (optimiser state moves with the parameters) ...
    train(cpu_model, estimator.cpu(), x[:160], x[160:], epochs=3, batch_size=40, valid_k=5, run_dir=tmp_path, resume=True, progress=False)
    # ... and evaluates the same on either device: the two means of 20 repeated estimates differ
    # by less than 4.5 standard errors of their difference (from the repeats' spread).
    reps = {}
    for device in ("cpu", "cuda"):
        cpu_model.to(device)
        reps[device] = torch.tensor([log_likelihood(cpu_model, x[160:], k=50, seed=s).mean for s in range(20)])
    a, b = reps["cpu"], reps["cuda"]
    se = math.sqrt(a.var().item() / 20 + b.var().item() / 20)
    assert abs(a.mean().item() - b.mean().item()) < 4.5 * se


@CUDA
def test_cli_trains_on_cuda_and_evaluates_on_the_cpu(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "digits",
                "--layers",
                "8",
                "--epochs",
                "1",
                "--test-k",
                "10",
                "--valid-k",
                "5",
                "--device",
                "cuda",
                "--run-dir",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "on cuda" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--k", "10", "--device", "cpu", "--no-progress"]) == 0


TINY_COMPARE = """
name = "tiny"
seeds = [0]
threads = 1
[data]
dataset = "digits"
[model]
kind = "sbn"
layers = [8]
[train]
epochs = 1
batch_size = 100
valid_k = 5
[evaluate]
test_k = 10
test_n = 20
valid_n = 20
[[estimators]]
label = "RWS-3"
algorithm = "rws"
settings = { k = 3 }
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is missing")
def test_compare_on_cuda_without_cuda_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(TINY_COMPARE)
    code = main(["compare", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "out"), "--device", "cuda", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "CUDA is not available" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_compare_runs_on_the_device_it_is_given_and_evaluates_anywhere(tmp_path, device):
    (tmp_path / "tiny.toml").write_text(TINY_COMPARE)
    assert main(["compare", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "out"), "--device", device, "--no-progress"]) == 0
    run = tmp_path / "out" / "RWS-3" / "seed0"
    assert load_checkpoint(run / CHECKPOINT)["model"]["generative.0.net.weight"].device.type == "cpu"  # loaded as data
    assert main(["evaluate", str(run), "--k", "10", "--device", "cpu", "--no-progress"]) == 0


@CUDA
@pytest.mark.parametrize("estimator", ["rws", "mws"])
def test_a_program_model_trains_on_cuda_and_loads_on_the_cpu(tmp_path, estimator):
    """The per-particle Pyro path on the GPU: the choices z, the replayed values and the memory of
    traces live on the model's device; the checkpoint opens on the CPU with the same log-joints."""
    pytest.importorskip("pyro")
    from grammar import grammar_model

    from wakesleep.estimators import ESTIMATORS

    torch.manual_seed(0)
    model = grammar_model().to("cuda")
    data = grammar_model().sample(40)[1].to("cuda")
    est = ESTIMATORS[estimator](k=3)
    fit = train(model, est, data, data[:10], epochs=2, batch_size=10, valid_k=3, run_dir=tmp_path / "run", progress=False)
    assert len(fit.history) == 2 and all(p.is_cuda for p in model.parameters())
    z, _ = model.propose(data[:4], 2)
    assert z["address"].is_cuda and model.log_joint(data[:4], z).is_cuda
    state = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)
    cpu = grammar_model()
    cpu.load_state_dict(state["model"])
    zc = {k: v.cpu() for k, v in z.items()}
    assert torch.allclose(cpu.log_joint(data[:4].cpu(), zc), model.log_joint(data[:4], z).cpu(), atol=1e-9)
