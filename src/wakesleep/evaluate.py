"""Evaluation: importance-sampled and exact log-likelihood.

All log-likelihoods are in nats.  The importance-sampled estimate follows the IWAE protocol
(Burda et al. 2016; ``../shared/reference/ALGORITHMS.md`` §5): for each test point
log p(x) ≈ log (1/K) Σ_k w_k with K proposal samples (K = 5000 is the standard), computed with
log-sum-exp in chunks; the mean over the test set is reported with its standard error over test
points.  The estimate is a stochastic lower bound in expectation (Jensen), tightening as K grows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from wakesleep.importance import log_mean_exp_chunks
from wakesleep.models import contract
from wakesleep.models.contract import exact_log_marginal  # evaluation's public name for the one definition

# isort: off
# isort: on

#: Default cap on evaluation's working memory, MiB (see :func:`log_likelihood`).
DEFAULT_MAX_MEMORY_MIB = 256.0

#: How many [K_chunk, B_chunk, width] tensors one chunk is budgeted for: logits, the log-density's
#: temporaries and samples are 3 at a time, but the CPU allocator's retained, fragmented blocks
#: made the resident set grow by up to 7 of them in ``benchmarks/evaluate.py`` (SBN and
#: Gaussian-latent models); 10 leaves a margin.
WORKING_COPIES = 10


@dataclass(frozen=True)
class LogLikelihood:
    """A test log-likelihood estimate.

    Attributes:
        mean: mean over datapoints of log p(x), nats.
        stderr: standard error of that mean over datapoints, nats (0 for one datapoint).
        k: particles per datapoint (0 for an exact value).
        n: number of datapoints.
    """

    mean: float
    stderr: float
    k: int
    n: int

    @property
    def nll(self) -> float:
        """Negative log-likelihood, nats."""
        return -self.mean

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        how = "exact" if self.k == 0 else f"K={self.k}"
        return f"{self.mean:.3f} ± {self.stderr:.3f} nats ({how}, n={self.n})"


def mean_stderr(values: Tensor, k: int = 0) -> LogLikelihood:
    """Mean of ``values`` [N] (nats) with its standard error, ``std / √N`` (unbiased std; 0 for N = 1).

    Args:
        values: [N] per-datapoint (or per-seed, per-repeat) log-likelihoods or gaps, nats.
        k: particles per value, recorded in the result (0: exact values, or not an estimate).
    """
    values = values.double()
    n = values.numel()
    se = values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else 0.0
    return LogLikelihood(values.mean().item(), se, k, n)


def _as_tensor(model, data) -> Tensor:
    device, dtype = contract.device_dtype(model)
    x = torch.as_tensor(data)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"data must be [N, D], got shape {tuple(x.shape)}")
    dim = getattr(model, "data_dim", None)
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"data has width {x.shape[1]} but the model expects {dim}")
    if x.shape[0] == 0:
        raise ValueError("cannot evaluate on an empty data set")
    return x.to(device=device, dtype=dtype)


def chunk_sizes(width: int, n: int, k: int, batch_size: int, max_memory_mib: float, itemsize: int = 4) -> tuple[int, int]:
    """(datapoints, particles) per chunk so that a chunk's working memory stays within
    ``max_memory_mib``: ``WORKING_COPIES × B_chunk × K_chunk × width × itemsize`` bytes, where
    width is the elements per particle and datapoint (:func:`wakesleep.models.contract.particle_width`:
    the model's widest layer).  Particles are cut before datapoints; one particle for one
    datapoint is the floor, whatever the cap.

    Raises:
        ValueError: for a non-positive cap.
    """
    if not (max_memory_mib > 0):
        raise ValueError(f"max_memory_mib must be > 0, got {max_memory_mib!r}")
    budget = int(max_memory_mib * 2**20) // (WORKING_COPIES * width * itemsize)  # elements of [K, B] per chunk
    b = max(1, min(batch_size, n, budget))
    return b, max(1, min(k, budget // b))


def check_evaluable(model, x: Tensor) -> None:
    """Check that ``model`` can be evaluated by importance sampling on data like x [N, D]: it has
    a proposal and ``propose``/``log_joint`` return the contract's shapes on two datapoints.

    Raises:
        wakesleep.models.contract.ModelContractError: (a ``TypeError``) no proposal, naming the members.
        wakesleep.models.contract.ModelShapeError: a member returning the wrong shape.
    """
    if not contract.has_proposal(model):
        raise contract.ModelContractError(
            f"{type(model).__name__} has no proposal q(z | x), which importance-sampled evaluation needs "
            f"({contract.MEMBERS['propose']}): give it one, fit one by sleep-phase updates "
            "(wakesleep.estimators.train_proposal), or evaluate exactly where the latents can be enumerated"
        )
    contract.check_model(model, contract.EVALUATION, "importance-sampled evaluation")
    contract.check_shapes(model, x, contract.EVALUATION)


def importance_log_marginal(
    model,
    x: Tensor,
    k: int,
    particle_chunk: int | None = None,
    max_memory_mib: float = DEFAULT_MAX_MEMORY_MIB,
    progress=None,
) -> Tensor:
    """Per-datapoint log (1/K) Σ_k w_k, with the K particles drawn in chunks, no gradient.

    Args:
        model: a model with a proposal (``propose`` and ``log_joint``; ``log_weights`` if it has a faster one).
        x: [B, D].
        k: particles per datapoint (≥ 1).
        particle_chunk: particles per chunk; by default the most that keep the chunk's working
            memory within ``max_memory_mib`` (:func:`chunk_sizes`).
        progress: an optional tqdm bar, advanced by B for every particle drawn.

    Returns:
        [B], nats.

    Raises:
        ValueError: for k < 1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if particle_chunk is None:
        particle_chunk = chunk_sizes(contract.particle_width(model, x), x.shape[0], k, x.shape[0], max_memory_mib, x.element_size())[1]

    def chunks():
        done = 0
        while done < k:
            kc = min(particle_chunk, k - done)
            yield contract.log_weights(model, x, kc)
            done += kc
            if progress is not None:
                progress.update(kc * x.shape[0])

    return log_mean_exp_chunks(chunks(), k)


def log_likelihood(
    model,
    data,
    k: int = 5000,
    batch_size: int = 100,
    max_memory_mib: float = DEFAULT_MAX_MEMORY_MIB,
    progress: bool = False,
    seed: int | None = None,
    check: bool = True,
) -> LogLikelihood:
    """Importance-sampled test log-likelihood with the model's proposal q(z | x) (IWAE protocol).

    Memory is bounded: datapoints go in batches of at most ``batch_size`` and particles in
    chunks, both sized (:func:`chunk_sizes`) so that the tensors of one chunk take at most
    ``max_memory_mib`` MiB (256 by default) on top of the model and the data.  The recognition
    network's first layer runs once per datapoint batch, whatever K.

    Args:
        model: a model with a proposal: ``propose`` and ``log_joint`` (:mod:`wakesleep.models.contract`).
        data: [N, D] tensor or array.
        k: particles per datapoint (5000 is the standard).
        batch_size: the most datapoints per batch.
        max_memory_mib: cap on the working memory of one chunk, MiB (> 0).
        progress: show a progress bar over the N·K particle evaluations.
        seed: seeds torch's generator for a reproducible estimate (restores nothing afterwards).
        check: check the model's proposal members and shapes first (:func:`check_evaluable`);
            the trainer's validation passes False, having checked them before its first step.

    Returns:
        :class:`LogLikelihood` (mean and standard error over datapoints, nats).

    Raises:
        ValueError: for k < 1, an empty data set, data of the wrong width, or a cap ≤ 0.
        wakesleep.models.contract.ModelContractError: (a ``TypeError``) a model without a proposal.
        wakesleep.models.contract.ModelShapeError: a member returning the wrong shape.
    """
    x = _as_tensor(model, data)
    if check:
        check_evaluable(model, x)
    if seed is not None:
        torch.manual_seed(seed)
    b, kc = chunk_sizes(contract.particle_width(model, x), x.shape[0], k, batch_size, max_memory_mib, x.element_size())
    out = []
    with (
        torch.no_grad(),
        tqdm(
            total=x.shape[0] * k,
            desc=f"log-likelihood K={k}",
            unit="particle",
            unit_scale=True,
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        ) as bar,
    ):
        for xb in x.split(b):
            out.append(importance_log_marginal(model, xb, k, particle_chunk=kc, progress=bar))
    return mean_stderr(torch.cat(out), k)


def exact_log_likelihood(model, data) -> LogLikelihood:
    """Exact mean log-likelihood over ``data`` (see :func:`exact_log_marginal`), nats."""
    x = _as_tensor(model, data)
    with torch.no_grad():
        return mean_stderr(exact_log_marginal(model, x), 0)


def report_log_likelihood(model, data, k: int = 5000, **kwargs) -> LogLikelihood:
    """The log-likelihood a run reports: importance-sampled with the model's proposal
    (:func:`log_likelihood`, keyword arguments passed on), or, for a model without a proposal
    that has an exact form (``exact_log_marginal`` or ``enumerate_latents``), exact
    (:func:`exact_log_likelihood`).

    Raises:
        wakesleep.models.contract.ModelContractError: (a ``TypeError``) a model with neither.
    """
    if contract.has_proposal(model):
        return log_likelihood(model, data, k=k, **kwargs)
    if contract.has_exact_form(model):
        return exact_log_likelihood(model, data)
    raise contract.ModelContractError(
        f"{type(model).__name__} has neither a proposal ({contract.MEMBERS['propose']}) for importance-sampled evaluation "
        f"nor an exact form ({contract.MEMBERS['exact_log_marginal']}, or enumerate_latents()): give it one of them"
    )
