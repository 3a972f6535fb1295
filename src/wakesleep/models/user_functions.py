"""What a :func:`~wakesleep.models.from_distributions` model says when the user's own ``prior=``,
``likelihood=`` or ``proposal=`` function returns something that does not fit: the function is
named (not the generated member ``log_joint`` or ``propose``), with the batch and event shapes it
returned against the expected ones, the dtypes it met, and the fix.

Every check here is a comparison of shapes or a ``try`` around the user's call: nothing is
computed twice, and a model that fits pays a few microseconds a call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Size, Tensor
from torch.distributions import Distribution

from wakesleep.fused import first_line
from wakesleep.models.probes import ModelCheckError

_DTYPE_WORDS = ("dtype", "scalar type", "Double", "Float", "Long", "Half", "expected both")


def _arg(name: str, v) -> str:
    if isinstance(v, Tensor):
        return f"{name} of shape {list(v.shape)} and dtype {v.dtype}"
    return name


def _shapes(d: Distribution) -> str:
    return f"{type(d).__name__} with batch_shape {list(d.batch_shape)} and event_shape {list(d.event_shape)}"


def _hint(err: Exception, args: dict) -> str:
    text = str(err)
    if not any(w in text for w in _DTYPE_WORDS):
        return ""
    ints = [n for n, v in args.items() if isinstance(v, Tensor) and not v.is_floating_point()]
    if ints:
        return (
            f". {ints[0]} holds integers (a Categorical or Bernoulli draw is an integer or 0/1 tensor): convert it before a "
            f"network or arithmetic uses it ({ints[0]}.float(), or F.one_hot({ints[0]}, n).float()), and build every tensor "
            "the function makes with the data's dtype"
        )
    return (
        ". The tensors it combines have different dtypes: build its parameters and constants with the data's dtype "
        "(torch.as_tensor(value, dtype=x.dtype)), or train in float64 throughout (model.double() and float64 data)"
    )


def call(label: str, fn: Callable, **args) -> Distribution:
    """``fn(*args.values())``, the user's ``label=`` function; it must return a distribution.

    Raises:
        ModelCheckError: the function raised (its error, its arguments' shapes and dtypes, a hint
            for mixed dtypes) or returned something else than a ``torch.distributions`` object.
    """
    try:
        d = fn(*args.values())
    except ModelCheckError:
        raise
    except Exception as e:
        given = ", ".join(_arg(n, v) for n, v in args.items()) or "no arguments"
        raise ModelCheckError(f"your {label}= function raised {first_line(e)} when called with {given}{_hint(e, args)}") from e
    if not isinstance(d, Distribution):
        raise ModelCheckError(f"your {label}= function returned a {type(d).__name__}; it must return a torch.distributions object")
    return d


def log_prob(label: str, d: Distribution, value: Tensor, what: str) -> Tensor:
    """``d.log_prob(value)`` for the distribution of the user's ``label=`` function; an error names
    the function, its shapes and ``value``'s (``what``: "z", "x")."""
    try:
        return d.log_prob(value)
    except Exception as e:
        raise ModelCheckError(
            f"the {_shapes(d)} that your {label}= function returned cannot score {_arg(what, value)} ({first_line(e)}){_hint(e, {what: value})}"
        ) from e


def check_prior(prior: Distribution) -> None:
    """The prior is the distribution of one z: batch shape ``()``.

    Raises:
        ModelCheckError: naming ``prior=`` and the fix ``Independent(d, 1)``.
    """
    if prior.batch_shape:
        n = len(prior.batch_shape)
        raise ModelCheckError(
            f"your prior= function returned {_shapes(prior)}; the prior is the distribution of one z, so its batch_shape must be [] "
            f"and its event_shape z's shape ({list(prior.batch_shape) + list(prior.event_shape)}). Declare the independent "
            f"dimensions as events: Independent({type(prior).__name__}(...), {n}) (or .to_event({n}))"
        )


def check_likelihood(lik: Distribution, z: Tensor, sample_ndim: int) -> None:
    """The likelihood for z [*S, B, *event] has batch shape beginning with [*S, B].

    Raises:
        ModelCheckError: naming ``likelihood=``, the shapes, and the fix.
    """
    want = z.shape[:sample_ndim]
    if lik.batch_shape[:sample_ndim] != want:
        raise ModelCheckError(
            f"your likelihood= function returned {_shapes(lik)} for z of shape {list(z.shape)}; its batch_shape must begin with "
            f"z's sample and batch dimensions {list(want)} (then x's dimensions, summed as Independent): compute its parameters "
            "from z elementwise over those leading dimensions (z[..., i], not z[i]; sum or matmul over z's last dimension)"
        )


def check_data(lik: Distribution, sample_ndim: int, x: Tensor) -> None:
    """The likelihood's dimensions beyond [*S, B] hold one datapoint of width D = x's last dimension.

    Raises:
        ModelCheckError: naming ``likelihood=``, its shapes against x's, and the fix.
    """
    per_datapoint = Size(lik.batch_shape[sample_ndim:] + lik.event_shape).numel()
    if per_datapoint != x.shape[-1]:
        raise ModelCheckError(
            f"your likelihood= function returned {_shapes(lik)}: {per_datapoint} values per datapoint, but x has {x.shape[-1]} "
            f"(x of shape {list(x.shape)}): make its parameters [*S, B, {x.shape[-1]}] (one per coordinate of x)"
        )


def check_proposal(q: Distribution, x: Tensor, event: Size) -> None:
    """The proposal for x [B, D] has batch shape [B] and the prior's event shape (further batch
    dimensions are read as events).

    Raises:
        ModelCheckError: naming ``proposal=``, the shapes, and the fix.
    """
    if q.batch_shape[:1] != x.shape[:1] or q.batch_shape[1:] + q.event_shape != event:
        raise ModelCheckError(
            f"your proposal= function returned {_shapes(q)} for x of shape {list(x.shape)}; q(z | x) must have batch_shape "
            f"[{x.shape[0]}] (one distribution per datapoint) and the prior's event_shape {list(event)} (one z each): "
            f"compute its parameters as {[x.shape[0], *event]}" + (f" and wrap it as Independent(d, {len(event)})" if event else "")
        )


def check_dtypes(z: Tensor, x: Tensor, dtype: torch.dtype) -> None:
    """A draw z from the prior and x from the likelihood, where floating, have the model's
    ``dtype`` (its parameters').

    Raises:
        ModelCheckError: naming ``prior=`` or ``likelihood=``, the dtypes, and the fix.
    """
    for label, v in (("prior", z), ("likelihood", x)):
        if v.is_floating_point() and v.dtype != dtype:
            raise ModelCheckError(
                f"your {label}= function returned a distribution whose draws are {v.dtype}, but the model's parameters are "
                f"{dtype}: build its parameters and constants in {dtype} (torch.zeros(d, dtype={dtype}), or from the "
                f"parameters themselves), or make the whole model {v.dtype} (model.to({v.dtype}) and {v.dtype} data)"
            )
