"""Checks before training: the model meets the contract for the estimator, the data fit the model,
and one training step fits in memory."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from wakesleep.estimators.base import Estimator
from wakesleep.models import contract, probes


def check_model_for_training(model, estimator, train_data: Tensor, valid: Tensor | None) -> Tensor | None:
    """Check, before the first step, that ``model`` meets the contract for ``estimator`` and for
    validation: one :class:`~wakesleep.models.ModelContractError` listing every missing member,
    then a shape check on two datapoints naming the member that returns the wrong shape, then
    the estimator's own check, then :func:`wakesleep.models.probes.check_learning` on three
    datapoints (gradient flow through each member, batch order, finite values, dtypes and devices).  A model without a proposal is validated by its exact
    log-likelihood where it has one (``exact_log_marginal`` or ``enumerate_latents``); without
    either it cannot be validated: this warns that validation (and early stopping) is off, and
    returns None for ``valid``.

    Returns:
        ``valid``, or None when it will not be used.

    Raises:
        wakesleep.models.ModelContractError: (a ``TypeError``) missing members.
        wakesleep.models.ModelShapeError: (a ``ValueError``) a member returning the wrong shape.
        ValueError: the estimator's own check (e.g. VAE with discrete latents).
        wakesleep.models.probes.ModelCheckError: (a ``ValueError``) a member that would train
            without learning (named, with the fix).
    """
    if valid is not None and not contract.has_proposal(model) and not contract.has_exact_form(model):
        warnings.warn(
            f"{type(model).__name__} has no proposal q(z | x) and no exact log-likelihood, so there is no validation "
            "log-likelihood: validation and early stopping are off and the last epoch's model is kept. "
            "Give the model a proposal (ALWS(q_update='sleep') trains one by sleep-phase updates) or exact_log_marginal(x) to validate",
            UserWarning,
            stacklevel=3,
        )
        valid = None
    needs = tuple(estimator.requires(model)) + (contract.EVALUATION if valid is not None and contract.has_proposal(model) else ())
    settings = ", ".join(f"{k}={v!r}" for k, v in estimator.settings().items() if v is not None and k != "data_dim")
    purpose = f"{type(estimator).__name__}({settings}){' with validation' if valid is not None else ''}"
    contract.check_model(model, needs, purpose, estimator.member_hints())
    contract.check_shapes(model, train_data, needs)
    estimator.check_model(model)
    probes.check_learning(model, train_data, needs)
    return valid


def check_gradient_flow(model, estimator, train_data: Tensor) -> None:
    """One step of ``estimator`` on three rows of ``train_data`` (on its ``for_checks()`` copy, under
    :func:`wakesleep.models.probes.quiet_probe`, nothing stepped): every parameter group it trains
    must receive a finite gradient that is not identically zero.  The groups are θ
    (``p_parameters``) and φ (``q_parameters``) where ``estimator.requires(model)`` names them,
    and the estimator's own trainable parameters.  Run after :func:`check_model_for_training`
    (which names a member whose own output carries no gradient) and the estimator's ``prepare``.

    Raises:
        wakesleep.models.probes.ModelCheckError: (a ``ValueError``) naming the group and the members
            that carry its gradient.
    """
    needs = set(estimator.requires(model))
    rows = probes.probe_rows(train_data)
    est = estimator.for_checks() if hasattr(estimator, "for_checks") else Estimator.for_checks(estimator)  # a duck-typed one: a copy
    name = type(estimator).__name__
    with probes.quiet_probe(model, train_data.device), torch.enable_grad():
        kwargs = {"index": rows} if getattr(est, "needs_index", False) else {}
        loss = est(model, train_data[rows], **kwargs).loss
        groups = []
        if "p_parameters" in needs:
            groups.append(("the generative parameters θ (p_parameters())", list(model.p_parameters()), "log_joint"))
        if "q_parameters" in needs and contract.has_member(model, "q_parameters"):
            carriers = " and ".join(m for m in ("propose", "log_proposal") if m in needs)
            groups.append(("the proposal's parameters φ (q_parameters())", list(model.q_parameters()), carriers))
        groups.append((f"{name}'s own parameters", [p for p in est.parameters() if p.requires_grad], None))
        for label, params, carriers in groups:
            params = [p for p in params if isinstance(p, Tensor) and p.requires_grad]
            if not params:
                continue
            grads = [g for g in torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True) if g is not None]
            via = f" through {type(model).__name__}.{carriers}" if carriers else ""
            if not grads:
                problem = "receives no gradient from its loss"
            elif not all(bool(torch.isfinite(g).all()) for g in grads):
                problem = "receives a non-finite gradient from its loss"
            elif not any(bool((g != 0).any()) for g in grads):
                problem = "receives a gradient that is exactly zero from its loss"
            else:
                continue
            if "non-finite" in problem:
                fix = (
                    "A log-density is ±inf or NaN at some particle: log_joint = −inf (an impossible configuration) is allowed, "
                    "but estimators whose signals use every log-weight (VIMCO, REINFORCE, NVIL, TVO) then have none; use RWS, "
                    "WS or MWS, which weigh such particles 0, or a likelihood with an ABC tolerance (docs/your-own-model.md)"
                )
            else:
                fix = (
                    "Check that those members compute their values from these parameters with gradient (no .detach(), .item() "
                    "or torch.no_grad) and that p_parameters()/q_parameters() return the parameters the members use"
                )
            raise probes.ModelCheckError(
                f"{label} {problem} on three training datapoints before the first step, so {name} would not train them: "
                f"the gradient reaches them{via}. {fix}"
            )


def check_data(model, x: Tensor, name: str) -> None:
    """Raise ``ValueError`` naming the fix for data the model cannot be trained on.

    Checks: [N, D] with N ≥ 1, D equal to the model's data width, real (not complex) finite
    values, and values in {0, 1} when the model's likelihood is Bernoulli.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array, got shape {tuple(x.shape)}")
    dim = getattr(model, "data_dim", None)
    if dim is not None and x.shape[1] != dim:
        source = getattr(model, "data_dim_source", None)
        raise ValueError(
            f"{name} has width {x.shape[1]} but the model expects {dim}{f' ({source})' if source else ''}: build the model for this data"
        )
    if x.is_complex():
        raise ValueError(
            f"{name} is complex ({x.dtype}), and the models take real numbers (the imaginary part would be dropped): "
            "give the real and imaginary parts as columns of their own, e.g. torch.cat([x.real, x.imag], dim=1)"
        )
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name} has {bad} NaN/inf values; clean the data first")
    if getattr(model, "binary_data", False) and not ((x == 0) | (x == 1)).all():
        raise ValueError(
            f"{name} has values outside {{0, 1}}, but the model's likelihood is Bernoulli: binarise the data (e.g. x > 0.5) or use a Gaussian likelihood"
        )


def data_on_device(model, x, name: str) -> Tensor:
    """``x`` as a tensor of the model's device and dtype, after :func:`check_data`."""
    x = torch.as_tensor(x)
    check_data(model, x, name)
    return x.to(*contract.device_dtype(model))


class InsufficientMemory(ValueError):
    """A run's estimated memory exceeds what is available (the message says what would fit)."""


def available_memory(device: torch.device | str) -> int | None:
    """Bytes available for a new allocation on ``device``: CUDA's free memory, or on the CPU the
    kernel's ``MemAvailable`` (capped by this process's cgroup limit, as in a container or a
    scheduler's job); None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v2: the limit less what the group already uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def training_memory(model, estimator, batch_size: int) -> dict[str, int]:
    """A rough lower estimate of the memory one training step takes, bytes, from the parameters'
    shapes alone (``model`` may live on the ``meta`` device, where building it allocates nothing).

    Parameters count four times (values, gradients, Adam's two moments); activations three times
    (forward value, saved for backward, its gradient) per unit per particle row, where units are
    the data width plus every weight matrix's outputs and rows are ``batch_size`` × particles
    (``k``, ``k`` + ``memory_size``, (``k`` + ``memory_size``) · ``continuous_k`` or ``samples``) plus
    sleep samples; ALWS's kernel solve adds its N × N (exact), N × m (Nyström) or N × F (random
    features) matrix, three times.

    Returns:
        ``{"parameters": P, "parameter_bytes", "step_bytes", "total"}``.
    """
    params = list(model.parameters()) + list(estimator.parameters())
    n = sum(p.numel() for p in params)
    elt = params[0].element_size() if params else 4
    settings = estimator.settings()
    # MWS scores k + M latents; HMWS scores k + M discrete values with continuous_k particles each
    scored = (int(settings.get("k") or 1) + int(settings.get("memory_size") or 0)) * int(settings.get("continuous_k") or 1)
    particles = max(scored, int(settings.get("samples") or 1))
    sleep = int(settings.get("sleep_samples") or 0)
    rows = batch_size * particles + sleep
    units = int(getattr(model, "data_dim", None) or 0) + sum(p.shape[0] for p in model.parameters() if p.ndim == 2)
    solver = {"exact": sleep, "nystrom": settings.get("num_inducing") or 0, "rff": settings.get("num_features") or 0}
    kernel = sleep * int(solver.get(settings.get("krr"), 0))
    parameter_bytes = 4 * n * elt
    step_bytes = 3 * (rows * units + kernel) * elt
    return {"parameters": n, "parameter_bytes": parameter_bytes, "step_bytes": step_bytes, "total": parameter_bytes + step_bytes}


def check_memory(
    model, estimator, batch_size: int, device: torch.device | str, fix: str = "a smaller model, batch size or number of particles"
) -> None:
    """Refuse a run whose :func:`training_memory` exceeds :func:`available_memory` on ``device``,
    before anything of it is allocated (build the model on the ``meta`` device to check it).

    Raises:
        InsufficientMemory: one line with the estimate, what is available, the largest model (in
            parameters) that would fit at this batch size, and ``fix``.
    """
    need, free = training_memory(model, estimator, batch_size), available_memory(device)
    if free is None or need["total"] <= free:
        return
    gib = lambda b: f"{b / 2**30:.3g} GiB"  # noqa: E731
    # Parameters and activations both grow about linearly with the layers' widths.
    fits = int(need["parameters"] * max(free, 0) / need["total"])
    raise InsufficientMemory(
        f"this run needs about {gib(need['total'])} for one training step ({need['parameters']:,} parameters: "
        f"{gib(need['parameter_bytes'])} with gradients and optimiser state; activations: {gib(need['step_bytes'])}), "
        f"but {gib(max(free, 0))} is available on {torch.device(device)}; at this batch size a model of at most about "
        f"{fits:,} parameters would fit: use {fix}"
    )
