"""A model from ``torch.distributions`` objects: the researcher writes the prior, the likelihood and
the proposal as functions that return distributions, and gets a model that meets the contract
(:mod:`wakesleep.models.contract`) for every estimator, the trainer, evaluation and the command line.

>>> import torch, wakesleep as ws
>>> from torch.distributions import Categorical, Normal
>>> logits = torch.nn.Parameter(torch.zeros(3))
>>> model = ws.models.from_distributions(
...     prior=lambda: Categorical(logits=logits),
...     likelihood=lambda c: Normal(10.0 * c.unsqueeze(-1), 5.0),
...     proposal=lambda x: Categorical(logits=torch.zeros(x.shape[0], 3)),
...     generative=[logits])
>>> z, x = model.sample(4); tuple(z.shape), tuple(x.shape)
((4,), (4, 1))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    Normal,
    OneHotCategorical,
    Poisson,
)

from wakesleep.models import user_functions as user
from wakesleep.models.contract import device_dtype
from wakesleep.models.helmholtz import binary_states
from wakesleep.models.probes import ModelCheckError

#: Largest number of latent states :meth:`DistributionsModel.enumerate_latents` lists.
MAX_ENUMERATED_STATES = 2**24


def _params_holder(obj) -> nn.Module | None:
    """A module holding ``obj``'s parameters: the module itself, a ``ParameterList`` of an
    iterable of parameters, or None (a plain function holds none we can see)."""
    if obj is None or (callable(obj) and not isinstance(obj, nn.Module)):
        return None
    if isinstance(obj, nn.Module):
        return obj
    return nn.ParameterList(list(obj))


def _validated(method):
    """Run ``method`` with the model's ``validate_args`` setting for the distributions it builds
    (``None``: torch's default).  Validation checks every value against its support on every
    call: about a tenth of a step of a small model."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        on = self.validate_args
        if on is None:
            return method(self, *args, **kwargs)
        old = Distribution._validate_args  # set and restored inline: a context manager costs more than the call
        Distribution._validate_args = on
        try:
            return method(self, *args, **kwargs)
        finally:
            Distribution._validate_args = old

    return wrapper


def _prior_log_prob(prior: Distribution, z: Tensor) -> Tensor:
    """``prior.log_prob(z)``; for an unbatched Categorical, its normalised logits indexed by z (the
    same numbers, without broadcasting the logits to z's shape: 7x faster for a small model)."""
    if type(prior) is Categorical and not prior.batch_shape and not prior._validate_args:
        return prior.logits[z]
    return prior.log_prob(z)


def _base(d: Distribution) -> Distribution:
    while isinstance(d, Independent):
        d = d.base_dist
    return d


class DistributionsModel(nn.Module):
    """p_θ(z) p_θ(x | z) and q_φ(z | x) given as functions that return ``torch.distributions`` objects
    (build it with :func:`from_distributions`, which documents the arguments).

    z is one tensor whose trailing dimensions are the prior's event shape (``prior().event_shape``);
    x is [B, D].  Log-densities are summed over the likelihood's dimensions beyond z's sample and
    batch dimensions (a ``Normal(loc [.., B, D], σ)`` is read as ``Independent(…, 1)``), and data of
    width 1 is handed to a likelihood with scalar events as [B].
    """

    def __init__(self, prior, likelihood, proposal=None, generative=None, recognition=None, validate_args=False):
        # The arguments, their types and their errors are those of from_distributions, written there once.
        super().__init__()
        self.validate_args = validate_args
        for name, fn in (("prior", prior), ("likelihood", likelihood)):
            if not callable(fn):
                raise TypeError(f"{name} must be a function (or module) returning a torch.distributions object, got {type(fn).__name__}")
        if proposal is not None and not callable(proposal):
            raise TypeError(
                f"proposal must be a function (or module) of x returning a torch.distributions object, or None; got {type(proposal).__name__}"
            )
        self.prior_fn, self.likelihood_fn, self.proposal_fn = prior, likelihood, proposal
        # Modules among the functions and the extra parameter holders own θ and φ.
        self.p_modules = nn.ModuleList([m for m in (_params_holder(prior), _params_holder(likelihood), _params_holder(generative)) if m is not None])
        self.q_modules = nn.ModuleList([m for m in (_params_holder(proposal), _params_holder(recognition)) if m is not None])
        self._probe: dict | None = None

    # ------------------------------------------------------------ structure
    def p_parameters(self) -> list[nn.Parameter]:
        """θ: the parameters of the prior, the likelihood and ``generative`` (no repeats)."""
        return list(dict.fromkeys(self.p_modules.parameters()))

    def q_parameters(self) -> list[nn.Parameter]:
        """φ: the parameters of the proposal and ``recognition`` (no repeats, none of θ)."""
        theta = set(self.p_parameters())
        return [p for p in dict.fromkeys(self.q_modules.parameters()) if p not in theta]

    @property
    def has_proposal(self) -> bool:
        return self.proposal_fn is not None

    #: Where :attr:`data_dim` comes from, for the data check's message.
    data_dim_source = "the width of x drawn from your likelihood= function"

    def _info(self) -> dict:
        """What one draw from the model shows (cached): the prior's event rank, the likelihood's
        family and event rank, the data width, whether the proposal can be reparameterised."""
        if self._probe is None:
            self._find_info()
        return self._probe

    @_validated
    def _find_info(self) -> None:
        """Fill :meth:`_info`'s cache from one draw (with the model's ``validate_args``); nothing is
        cached when the user's functions fail."""
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                prior = user.call("prior", self.prior_fn)
                user.check_prior(prior)
                self._probe = {"prior_event": len(prior.event_shape)}  # what _likelihood needs, while the rest is found
                z = prior.sample((1,))
                lik = self._likelihood(z, 1)
                x = self._as_data(lik.sample(), 1)
                user.check_dtypes(z, x, device_dtype(self)[1])
                base = _base(lik)
                with torch.enable_grad():  # does the scale depend on parameters?
                    scale = getattr(_base(self._likelihood(z, 1)), "scale", None)
                info = {
                    "prior_event": len(prior.event_shape),
                    "event_shape": prior.event_shape,
                    "family": type(base).__name__,
                    "data_dim": x.shape[-1],
                    "categories": base.logits.shape[-1] if isinstance(base, (Categorical, OneHotCategorical)) else None,
                    "fixed_scale": isinstance(base, Normal) and not scale.requires_grad,
                    "reparameterizable": False,
                }
                if self.proposal_fn is not None:
                    try:  # x is the model's own draw: a proposal that cannot take it is named when it meets the data
                        info["reparameterizable"] = bool(user.call("proposal", self.proposal_fn, x=x).has_rsample)
                    except ModelCheckError as e:
                        info["reparameterizable"] = e
        except BaseException:
            self._probe = None
            raise
        self._probe = info

    @property
    def data_dim(self) -> int:
        """D, the width of x (from one draw of the model)."""
        return self._info()["data_dim"]

    @property
    def binary_data(self) -> bool:
        """True when the likelihood is Bernoulli (data must be in {0, 1})."""
        return self._info()["family"] == "Bernoulli"

    @property
    def reparameterizable(self) -> bool:
        """True when the proposal draws by ``rsample`` (VAE and IWAE apply).

        Raises:
            ModelCheckError: the proposal could not take a draw of the model's x."""
        found = self._info()["reparameterizable"]
        if isinstance(found, Exception):
            raise found
        return found

    @property
    def likelihood_name(self) -> str:
        return f"the likelihood ({self._info()['family']})"

    # ------------------------------------------------------------ helpers
    def _sample_ndim(self, z: Tensor) -> int:
        return z.ndim - self._info()["prior_event"]

    def _likelihood(self, z: Tensor, sample_ndim: int) -> Distribution:
        d = user.call("likelihood", self.likelihood_fn, z=z)
        user.check_likelihood(d, z, sample_ndim)
        extra = len(d.batch_shape) - sample_ndim
        return Independent(d, extra) if extra > 0 else d

    @staticmethod
    def _as_data(x: Tensor, sample_ndim: int) -> Tensor:
        return x.unsqueeze(-1) if x.ndim == sample_ndim else x.reshape(*x.shape[:sample_ndim], -1)

    def _data_for(self, lik: Distribution, x: Tensor) -> Tensor:
        if len(lik.event_shape) == 0 and x.shape[-1] == 1:
            return x[..., 0]  # data of width 1 for a likelihood over scalars
        if len(lik.event_shape) > 1:
            return x.reshape(*x.shape[:-1], *lik.event_shape)
        return x

    # ------------------------------------------------------------ the contract
    @_validated
    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """n draws (z, x) ~ p_θ without gradient: z [n, *event], x [n, D]."""
        with torch.no_grad():
            z = user.call("prior", self.prior_fn).sample((n,))
            return z, self._as_data(self._likelihood(z, 1).sample(), 1)

    @_validated
    def log_prior(self, z: Tensor) -> Tensor:
        """log p_θ(z), [*S, B] for z [*S, B, *event] ([n] for n sleep samples), nats."""
        return self._log_prior(z)

    def _log_prior(self, z: Tensor) -> Tensor:
        return _prior_log_prob(user.call("prior", self.prior_fn), z)

    def _log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        s = self._sample_ndim(z)
        lik = self._likelihood(z, s)
        user.check_data(lik, s, x)
        return user.log_prob("likelihood", lik, self._data_for(lik, x), "x")

    @_validated
    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x, z) = log p_θ(z) + log p_θ(x | z), [*S, B] for z [*S, B, *event] and x [B, D], nats."""
        return self._log_prior(z) + self._log_likelihood(x, z)

    @_validated
    def log_density_parts(self, member: str, x: Tensor, z: Tensor) -> dict[str, Tensor]:
        """The terms of ``member`` by the user's function that computes each, for the checks'
        messages (:mod:`wakesleep.models.probes`): ``log_joint`` → ``{"prior=": log p(z),
        "likelihood=": log p(x | z)}``, ``log_proposal`` → ``{"proposal=": log q(z | x)}``;
        each [*S, B], nats."""
        if member == "log_joint":
            return {"prior=": self._log_prior(z), "likelihood=": self._log_likelihood(x, z)}
        if member == "log_proposal":
            return {"proposal=": self.log_proposal(x, z)}
        return {}

    def _proposal(self, x: Tensor) -> Distribution:
        if self.proposal_fn is None:
            raise ValueError("this model was built without a proposal: pass proposal= to from_distributions, or train it with ALWS")
        q = user.call("proposal", self.proposal_fn, x=x)
        user.check_proposal(q, x, self._info()["event_shape"])
        extra = len(q.batch_shape) - 1
        return Independent(q, extra) if extra > 0 else q

    @_validated
    def propose(self, x: Tensor, k: int, reparameterize: bool = False) -> tuple[Tensor, Tensor]:
        """K particles z ~ q_φ(z | x) [K, B, *event] (detached unless ``reparameterize``) and log q [K, B], nats.

        Raises:
            ValueError: k < 1, or no proposal.
        """
        if k < 1:
            raise ValueError(f"the number of particles k must be >= 1, got {k}")
        q = self._proposal(x)
        z = q.rsample((k,)) if reparameterize else q.sample((k,))
        return z, user.log_prob("proposal", q, z, "z")

    @_validated
    def log_proposal(self, x: Tensor, z: Tensor) -> Tensor:
        """log q_φ(z | x), [*S, B] for z [*S, B, *event], nats."""
        return user.log_prob("proposal", self._proposal(x), z, "z")

    # ------------------------------------------------------------ optional members
    @property
    def has_exponential_family(self) -> bool:
        """True for a Bernoulli, Categorical, OneHotCategorical or Poisson likelihood, or a Normal
        one whose scale carries no gradient."""
        info = self._info()
        return info["family"] in ("Bernoulli", "Categorical", "OneHotCategorical", "Poisson") or info["fixed_scale"]

    @_validated
    def exponential_family(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """η_θ(z) [n, S] and Ψ_θ(z) [n] of the likelihood, for z [n, *event]: log p(x | z) = η·S(x) − Ψ + log h(x).

        Bernoulli: η = logits, Ψ = Σ softplus(logits); Poisson: η = log rate, Ψ = Σ rate;
        Normal with fixed σ: η = μ/σ², Ψ = Σ μ²/(2σ²); (OneHot)Categorical: η = log-probabilities, Ψ = 0.

        Raises:
            ValueError: a likelihood without this view (say ``target="generic"`` to ALWS).
        """
        if not self.has_exponential_family:
            raise ValueError(f"{self.likelihood_name} has no exponential-family view here; use ALWS(target='generic')")
        n = z.shape[0]
        lik = self._likelihood(z, self._sample_ndim(z))
        base = _base(lik)
        if isinstance(base, Bernoulli):
            eta, psi = base.logits, F.softplus(base.logits)
        elif isinstance(base, Poisson):
            eta, psi = base.rate.log(), base.rate
        elif isinstance(base, Normal):
            var = base.scale.square()
            eta, psi = base.loc / var, base.loc.square() / (2 * var)
        else:
            eta = base.logits
            psi = eta.new_zeros(eta.shape[:-1])
        return eta.reshape(n, -1), psi.reshape(n, -1).sum(-1)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        """S(x) [n, S] for x [n, D] (one-hot codes for a Categorical likelihood)."""
        info = self._info()
        if info["family"] == "Categorical":
            return F.one_hot(x.long(), info["categories"]).to(x.dtype).reshape(x.shape[0], -1)
        return x.reshape(x.shape[0], -1)

    @_validated
    def enumerate_latents(self) -> Tensor:
        """Every latent state once, [S, *event]: a (OneHot)Categorical prior's categories, or all
        binary vectors of a factorial Bernoulli prior.

        Raises:
            ValueError: a prior without finite support, or more than 2^24 states.
        """
        prior = self.prior_fn()
        base = _base(prior)
        if isinstance(base, Bernoulli):
            d = base.logits.numel() if prior.event_shape else 1
            if 2**d > MAX_ENUMERATED_STATES:
                raise ValueError(f"{d} binary latents have 2^{d} states; enumeration is limited to {MAX_ENUMERATED_STATES}")
            states = binary_states(d, base.logits.dtype, base.logits.device)
            return states.reshape(-1, *prior.event_shape)
        if prior.has_enumerate_support and not prior.batch_shape:
            return prior.enumerate_support(expand=False).reshape(-1, *prior.event_shape)
        raise ValueError(f"the prior ({type(base).__name__}) has no finite support to enumerate: use importance sampling")


def from_distributions(
    prior: Callable[[], Distribution],
    likelihood: Callable[[Tensor], Distribution],
    proposal: Callable[[Tensor], Distribution] | None = None,
    *,
    generative: nn.Module | Iterable[nn.Parameter] | None = None,
    recognition: nn.Module | Iterable[nn.Parameter] | None = None,
    validate_args: bool | None = False,
) -> DistributionsModel:
    """A model that meets the contract, from functions returning ``torch.distributions`` objects.

    Args:
        prior: ``prior()`` → the distribution of one z (batch shape ``()``; event shape that of z:
            ``()`` for an integer category, ``(d,)`` for a vector through ``Independent``/``to_event``).
        likelihood: ``likelihood(z)`` → the distribution of x given z [*S, B, *event], with batch shape
            [*S, B] (further batch dimensions, e.g. D, are summed as ``Independent``).
        proposal: ``proposal(x)`` → q(z | x) for x [B, D], with batch shape [B] and z's event shape;
            None for a model trained by ALWS only.
        generative: modules (or iterables of parameters) holding θ that the functions use but do
            not own; a function that is itself an ``nn.Module`` contributes its own parameters (to θ
            for prior and likelihood, to φ for the proposal).
        recognition: the same for φ.
        validate_args: whether the distributions the functions build check their arguments and
            values (``torch.distributions``' validation) inside the model's members: off by
            default, as in wakesleep's own layers, because it checks every value on every call
            (about a tenth of a training step of the mixture example); ``True`` to debug a model,
            ``None`` for torch's global default.

    Returns:
        :class:`DistributionsModel`: ``sample``, ``log_joint``, ``log_prior``, ``propose``,
        ``log_proposal``, both parameter groups, the exponential-family view where the likelihood
        is Bernoulli, (OneHot)Categorical, Poisson or Normal with a fixed scale, and
        ``enumerate_latents`` for a Categorical or Bernoulli prior.

    Raises:
        TypeError: an argument that is not a function or module.
    """
    return DistributionsModel(prior, likelihood, proposal, generative, recognition, validate_args)


def isotropic_normal_exponential_family(mean: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """The exponential-family view of x ~ N(mean, σ² I) with one σ for every coordinate, for ALWS's
    exponential-family target (Wenliang et al. 2020, Algorithm 1; ALGORITHMS.md §4):
    log p(x | z) = η·S(x) − Ψ with S(x) = (x, ‖x‖²), h(x) = 1,

        η = (μ/σ², −1/(2σ²)),   Ψ = ‖μ‖²/(2σ²) + D log σ + (D/2) log 2π.

    A user's model returns this from ``exponential_family(z)`` with its decoder's mean, and
    :func:`isotropic_normal_statistics` from ``sufficient_statistics(x)``.

    Args:
        mean: μ(z) [*batch, D].
        log_scale: log σ, a scalar tensor (or one broadcastable to [*batch, 1]).

    Returns:
        ``(eta [*batch, D + 1], psi [*batch])``, nats.
    """
    log_scale = torch.as_tensor(log_scale, dtype=mean.dtype, device=mean.device)
    prec = torch.exp(-2.0 * log_scale)
    d = mean.shape[-1]
    eta = torch.cat([mean * prec, (-0.5 * prec).expand(*mean.shape[:-1], 1)], -1)
    psi = 0.5 * mean.square().sum(-1) * prec.squeeze(-1) + d * log_scale.squeeze(-1) + 0.5 * d * math.log(2 * math.pi)
    return eta, psi


def isotropic_normal_statistics(x: Tensor) -> Tensor:
    """S(x) = (x, ‖x‖²) [*batch, D + 1] for x [*batch, D]: the sufficient statistics that go with
    :func:`isotropic_normal_exponential_family`."""
    return torch.cat([x, x.square().sum(-1, keepdim=True)], -1)
