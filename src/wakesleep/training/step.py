"""One training step, as Pyro's ``SVI.step``: the estimator returns a surrogate loss, the step is
``backward()``, (under torchrun) the gradient average, a finiteness check and the Adam update.

The trainer knows nothing of any estimator's math.  Here too: the optimiser (:func:`build_optimizer`),
the ``torch.compile`` wrapper (:func:`compile_estimator`) and what a non-finite step does.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from wakesleep import fused
from wakesleep.estimators.base import EstimatorOutput
from wakesleep.faults import fault_point
from wakesleep.models import probes
from wakesleep.training import distributed
from wakesleep.training.settings import TrainConfig


class TrainingError(RuntimeError):
    """A training step produced a non-finite quantity (the message names step, estimator and quantity)."""


def build_optimizer(model, estimator, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The trainer's Adam: one parameter group each for θ (``lr_p``), φ (``lr_q``) and the
    estimator's own parameters (``lr_estimator``), in that order (groups without parameters are
    left out).  Uses PyTorch's fused Adam kernel (one pass per tensor instead of about ten; the
    same update up to rounding) where every parameter is a floating tensor on a device it supports."""
    groups = [{"params": list(model.p_parameters()), "lr": cfg.lr_p, "name": "p"}]
    q = list(model.q_parameters()) if callable(getattr(model, "q_parameters", None)) else []  # optional without a proposal
    if q:
        groups.append({"params": q, "lr": cfg.lr_q, "name": "q"})
    e = [p for p in estimator.parameters() if p.requires_grad]
    if e:
        groups.append({"params": e, "lr": cfg.lr_estimator, "name": "estimator"})
    params = [p for g in groups for p in g["params"]]
    use_fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(groups, fused=use_fused or None)


_GET_TOTAL_NORM = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6; looked up once, not per step


def _grad_norm(grads: list[Tensor]) -> Tensor:
    if not grads:
        return torch.zeros(())
    if _GET_TOTAL_NORM is not None:
        return _GET_TOTAL_NORM(grads)
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))


def compile_estimator(estimator):
    """``torch.compile`` of an estimator's forward (surrogate loss and, through AOTAutograd, its
    backward), as a callable ``(model, x) -> EstimatorOutput`` (``TrainConfig(compile=True)``).

    Random numbers are drawn by ATen, as in eager mode (Inductor's ``fallback_random``), so the
    compiled step draws the same particles and sleep samples as the eager one from the same
    seed and computes the same loss up to float rounding (``tests/test_fused.py``).  Compiling
    happens on the first call (seconds) and again once when the batch shape changes.  If it
    fails (no C++ compiler, an operation Inductor cannot handle) this warns once and calls the
    eager estimator from then on.
    """
    compiled = torch.compile(estimator, options={"fallback_random": True})

    def forward(model, x: Tensor, **kwargs) -> EstimatorOutput:
        nonlocal compiled
        if compiled is None:
            return estimator(model, x, **kwargs)
        try:
            return compiled(model, x, **kwargs)
        except Exception as err:  # Dynamo/Inductor raise many types; the eager call below re-raises real errors
            warnings.warn(
                f"torch.compile of the {type(estimator).__name__} step failed ({fused.first_line(err)}); training on with the eager step",
                RuntimeWarning,
                stacklevel=2,
            )
            compiled = None
            return estimator(model, x, **kwargs)

    return forward


def train_step(
    model, estimator, opt: torch.optim.Optimizer, x: Tensor, forward=None, index: Tensor | None = None
) -> tuple[EstimatorOutput, str | None]:
    """One training step: ``estimator(model, x)`` → ``backward()`` → (in a process group, the
    gradient average over ranks) → Adam step, unless the loss or a gradient is non-finite.

    Finiteness is checked once per step, on the loss and the total gradient norm together (one
    host-device synchronisation on CUDA); only when that fails are the parameters searched for
    the culprit.

    Args:
        model: as for :func:`~wakesleep.training.train`.
        estimator: as for :func:`~wakesleep.training.train`.
        opt: the optimiser over ``model`` and ``estimator`` (:func:`build_optimizer`).
        x: this process's minibatch [B, D].
        forward: what computes the estimator's output (default ``estimator`` itself; the trainer
            passes :func:`compile_estimator`'s callable under ``TrainConfig(compile=True)``).
        index: x's rows in the training set [B] (long), handed to an estimator whose
            ``needs_index`` is true (others are called with ``(model, x)`` alone).

    Returns:
        ``(output, bad)``: the estimator's output, and ``None`` after a step, or the name of the
        non-finite quantity (``"loss"`` or ``"gradient of NAME"``) when no step was taken (the
        gradients are then cleared).
    """
    kwargs = {"index": index} if getattr(estimator, "needs_index", False) else {}
    out = (forward or estimator)(model, x, **kwargs)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    fault_point("step")
    params = [p for g in opt.param_groups for p in g["params"]]
    loss = out.loss.detach()
    if distributed.world()[1] > 1:
        loss = distributed.average_gradients(params, out.loss)
    grads = [p.grad for p in params if p.grad is not None]
    if not bool(torch.isfinite(torch.stack([loss, _grad_norm(grads).to(loss.device, loss.dtype)])).all()):
        bad = "loss" if not bool(torch.isfinite(loss)) else _nonfinite(model, estimator)
        if bad is not None:
            opt.zero_grad(set_to_none=True)
            return out, bad
    opt.step()
    return out, None


def _nonfinite(model, estimator) -> str | None:
    for name, p in list(model.named_parameters()) + [("estimator." + n, p) for n, p in estimator.named_parameters()]:
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return f"gradient of {name}"
    return None


def refuse_nonfinite(bad: str, step: int, epoch: int, estimator, run: Path | None, model=None, x: Tensor | None = None) -> TrainingError:
    """The error for a step whose loss or gradient was non-finite (``bad`` names it), to raise
    under ``nan_policy="error"``.  With ``model`` and the step's batch ``x`` [B, D], the batch is
    re-run member by member (:func:`wakesleep.models.probes.first_nonfinite`) and the first member
    whose value or gradient is non-finite is named."""
    culprit = None
    if model is not None and x is not None:
        try:
            culprit = probes.first_nonfinite(model, x, estimator.requires(model))
        except Exception as e:  # the diagnosis must not hide the error it explains
            culprit = f"re-running the batch member by member raised {type(e).__name__}: {fused.first_line(e)}"
    found = (
        f" Re-run member by member on this step's batch: {culprit}."
        if culprit
        else (
            " Re-run member by member on this step's batch, every member's value and gradient were finite: the estimator's "
            "arithmetic or this step's particles overflowed."
        )
        if model is not None
        else ""
    )
    return TrainingError(
        f"step {step} (epoch {epoch + 1}): estimator {getattr(estimator, 'name', estimator)} produced a non-finite {bad}; "
        f"the last good checkpoint is kept{' in ' + str(run) if run else ''}.{found} Lower the learning rates, "
        "check the data, or pass nan_policy='skip' (--skip-nonfinite) to skip such steps"
    )
