"""The estimator contract: one surrogate loss whose gradient is the estimator.

An estimator takes a model and a data batch x [B, D] and returns an :class:`EstimatorOutput`:
``loss`` is a scalar whose gradient with respect to each parameter group *is* that estimator's
(negated, since optimisers descend) update for the group — θ for the generative model, φ for the
recognition model, and the estimator's own parameters (ALWS's kernel) where it has any.  The
trainer calls ``loss.backward()`` and steps; it knows nothing of the estimator's math.

Batch reduction: losses are means over datapoints (PyTorch's convention), so learning rates do not
depend on the batch size; the RWS paper's code sums over the minibatch instead.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

from torch import Tensor, nn

from wakesleep.models.contract import GENERATIVE, TRAINING_WITH_PROPOSAL


@dataclass
class EstimatorOutput:
    """What one estimator call returns.

    Attributes:
        loss: scalar surrogate loss (not itself a likelihood; only its gradient matters).
        metrics: named detached scalars for logging, e.g. ``objective`` (nats per datapoint).
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class Estimator(nn.Module):
    """Base class.  Subclasses implement :meth:`forward` and may hold parameters of their own."""

    name: str = "estimator"
    #: Whether :meth:`forward` takes ``index`` [B] (long), the minibatch's rows in the training set,
    #: from the trainer (an estimator with per-datapoint state, e.g. memoised wake-sleep's memory).
    needs_index: bool = False

    def prepare(self, model, train_data) -> None:
        """Called by :func:`wakesleep.train` with the training set [N, D] before the first step and
        before a checkpoint is loaded: allocate per-datapoint state here.  Default: nothing."""

    def requires(self, model) -> tuple[str, ...]:
        """The model-contract members (:mod:`wakesleep.models.contract`) this estimator calls on
        ``model`` with its settings; the trainer checks them all before the first step."""
        return GENERATIVE

    def member_hints(self) -> dict[str, str]:
        """For members of :meth:`requires` that other settings of this estimator would not need:
        member -> how to do without it, added to the message when the model lacks that member."""
        return {}

    def check_model(self, model) -> None:
        """Raise ``ValueError`` naming the fix if this estimator cannot train ``model`` (beyond the
        members of :meth:`requires`, which :func:`wakesleep.train` checks)."""

    def for_checks(self) -> Estimator:
        """A copy of this estimator for the gradient check before the first step
        (:func:`wakesleep.training.checks.check_gradient_flow`): the same members and gradient
        paths at a small cost, its state apart from this one's (a step may change it).  Default:
        a deep copy; an estimator whose step is costly at any batch size (ALWS's thousands of sleep
        samples) shrinks it."""
        with warnings.catch_warnings():  # torch's pytree specs (a memory's layout) warn when copied
            warnings.simplefilter("ignore", FutureWarning)
            return copy.deepcopy(self)

    def forward(self, model, x: Tensor) -> EstimatorOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.settings().items())

    def settings(self) -> dict:
        """The constructor arguments, for configs and logs."""
        return {}


def check_positive_float(name: str, value) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` saying it must be a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` saying it must be >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class ParticleEstimator(Estimator):
    """Base of the estimators that draw k particles per datapoint from the proposal q_φ(z | x) and
    train θ and φ together (IWAE, VAE, VIMCO, REINFORCE, NVIL, TVO): ``k`` is checked and kept in
    :meth:`settings`, and the model must have a proposal.

    Raises:
        ValueError: for k below :attr:`k_minimum`.
    """

    #: How the error for a bad k names it, and the least k the estimator takes.
    k_label = "k (particles)"
    k_minimum = 1

    def __init__(self, k: int):
        super().__init__()
        self.k = check_positive_int(self.k_label, k, self.k_minimum)

    def settings(self) -> dict:
        return {"k": self.k}

    def requires(self, model) -> tuple[str, ...]:
        """``propose``, ``log_joint``, both parameter groups."""
        return TRAINING_WITH_PROPOSAL


class ReparameterisedEstimator(ParticleEstimator):
    """Base of the estimators that differentiate through reparameterised particles (VAE, IWAE):
    k particles z_k = g_φ(ε_k, x) per datapoint (``propose(x, k, reparameterize=True)``) and their
    log-weights, θ and φ trained jointly; a subclass turns the log-weights into its loss
    (:meth:`loss_from_log_weights`).

    Args:
        k: particles per datapoint (≥ 1).

    Raises:
        ValueError: for k < 1, or (on use) a model with discrete latents.
    """

    def check_model(self, model) -> None:
        if not getattr(model, "reparameterizable", False):
            raise ValueError(
                f"{type(self).__name__} needs reparameterisable latents (propose(x, k, reparameterize=True) and the attribute "
                f"reparameterizable = True); {type(model).__name__} has none (discrete latents?): use --algorithm rws or ws instead"
            )

    def log_weights(self, model, x: Tensor) -> Tensor:
        """log w_k = log p_θ(x, z_k) − log q_φ(z_k | x) [K, B] for k reparameterised particles, with ∇θ and ∇φ."""
        zs, log_q = model.propose(x, self.k, reparameterize=True)
        return model.log_joint(x, zs) - log_q

    def forward(self, model, x: Tensor) -> EstimatorOutput:
        self.check_model(model)
        return self.loss_from_log_weights(self.log_weights(model, x))

    def loss_from_log_weights(self, log_w: Tensor) -> EstimatorOutput:  # pragma: no cover - abstract
        """The loss and metrics from the log-weights [K, B] of :meth:`log_weights`."""
        raise NotImplementedError
