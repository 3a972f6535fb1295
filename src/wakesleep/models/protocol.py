"""What a model must offer to be learned by amortised learning by wake-sleep (ALWS).

ALWS (Wenliang, Moskovitz, Kanagawa & Sahani, ICML 2020, arXiv 2002.09737; ALGORITHMS.md §4)
needs no recognition model and no reparameterisation: only samples from the model and its
log-joint.  Any simulator that meets :class:`ALWSModel` can be trained by
:class:`wakesleep.estimators.ALWS`; one that also meets :class:`ExponentialFamilyModel` can use the
lower-variance exponential-family target.  ``HelmholtzMachine`` meets both (the latter when its
likelihood p(x | z_1) is Bernoulli, Gaussian or Poisson).

Shapes: latents are a list ``zs = [z_1, …, z_L]`` (bottom first), each [N, d_l]; data x [N, D];
log-densities [N], in nats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class ALWSModel(Protocol):
    """The duck type ALWS trains.

    - ``sample(n) -> (zs, x)``: n ancestral samples (z, x) ~ p_θ, drawn *without* gradient.
    - ``log_joint(x, zs) -> [N]``: log p_θ(x, z), nats, differentiable w.r.t. θ.
    - ``log_prior(zs) -> [N]``: log p_θ(z), nats, differentiable w.r.t. θ (the prior's parameters
      are learned through it by the exponential-family target).
    - ``p_parameters()``: θ, the parameters ALWS learns; ``q_parameters()``: a proposal's
      parameters (may be empty); ``data_dim``: D.  The trainer uses these three.
    """

    data_dim: int

    def sample(self, n: int) -> tuple[list[Tensor], Tensor]: ...

    def log_joint(self, x: Tensor, zs: Sequence[Tensor]) -> Tensor: ...

    def log_prior(self, zs: Sequence[Tensor]) -> Tensor: ...

    def p_parameters(self) -> list[nn.Parameter]: ...

    def q_parameters(self) -> list[nn.Parameter]: ...


@runtime_checkable
class ExponentialFamilyModel(ALWSModel, Protocol):
    """An :class:`ALWSModel` whose likelihood is an exponential family in x:
    p_θ(x | z) = h(x) exp(η_θ(z)·S(x) − Ψ_θ(z)).

    - ``exponential_family(zs) -> (η [N, S], Ψ [N])``: natural parameters and log-normaliser,
      differentiable w.r.t. θ;
    - ``sufficient_statistics(x) -> [N, S]``: S(x) (no parameters; log h(x) is not needed).
    """

    def exponential_family(self, zs: Sequence[Tensor]) -> tuple[Tensor, Tensor]: ...

    def sufficient_statistics(self, x: Tensor) -> Tensor: ...


def supports_exponential_family(model) -> bool:
    """True when ``model`` offers the exponential-family view (and, for a ``HelmholtzMachine``,
    its likelihood layer actually has one)."""
    return isinstance(model, ExponentialFamilyModel) and bool(getattr(model, "has_exponential_family", True))


def check_alws_model(model, exponential_family: bool = False) -> None:
    """Raise ``TypeError`` naming the missing members if ``model`` does not meet
    :class:`ALWSModel` (or :class:`ExponentialFamilyModel` when ``exponential_family``)."""
    proto = ExponentialFamilyModel if exponential_family else ALWSModel
    if not isinstance(model, proto):
        need = ["data_dim", "sample", "log_joint", "log_prior", "p_parameters", "q_parameters"]
        if exponential_family:
            need += ["exponential_family", "sufficient_statistics"]
        missing = [m for m in need if not hasattr(model, m)]
        raise TypeError(
            f"{type(model).__name__} does not meet the {proto.__name__} protocol "
            f"(wakesleep.models.protocol): it lacks {', '.join(missing)}"
        )
