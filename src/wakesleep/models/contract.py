"""The model contract: what a model offers so that every estimator, the trainer, evaluation and the
command line can use it.

A model is a ``torch.nn.Module`` (for its parameters, devices and checkpoints) with these members.
Conventions (``../shared/reference/ALGORITHMS.md`` §0): particles first; log-densities in nats;
x is a data batch [B, D]; z is *any pytree* (a tensor, or a tuple, list or dict of tensors) of any
dtype — integer categories, binary vectors, reals, angles, whole sequences.  The library never looks
inside z beyond the leading (sample and batch) dimensions of its leaves.

**Generative model** (:class:`LatentVariableModel`), every estimator needs it:

- ``sample(n) -> (z, x)``: n ancestral draws (z, x) ~ p_θ, without gradient; the leaves of z are
  [n, …] and x is [n, D].
- ``log_joint(x, z) -> [*S, B]``: log p_θ(x, z), differentiable in θ, where S are the sample
  dimensions that z carries in front of the batch (z leaves [*S, B, …], x [B, D]); e.g. [K, B] for
  K particles per datapoint, [n] for n sleep samples with x [n, D].
- ``p_parameters()``: θ, the generative parameters.

**Proposal** (:class:`ProposalModel`, adds to the above), for RWS, WS, VAE/IWAE and for
importance-sampled evaluation:

- ``propose(x, k) -> (z, log_q)``: K particles z ~ q_φ(z | x) for each of the B datapoints, z
  detached (leaves [K, B, …]), ``log_q`` [K, B] differentiable in φ.  VAE and IWAE also call
  ``propose(x, k, reparameterize=True)`` (z then carries the gradient) and need the attribute
  ``reparameterizable = True``.
- ``log_proposal(x, z) -> [*S, B]``: log q_φ(z | x), needed only by sleep-phase updates (WS, RWS
  with ``q_update`` ``"sleep"`` or ``"both"``, ALWS with ``q_update="sleep"``).
- ``q_parameters()``: φ.

**Optional members**, each used only where it is named:

- ``log_prior(z) -> [*S, B]``: log p_θ(z), for z leaves [*S, B, …] (``[n]`` for n sleep samples; ALWS's
  exponential-family target).
- ``exponential_family(z) -> (η [n, S], Ψ [n])`` and ``sufficient_statistics(x) -> [n, S]``: the
  likelihood as an exponential family, log p(x | z) = η(z)·S(x) − Ψ(z) + log h(x) (ALWS's
  exponential-family target, Wenliang et al. 2020, Algorithm 1).
- ``exact_log_marginal(x) -> [B]`` (with gradient in θ), or ``enumerate_latents() -> z`` with
  leaves [S, …] listing every latent state once: exact evaluation
  (:func:`wakesleep.evaluate.exact_log_likelihood`) and exact references (``diagnose``).
- ``sample_uniform(x, k) -> (z, log_u [K, B])``: K draws per datapoint from a broad distribution
  over the latents' support (RWS's defensive importance sampling; derived from
  ``enumerate_latents`` where the states can be listed); uniform (log_u the same for every z),
  unless the model also offers ``log_uniform(x, z) -> [*S, B]``, that distribution's log-density
  at any z (a program's prior, :mod:`wakesleep.pyro.programs`).
- ``log_weights(x, k) -> [K, B]``: a faster log p(x, z) − log q(z | x) for evaluation; derived
  from ``propose`` and ``log_joint`` when absent.
- ``proposal_distribution(x)``, ``prior_distribution()`` and ``log_likelihood(x, z)``: one layer
  of discrete latents offered for continuous relaxation (Concrete and RELAX,
  :mod:`wakesleep.estimators.concrete`).  The two distributions are ``torch.distributions``
  objects of the same kind and event shape, factorial over the latent's elements:
  ``Bernoulli(logits=[B, d])`` (binary units, z in {0, 1}^d) or ``OneHotCategorical(logits=[B, n,
  C])`` (n categorical variables, z one-hot), either wrapped in ``Independent``; the proposal's
  logits are differentiable in φ, the prior's in θ (its batch shape broadcasts against the
  proposal's).  ``log_likelihood(x, z) -> [*S, B]`` is log p_θ(x | z) for z in that one-hot/binary
  form, leaves [*S, B, …], and must accept *relaxed* z (points of [0, 1]^d or of the simplex) and
  be differentiable in z there: the relaxed sample goes into the likelihood as its input
  (Maddison et al. 2017).  Together they must agree with ``log_joint``: log p_θ(x, z) =
  prior.log_prob(z) + log_likelihood(x, z) at the discrete states.  A Helmholtz machine with one
  factorial discrete latent layer has them (``has_relaxation``).
- ``metrics(x) -> dict[str, float]``: the model's own measurements on held-out x [M, D] (e.g. a
  parameter's error against a known truth, a proposal's distance to the exact posterior),
  called without gradient at each validation and recorded as ``valid_NAME`` in ``metrics.jsonl``
  (:func:`wakesleep.training.metrics.validation_metrics`).
- ``data_dim`` (D), ``binary_data`` (the likelihood needs x in {0, 1}): extra data checks.
- ``has_proposal``, ``has_exponential_family``, ``has_exact_log_marginal``, ``has_relaxation``:
  False when a model class that has those members was built without the part (a Helmholtz machine
  without recognition layers, with a likelihood outside the exponential families, with Gaussian
  latents, with more than one latent layer).

**Discrete and continuous latents** (optional, :data:`HYBRID`; hybrid memoised wake-sleep, HMWS,
needs them): a model whose latents split into a discrete part d (categories, structures: what a
memory can hold and tell apart by equality) and a continuous part c says so by taking z as the
pair ``(d, c)`` — two pytrees, d's leaves [*S, B, …] of any dtype, c's [*S, B, …] floating — in
``log_joint(x, (d, c))`` (and, where it has them, in ``propose``, ``log_proposal`` and ``sample``,
so that every other estimator sees the same pair) and by offering the proposal in two factors,
q_φ(d, c | x) = q_φ(d | x) q_φ(c | d, x):

- ``propose_discrete(x, k) -> (d, log_q_d)``: K discrete values d ~ q_φ(d | x) per datapoint, d
  detached (leaves [K, B, …]), ``log_q_d`` [K, B] differentiable in φ.
- ``log_proposal_discrete(x, d) -> [*S, B]``: log q_φ(d | x) for d leaves [*S, B, …], with ∇φ.
- ``propose_continuous(x, d, k) -> (c, log_q_c)``: for d with leaves [*S, B, …], K continuous
  values c ~ q_φ(c | d, x) for each, c detached (leaves [K, *S, B, …]), ``log_q_c`` [K, *S, B]
  differentiable in φ.  HMWS then calls ``log_joint(x, (d', c))`` with d' = d expanded to
  [K, *S, B, …] (a view: the model must not write into it).

:func:`check_shapes` calls the three on a tiny batch and checks their shapes, and ``log_joint``'s
on the pair they make; :func:`hybrid_propose` makes ``propose`` from the two factors;
``examples/regression_mixture.py`` is a worked example.

Everything else — log-weights, effective sample sizes, chunk sizes for bounded-memory evaluation,
the data width — the library derives.  :func:`check_model` lists every missing member at once (a
:class:`ModelContractError`, a ``TypeError``), and :func:`check_shapes` calls each needed member on
a tiny batch and names the one that returns the wrong shape (a :class:`ModelShapeError`, a
``ValueError``); :func:`wakesleep.train` runs both before its first step.  The front ends
:func:`wakesleep.models.from_distributions` and :func:`wakesleep.pyro.from_pyro` build a model
that meets the contract from ``torch.distributions`` objects or a Pyro program;
``docs/your-own-model.md`` has four worked examples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from wakesleep.fused import first_line

#: What each member does, for error messages.
MEMBERS: dict[str, str] = {
    "sample": "sample(n) -> (z, x): n draws (z, x) ~ p_θ without gradient",
    "log_joint": "log_joint(x, z) -> [*S, B]: log p_θ(x, z), nats",
    "p_parameters": "p_parameters(): the generative parameters θ",
    "propose": "propose(x, k) -> (z, log_q [K, B]): K particles z ~ q_φ(z | x), z detached",
    "log_proposal": "log_proposal(x, z) -> [*S, B]: log q_φ(z | x), nats",
    "q_parameters": "q_parameters(): the proposal's parameters φ",
    "log_prior": "log_prior(z) -> [*S, B]: log p_θ(z), nats",
    "exponential_family": "exponential_family(z) -> (η [n, S], Ψ [n]): natural parameters and log-normaliser of p(x | z)",
    "sufficient_statistics": "sufficient_statistics(x) -> [n, S]: S(x) of p(x | z)",
    "exact_log_marginal": "exact_log_marginal(x) -> [B]: exact log p_θ(x)",
    "enumerate_latents": "enumerate_latents() -> z with leaves [S, ...]: every latent state once",
    "reparameterizable": "reparameterizable = True: propose(x, k, reparameterize=True) draws z with gradient",
    "metrics": "metrics(x) -> dict[str, float]: the model's own measurements on held-out x, recorded at each validation",
    "sample_uniform": "sample_uniform(x, k) -> (z, log_u [K, B]): K draws per datapoint, uniform over the latents' finite support",
    "log_uniform": "log_uniform(x, z) -> [*S, B]: log u(z) of sample_uniform's distribution at any z, where that density is not constant",
    "proposal_distribution": "proposal_distribution(x) -> Bernoulli(logits [B, d]) or OneHotCategorical(logits [B, n, C]): "
    "q_φ(z | x) of one factorial discrete latent layer, for its continuous relaxation",
    "prior_distribution": "prior_distribution() -> Bernoulli or OneHotCategorical of the proposal's kind: p_θ(z), factorial",
    "log_likelihood": "log_likelihood(x, z) -> [*S, B]: log p_θ(x | z), nats, also at relaxed z (in [0, 1]^d or the simplex), differentiable in z",
    "propose_discrete": "propose_discrete(x, k) -> (d, log_q_d [K, B]): K discrete values d ~ q_φ(d | x), d detached; z is the pair (d, c)",
    "log_proposal_discrete": "log_proposal_discrete(x, d) -> [*S, B]: log q_φ(d | x) of the discrete part, nats",
    "propose_continuous": "propose_continuous(x, d, k) -> (c, log_q_c [K, *S, B]): K continuous values c ~ q_φ(c | d, x) for each d [*S, B, …], c detached",
}

GENERATIVE = ("sample", "log_joint", "p_parameters")
PROPOSAL = ("propose", "log_joint", "q_parameters")
#: What an estimator that trains θ and φ from proposed particles calls (RWS with wake-φ, IWAE, VIMCO, …).
TRAINING_WITH_PROPOSAL = PROPOSAL + ("p_parameters",)
#: What importance-sampled validation and evaluation need.
EVALUATION = ("propose", "log_joint")
EXPONENTIAL_FAMILY = ("log_prior", "exponential_family", "sufficient_statistics")
#: What the relaxation estimators (Concrete, RELAX) call: one discrete latent layer and its likelihood.
RELAXATION = ("proposal_distribution", "prior_distribution", "log_likelihood", "p_parameters", "q_parameters")
#: What a model with discrete and continuous latents z = (d, c) offers hybrid memoised wake-sleep.
HYBRID = ("propose_discrete", "log_proposal_discrete", "propose_continuous")


class ModelContractError(TypeError):
    """A model lacks members that the requested use needs (the message lists them all)."""


class ModelShapeError(ValueError):
    """A model member returned a value of the wrong type or shape (the message names the member)."""


@runtime_checkable
class LatentVariableModel(Protocol):
    """A generative model p_θ(z, x): see the module docstring for shapes."""

    def sample(self, n: int) -> tuple[Any, Tensor]: ...

    def log_joint(self, x: Tensor, z: Any) -> Tensor: ...

    def p_parameters(self) -> list[nn.Parameter]: ...


@runtime_checkable
class ProposalModel(LatentVariableModel, Protocol):
    """A generative model with a proposal q_φ(z | x): see the module docstring for shapes."""

    def propose(self, x: Tensor, k: int) -> tuple[Any, Tensor]: ...

    def log_proposal(self, x: Tensor, z: Any) -> Tensor: ...

    def q_parameters(self) -> list[nn.Parameter]: ...


@runtime_checkable
class ExponentialFamilyModel(LatentVariableModel, Protocol):
    """A generative model whose likelihood is an exponential family in x,
    p_θ(x | z) = h(x) exp(η_θ(z)·S(x) − Ψ_θ(z)) (ALWS's exponential-family target).

    - ``exponential_family(z) -> (η [n, S], Ψ [n])``: differentiable in θ;
    - ``sufficient_statistics(x) -> [n, S]``: no parameters (log h(x) is not needed);
    - ``log_prior(z) -> [n]``: the prior's parameters learn through it.
    """

    def log_prior(self, z: Any) -> Tensor: ...

    def exponential_family(self, z: Any) -> tuple[Tensor, Tensor]: ...

    def sufficient_statistics(self, x: Tensor) -> Tensor: ...


# ------------------------------------------------------------------ pytrees


def leaves(z: Any) -> list[Tensor]:
    """The tensors of a latent pytree, in a fixed order."""
    return [v for v in pytree.tree_leaves(z) if isinstance(v, Tensor)]


def tree_map(fn: Callable[..., Tensor], z: Any, *rest: Any) -> Any:
    """``fn`` applied to every tensor leaf of z (and the matching leaves of ``rest``, pytrees of the
    same structure), the structure kept."""
    return pytree.tree_map(lambda v, *r: fn(v, *r) if isinstance(v, Tensor) else v, z, *rest)


# ------------------------------------------------------------------ queries


def has_member(model, name: str) -> bool:
    """Whether ``model`` offers member ``name``: ``reparameterizable`` must be true; the proposal's
    members count as absent where ``has_proposal`` is False, the exponential-family ones where
    ``has_exponential_family`` is False, the exact ones where ``has_exact_log_marginal`` is False,
    the relaxation's where ``has_relaxation`` is False (a class that has the methods, built without
    the part)."""
    if name == "reparameterizable":
        return bool(getattr(model, "reparameterizable", False))
    if name in ("propose", "log_proposal") and getattr(model, "has_proposal", True) is False:
        return False
    if name in ("exponential_family", "sufficient_statistics") and getattr(model, "has_exponential_family", True) is False:
        return False
    if name in ("exact_log_marginal", "enumerate_latents") and getattr(model, "has_exact_log_marginal", True) is False:
        return False
    if name in RELAXATION[:3] and getattr(model, "has_relaxation", True) is False:
        return False
    return callable(getattr(model, name, None))


def has_proposal(model) -> bool:
    """Whether ``model`` can propose particles: it has ``propose`` and does not say
    ``has_proposal = False`` (a Helmholtz machine built with ``recognition=None``)."""
    return has_member(model, "propose")


def has_hybrid_proposal(model) -> bool:
    """Whether ``model`` declares discrete and continuous latents z = (d, c) with a factored
    proposal q(d | x) q(c | d, x): every member of :data:`HYBRID`."""
    return all(has_member(model, m) for m in HYBRID)


def hybrid_propose(model, x: Tensor, k: int) -> tuple[Any, Tensor]:
    """The joint proposal of a model with discrete and continuous latents (:data:`HYBRID`), for its
    ``propose``: K draws d ~ q_φ(d | x), one c ~ q_φ(c | d, x) for each.

    Args:
        model: a model with ``propose_discrete`` and ``propose_continuous`` (shapes in the module's
            docstring).
        x: data [B, D].
        k: particles per datapoint.

    Returns:
        ``((d, c), log_q)``: d's leaves [K, B, …], c's [K, B, …], both detached; log_q [K, B] =
        log q_φ(d | x) + log q_φ(c | d, x), nats, differentiable in φ.

    Raises nothing of its own: a model's misshapen member is named by :func:`check_shapes`, which
    :func:`wakesleep.train` runs before the first step.
    """
    d, log_q_d = model.propose_discrete(x, k)
    c, log_q_c = model.propose_continuous(x, d, 1)
    return (d, tree_map(lambda t: t[0], c)), log_q_d + log_q_c[0]


def has_exact_form(model) -> bool:
    """Whether ``model`` has an exact log p(x): ``exact_log_marginal`` or ``enumerate_latents``."""
    return has_member(model, "exact_log_marginal") or has_member(model, "enumerate_latents")


def supports_exponential_family(model) -> bool:
    """Whether ``model`` offers the exponential-family view (its members, and ``has_exponential_family``
    where the model defines it)."""
    return all(has_member(model, m) for m in EXPONENTIAL_FAMILY)


def missing_members(model, members: Iterable[str]) -> list[str]:
    """The members of ``members`` that ``model`` lacks, in order, without repeats (and
    ``"torch.nn.Module"`` first if it is not a module)."""
    out = [] if isinstance(model, nn.Module) else ["torch.nn.Module"]
    for m in dict.fromkeys(members):
        if not has_member(model, m):
            out.append(m)
    return out


def check_model(model, members: Iterable[str], purpose: str, hints: dict[str, str] | None = None) -> None:
    """Raise :class:`ModelContractError` listing every member of ``members`` that ``model`` lacks.

    Args:
        members: names from :data:`MEMBERS`.
        purpose: what needs them, for the message (e.g. ``"RWS(k=5, q_update='both') and validation"``).
        hints: member -> a way to do without it (an estimator's
            :meth:`~wakesleep.estimators.Estimator.member_hints`), added for each missing one.

    Raises:
        ModelContractError: one message with every missing member and what it must do.
    """
    missing = missing_members(model, members)
    if missing:
        what = "; ".join(MEMBERS.get(m, "be a torch.nn.Module (parameters, devices, checkpoints)") for m in missing)
        instead = "".join(f" {hints[m]}." for m in missing if hints and m in hints)
        raise ModelContractError(
            f"{type(model).__name__} cannot be used for {purpose}: it lacks {', '.join(missing)} ({what}).{instead} "
            "The model contract is in wakesleep.models (docs/your-own-model.md)"
        )


def device_dtype(model) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of the model's first floating parameter or buffer
    (CPU and the default dtype for a model without any)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def log_weights(model, x: Tensor, k: int) -> Tensor:
    """Importance log-weights log w_k = log p_θ(x, z_k) − log q_φ(z_k | x), z_k ~ q_φ(z | x),
    [K, B] in nats for x [B, D], without gradient (the model's own ``log_weights`` where it has one)."""
    with torch.no_grad():
        own = getattr(model, "log_weights", None)
        if callable(own):
            return own(x, k)
        z, log_q = model.propose(x, k)
        return model.log_joint(x, z) - log_q


def particle_width(model, x: Tensor) -> int:
    """Elements per particle and datapoint that evaluation holds at once: the widest of the data
    width and the model's latent layers (``latent_sizes``), or, for a model without that
    attribute, the data width plus the elements of one proposed particle (one probe draw)."""
    sizes = getattr(model, "latent_sizes", None)
    if sizes:
        return max(x.shape[-1], *sizes)
    with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        z, _ = model.propose(x[:1], 1)  # the probe must not move the caller's (seeded) random stream
    return x.shape[-1] + sum(v.numel() for v in leaves(z))


# ------------------------------------------------------------------ shape check


def _describe(v) -> str:
    if isinstance(v, Tensor):
        return f"a tensor of shape {list(v.shape)}"
    return f"a {type(v).__name__}"


def _call(model, member: str, *args, **kwargs):
    try:
        return getattr(model, member)(*args, **kwargs)
    except (ModelContractError, ModelShapeError):
        raise
    except Exception as e:
        args_text = ", ".join(a if isinstance(a, str) else _describe(a) for a in args)
        raise ModelShapeError(
            f"{type(model).__name__}.{member}({args_text}) raised {first_line(e)} (the contract: {MEMBERS.get(member, member)})"
        ) from e


def _expect(model, member: str, value, shape: Sequence[int], context: str) -> None:
    if not isinstance(value, Tensor) or tuple(value.shape) != tuple(shape):
        raise ModelShapeError(
            f"{type(model).__name__}.{member} returned {_describe(value)} {context}; it must return a tensor of shape "
            f"{list(shape)} (one log-density per sample and datapoint, summed over everything else, in nats)"
        )


def _expect_leading(model, member: str, z, shape: Sequence[int], context: str) -> None:
    ls = leaves(z)
    if not ls:
        raise ModelShapeError(f"{type(model).__name__}.{member} returned z with no tensors {context}")
    for v in ls:
        if tuple(v.shape[: len(shape)]) != tuple(shape):
            raise ModelShapeError(
                f"{type(model).__name__}.{member} returned a latent of shape {list(v.shape)} {context}; every tensor in z "
                f"must lead with {list(shape)} (sample dimensions, then the batch)"
            )


def check_shapes(model, x: Tensor, members: Iterable[str], k: int = 3) -> None:
    """Call each member of ``members`` once on a tiny batch and check the shapes it returns.

    Uses the first two rows of ``x`` [N, D] and k particles; draws its random numbers from a forked
    generator, so the caller's random stream does not move.  Cheap: a handful of calls on 2 datapoints.

    Raises:
        ModelShapeError: naming the member whose value has the wrong type or shape (or that raised).
    """
    members = set(members)
    xb = x[:2]
    b = xb.shape[0]
    name = type(model).__name__
    # The probe must not move the caller's random stream (a seeded run stays the same run).
    with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        if "propose" in members:
            z = _proposal(
                model, "propose(x, k)", ("z", "log_q"), _call(model, "propose", xb, k), (k, b), f"for x of shape {list(xb.shape)} and k={k}"
            )
            if "log_joint" in members:
                _expect(model, "log_joint", _call(model, "log_joint", xb, z), (k, b), f"for x [{b}, D] and z from propose(x, k={k})")
            if "log_proposal" in members:
                _expect(model, "log_proposal", _call(model, "log_proposal", xb, z), (k, b), f"for x [{b}, D] and z from propose(x, k={k})")
        if "propose_discrete" in members:
            _check_hybrid_shapes(model, xb, members, k)
        if "sample" in members:
            out = _call(model, "sample", b)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ModelShapeError(f"{name}.sample(n) returned {_describe(out)}; it must return a pair (z, x)")
            zs, xs = out
            if not isinstance(xs, Tensor) or tuple(xs.shape) != (b, *xb.shape[1:]):
                raise ModelShapeError(f"{name}.sample({b}) returned x as {_describe(xs)}; it must be [n, D] = {[b, *xb.shape[1:]]}, like the data")
            _expect_leading(model, "sample", zs, (b,), f"for n={b}")
            ctx = f"for the pair (z, x) of sample({b})"
            if "log_joint" in members:
                _expect(model, "log_joint", _call(model, "log_joint", xs, zs), (b,), ctx)
            if "log_proposal" in members:
                _expect(model, "log_proposal", _call(model, "log_proposal", xs, zs), (b,), ctx)
            if "log_prior" in members:
                _expect(model, "log_prior", _call(model, "log_prior", zs), (b,), f"for z of sample({b})")
            if "exponential_family" in members:
                ef = _call(model, "exponential_family", zs)
                if not (isinstance(ef, tuple) and len(ef) == 2 and all(isinstance(t, Tensor) for t in ef)):
                    raise ModelShapeError(f"{name}.exponential_family(z) returned {_describe(ef)}; it must return a pair (η [n, S], Ψ [n])")
                eta, psi = ef
                if eta.ndim != 2 or eta.shape[0] != b:
                    raise ModelShapeError(f"{name}.exponential_family(z) returned η of shape {list(eta.shape)} for n={b}; it must be [n, S]")
                _expect(model, "exponential_family (its Ψ)", psi, (b,), f"for z of sample({b})")
                if "sufficient_statistics" in members:
                    _expect(
                        model,
                        "sufficient_statistics",
                        _call(model, "sufficient_statistics", xs),
                        tuple(eta.shape),
                        f"for x of sample({b}) (η has shape {list(eta.shape)})",
                    )
        if "proposal_distribution" in members:
            _check_relaxation(model, xb, k)
    for member in ("p_parameters", "q_parameters"):
        if member in members:
            params = _call(model, member)
            try:
                params = list(params)
            except TypeError:
                raise ModelShapeError(f"{name}.{member}() returned {_describe(params)}; it must return an iterable of parameters") from None
            if not all(isinstance(p, Tensor) for p in params):
                raise ModelShapeError(f"{name}.{member}() returned something that is not a tensor; it must return parameters")


def _check_relaxation(model, xb: Tensor, k: int) -> None:
    """The relaxation's members on a tiny batch xb [b, D]: a proposal distribution with batch [b, …]
    and a log-likelihood [k, b] at k of its draws (``check_shapes``'s part for Concrete and RELAX)."""
    name, b = type(model).__name__, xb.shape[0]
    q = _call(model, "proposal_distribution", xb)
    if not isinstance(q, torch.distributions.Distribution) or tuple(q.batch_shape[:1]) != (b,):
        raise ModelShapeError(
            f"{name}.proposal_distribution(x) returned {_describe(q)} for x of shape {list(xb.shape)}; it must return a "
            f"torch.distributions Bernoulli or OneHotCategorical whose batch shape leads with {b} (the contract: {MEMBERS['proposal_distribution']})"
        )
    _call(model, "prior_distribution")
    z = q.sample((k,))
    _expect(model, "log_likelihood", _call(model, "log_likelihood", xb, z), (k, b), f"for x [{b}, D] and z of {k} draws of proposal_distribution(x)")


def _proposal(model, call: str, names: tuple[str, str], out, shape: Sequence[int], context: str):
    """Check that a proposing member's value ``out`` is a pair (latent, log-density) whose latent's
    leaves lead with ``shape`` and whose log-density is ``shape``; return the latent."""
    member = call.split("(")[0]
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ModelShapeError(f"{type(model).__name__}.{call} returned {_describe(out)}; it must return a pair ({', '.join(names)})")
    _expect_leading(model, member, out[0], shape, context)
    _expect(model, f"{member} (its {names[1]})", out[1], shape, context)
    return out[0]


def _check_hybrid_shapes(model, xb: Tensor, members: set, k: int) -> None:
    """The shapes of the hybrid members (:data:`HYBRID`) on the batch xb [B, D]: K discrete values,
    two continuous ones for each, and ``log_joint`` on the pair (d, c) they make."""
    b, kc = xb.shape[0], 2
    out = _call(model, "propose_discrete", xb, k)
    d = _proposal(model, "propose_discrete(x, k)", ("d", "log_q_d"), out, (k, b), f"for x of shape {list(xb.shape)} and k={k}")
    if "log_proposal_discrete" in members:
        ctx = f"for x [{b}, D] and d from propose_discrete(x, k={k})"
        _expect(model, "log_proposal_discrete", _call(model, "log_proposal_discrete", xb, d), (k, b), ctx)
    if "propose_continuous" in members:
        out = _call(model, "propose_continuous", xb, d, kc)
        c = _proposal(model, "propose_continuous(x, d, k)", ("c", "log_q_c"), out, (kc, k, b), f"for d of shape [{k}, {b}, …] (S = [{k}]) and k={kc}")
        if "log_joint" in members:
            dk = tree_map(lambda v: v.expand(kc, *v.shape), d)
            lp = _call(model, "log_joint", xb, (dk, c))
            _expect(model, "log_joint", lp, (kc, k, b), f"for z = (d, c), d and c with leaves [{kc}, {k}, {b}, …] (propose_continuous's)")


def exact_log_marginal(model, x: Tensor) -> Tensor:
    """Exact log p_θ(x) per datapoint, [B], nats, with gradient with respect to θ: the model's own
    ``exact_log_marginal(x)`` where it has one (a Helmholtz machine's closed form for factor
    analysis, or its sum over binary and categorical latent states), else log Σ_s p_θ(x, z_s) over
    the states of ``enumerate_latents()`` (each leaf [S, …] expanded against the batch, so the
    model sees z [S, B, …] as it sees S particles).  Also :func:`wakesleep.evaluate.exact_log_marginal`.

    Raises:
        ModelContractError: (a ``TypeError``) a model with neither member.
        ValueError: its latents cannot be enumerated (no finite support, too many states).
    """
    own = getattr(model, "exact_log_marginal", None)
    if callable(own):
        return own(x)
    check_model(model, ["enumerate_latents"], "exact evaluation (it needs exact_log_marginal(x) or enumerate_latents())")
    return enumerated_log_marginal(model, x)


def states_against_batch(z: Any, b: int) -> Any:
    """The states of ``enumerate_latents()`` (leaves [S, …]) expanded against a batch of b
    datapoints, leaves [S, B, …] (views, no copy): the model sees the S states as S particles."""
    return tree_map(lambda v: v.unsqueeze(1).expand(v.shape[0], b, *v.shape[1:]), z)


def enumerated_log_marginal(model, x: Tensor) -> Tensor:
    """log Σ_s p_θ(x, z_s) [B], nats, with gradient in θ, over the states of ``enumerate_latents()``
    (:func:`states_against_batch`) for x [B, D].

    Raises:
        ValueError: whatever ``enumerate_latents`` raises for latents it cannot list.
    """
    return torch.logsumexp(model.log_joint(x, states_against_batch(model.enumerate_latents(), x.shape[0])), 0)
