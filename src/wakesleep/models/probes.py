"""Checks that a model can learn, before the first step: the mistakes that pass the contract's
name and shape checks (:func:`wakesleep.models.contract.check_shapes`) and then train without
learning.

:func:`check_learning` calls each member the estimator needs on three datapoints and refuses
(:class:`ModelCheckError`, naming the member, and for a :func:`~wakesleep.models.from_distributions`
model the user's own ``prior=``, ``likelihood=`` or ``proposal=`` function):

- **gradient flow**: ``log_joint`` must depend on θ (``p_parameters()``), ``propose``'s log_q and
  ``log_proposal`` on φ (``q_parameters()``), ``exact_log_marginal`` on θ; a member that is
  detached or computed under ``torch.no_grad`` is named;
- **batch order**: reordering the batch (x and z together) must reorder ``log_joint``'s and
  ``log_proposal``'s values alike, and ``propose``'s log_q must be ``log_proposal`` at its own
  particles: a member that reads datapoint j for datapoint i is named, with both datapoints;
- **finite values**: NaN (or +inf in a log-density) from any member; ``log_joint`` may be −inf
  (impossible configurations), but when most datapoints have every proposed particle at −inf this
  warns what that means and what to do;
- **dtype and device** of every member's floating output against the data's.

:func:`first_nonfinite` re-runs one batch member by member to name the first that produced a
non-finite value or gradient (the trainer's message for a non-finite step).  Every probe draws
from forked random generators (torch's, NumPy's and Python's) and restores the model's buffers, so
a seeded run is the same run with or without the checks.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from wakesleep.fused import first_line
from wakesleep.models.contract import ModelShapeError, has_member, leaves, tree_map

#: Datapoints the probes use (three: a cyclic reordering of three is not its own reversal).
PROBE_BATCH = 3
#: Particles per datapoint the probes propose.
PROBE_K = 3


class ModelCheckError(ModelShapeError):
    """A model member that would let training run without learning: no gradient reaches a
    parameter group, datapoints mixed up, NaN, a wrong dtype or device (the message names the
    member, or the user's own function, and the fix).  A :class:`ModelShapeError` (a
    ``ValueError``), so that the shape check passes it on as it is."""


@contextlib.contextmanager
def quiet_probe(model, device: torch.device) -> Iterator[None]:
    """Forked torch, NumPy and Python random states and the model's buffers restored on exit:
    whatever runs inside leaves a seeded run's random stream and state as they were."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers and b.shape == buffers[name].shape:
                    b.copy_(buffers[name])


def probe_rows(x: Tensor, n: int = PROBE_BATCH) -> Tensor:
    """Indices of up to ``n`` distinct rows among the first 64 of ``x`` [N, D] (the first rows
    where fewer are distinct), so that a reordering of the batch changes it."""
    head = x[:64]
    picked: list[int] = []
    for i in range(head.shape[0]):
        if all(not torch.equal(head[i], head[j]) for j in picked):
            picked.append(i)
        if len(picked) == n:
            break
    for i in range(min(n, x.shape[0])):  # too few distinct rows: fill with the first ones
        if len(picked) < min(n, x.shape[0]) and i not in picked:
            picked.append(i)
    return torch.tensor(picked, device=x.device)


def _params(model, member: str) -> list[Tensor]:
    if not has_member(model, member):
        return []
    return [p for p in getattr(model, member)() if isinstance(p, Tensor) and p.requires_grad]


def depends_on(value: Tensor, params: list[Tensor]) -> bool:
    """Whether ``value`` carries a gradient to at least one of ``params`` (its graph reaches them)."""
    if not params or not isinstance(value, Tensor) or not value.requires_grad:
        return False
    grads = torch.autograd.grad(value.sum(), params, allow_unused=True, retain_graph=True)
    return any(g is not None for g in grads)


def _batch_of(v: Tensor) -> str:
    return "×".join(str(s) for s in v.shape)


class _Probe:
    """One model, three datapoints: each check raises naming the member (and the user's function)."""

    def __init__(self, model, x: Tensor):
        self.model, self.x, self.name = model, x, type(model).__name__
        self.theta, self.phi = _params(model, "p_parameters"), _params(model, "q_parameters")
        self.param_names = {id(p): n for n, p in model.named_parameters()} if hasattr(model, "named_parameters") else {}

    # ------------------------------------------------------------ naming
    def source(self, member: str, x: Tensor | None, z, test, every: bool = False) -> str:
        """`` (it comes from your likelihood= function)``: the first of the model's own parts of
        ``member`` (``log_density_parts``, e.g. a ``from_distributions`` model's prior and likelihood)
        for which ``test(value)`` is true (``every``: all of them); empty where the model has no
        parts or none fails."""
        parts = getattr(self.model, "log_density_parts", None)
        if not callable(parts) or z is None:
            return ""
        try:
            found = parts("log_proposal" if member == "propose" else member, x, z)
            failing = [label for label, value in found.items() if test(value)]
        except Exception:  # the attribution is a courtesy: the member's own failure is the error
            return ""
        if not failing:
            return ""
        if every and len(failing) > 1:
            return f" (it comes from your {' or '.join(failing)} function: neither's log-density depends on them)"
        return f" (it comes from your {failing[0]} function)"

    def fail(self, text: str) -> ModelCheckError:
        return ModelCheckError(f"{self.name}.{text}")

    # ------------------------------------------------------------ checks
    def device(self, member: str, v: Tensor, what: str, x=None, z=None) -> None:
        x0 = self.x
        if isinstance(v, Tensor) and v.device != x0.device:
            src = self.source(member, x, z, lambda t: t.device != x0.device)
            raise self.fail(
                f"{member} returned {what} on {v.device} but the data are on {x0.device}{src}: create the tensors it makes on "
                "x's device (torch.zeros(..., device=x.device)) and keep every parameter in a registered module (model.to(device) moves them)"
            )

    def dtype_device(self, member: str, v: Tensor, what: str, x=None, z=None) -> None:
        x0 = self.x
        if not isinstance(v, Tensor):
            return
        self.device(member, v, what, x, z)
        if v.is_floating_point() and v.dtype != x0.dtype:
            src = self.source(member, x, z, lambda t: t.is_floating_point() and t.dtype != x0.dtype)
            raise self.fail(
                f"{member} returned {what} as {v.dtype} but the data are {x0.dtype}{src}: create the tensors it makes with x's dtype "
                f"(torch.as_tensor(value, dtype=x.dtype), no float64 literals from NumPy), or train in {v.dtype} throughout "
                f"(model.to({v.dtype}) and {v.dtype} data)"
            )

    def finite(self, member: str, v: Tensor, what: str, x=None, z=None, allow_neg_inf: bool = True) -> None:
        if not isinstance(v, Tensor) or not v.is_floating_point():
            return
        for bad, label in ((torch.isnan(v), "NaN"), (v == float("inf"), "+inf"), (None if allow_neg_inf else v == -float("inf"), "−inf")):
            if bad is None or not bool(bad.any()):
                continue
            where = bad.nonzero()[0].tolist()
            at = f" for datapoint {where[0] if what == 'x' else where[-1]}" if v.ndim >= 1 else ""  # x [n, D]; log-densities [*S, B]
            src = self.source(
                member, x, z, lambda t, label=label: bool({"NaN": torch.isnan, "+inf": torch.isposinf, "−inf": torch.isneginf}[label](t).any())
            )
            raise self.fail(
                f"{member} returned {label} in {what}{at} (shape {_batch_of(v)}) before any training step{src}: training would stop at "
                "step 1. Look for a log of 0 or of a negative number, a scale of 0, 0 · inf, inf − inf or a division by 0 in it"
            )

    def gradient(self, member: str, v: Tensor, params: list[Tensor], group: str, x=None, z=None) -> None:
        """``v`` must carry a gradient to every parameter of ``params`` (one of θ or φ)."""
        if not params:
            return
        missing = params
        if isinstance(v, Tensor) and v.requires_grad:
            live = v.masked_fill(~torch.isfinite(v), 0)  # −inf entries (impossible configurations) count as connected
            grads = torch.autograd.grad(live.sum(), params, allow_unused=True, retain_graph=True)
            missing = [p for p, g in zip(params, grads) if g is None]
        if not missing:
            return
        parts = self.source(member, x, z, lambda t: not depends_on(t, missing), every=True)
        what = "log_q" if member == "propose" else "a tensor"
        if len(missing) == len(params):
            head = f"{member} returned {what} that does not depend on {group}"
        else:
            names = ", ".join(f"{self.param_names.get(id(p), '?')} {list(p.shape)}" for p in missing[:3])
            head = f"{member} returned {what} that depends on some of {group} but not on {names}{'…' if len(missing) > 3 else ''}"
        raise self.fail(
            f"{head}{parts}: is it detached (.detach(), .item(), .data, NumPy) or computed under torch.no_grad? Every estimator "
            "learns these parameters through this member's gradient, so they would never change (or, if the member does not use "
            "them, leave them out of the parameter group)"
        )

    def order(self, member: str, call, x: Tensor, z, dim: int) -> None:
        """``call(x, z)`` [*S, B] must commute with a reordering of the batch (x rows, z's batch dimension ``dim``)."""
        b = x.shape[0]
        if b < 2:
            return
        perm = torch.arange(b, device=x.device).roll(-1)
        with torch.no_grad():
            out = call(x, z)
            moved = call(x[perm], tree_map(lambda v: v.index_select(dim, perm), z))
        want = out.index_select(-1, perm)
        same = torch.isclose(moved, want, rtol=1e-4, atol=1e-4) | (moved == want)
        if bool(same.all()):
            return
        positions = sorted({int(t[-1]) for t in (~same).nonzero()})
        found = [(q, self.reads_from(call, x, z, int(perm[q]))) for q in positions]
        pos, other = next(((q, o) for q, o in found if o is not None), found[0])
        i = int(perm[pos])
        src = self.order_source(member, x, z, dim, perm)
        mixed = (
            f"datapoint {i}'s value is computed from datapoint {other}'s x"
            if other is not None
            else f"datapoint {i}'s value depends on its place in the batch"
        )
        raise self.fail(
            f"{member} mixes datapoints: with the batch reordered, datapoint {i}'s log-density changed from {float(want.flatten(0, -2)[0, pos]):.6g} "
            f"to {float(moved.flatten(0, -2)[0, pos]):.6g} nats; {mixed}{src}. Each datapoint's value must depend on its own x and z alone: "
            "look for x or z flipped, sorted, rolled, transposed or reshaped across the batch"
        )

    def order_source(self, member: str, x: Tensor, z, dim: int, perm: Tensor) -> str:
        """`` (from your proposal= function)``: the first of the model's parts of ``member`` that
        does not commute with the reordering ``perm`` (empty where the model has no parts)."""
        parts = getattr(self.model, "log_density_parts", None)
        if not callable(parts):
            return ""
        try:
            with torch.no_grad():
                before = parts(member, x, z)
                after = parts(member, x[perm], tree_map(lambda v: v.index_select(dim, perm), z))
        except Exception:
            return ""
        for label, v in before.items():
            want, got = v.index_select(-1, perm), after[label]
            if not bool((torch.isclose(got, want, rtol=1e-4, atol=1e-4) | (got == want)).all()):
                return f" (it comes from your {label} function)"
        return ""

    @staticmethod
    def reads_from(call, x: Tensor, z, i: int) -> int | None:
        """Another datapoint whose x the value of datapoint i depends on (by autograd), or None."""
        if not x.is_floating_point():
            return None
        try:
            with torch.enable_grad():
                xg = x.detach().clone().requires_grad_(True)
                out = call(xg, z)
                if not out.requires_grad:
                    return None
                (g,) = torch.autograd.grad(out[..., i].sum(), xg, allow_unused=True)
        except Exception:
            return None
        if g is None:
            return None
        rows = [j for j in range(x.shape[0]) if j != i and bool((g[j] != 0).any())]
        return rows[0] if rows else None


#: The checks compute an exact marginal only over at most this many latent states (a model's
#: ``latent_states``, where it says): 2^20 states of a NADE over three datapoints took minutes
#: and 12 GB, more than the training they guard.
PROBE_STATES = 2**14


def check_learning(model, x: Tensor, members: Iterable[str], k: int = PROBE_K, rows: Tensor | None = None) -> None:
    """Refuse, before the first step, a model that meets the contract's names and shapes but
    would train without learning (the module docstring lists the checks).

    Calls each of ``members`` (names from :data:`wakesleep.models.contract.MEMBERS`) on three rows of
    ``x`` [N, D] (``rows``, or :func:`probe_rows`) with ``k`` particles, with gradient, under
    :func:`quiet_probe`.  Run it after :func:`~wakesleep.models.contract.check_shapes`.

    Raises:
        ModelCheckError: (a ``ValueError``) naming the member, the datapoints or the user's own
            function, and the fix.

    Warns:
        UserWarning: most datapoints have ``log_joint`` = −inf at every proposed particle.
    """
    members = set(members)
    xb = x[probe_rows(x) if rows is None else rows]
    p = _Probe(model, xb)
    with quiet_probe(model, x.device), torch.enable_grad():
        if "propose" in members:
            z, log_q = model.propose(xb, k)
            for leaf in leaves(z):  # z is opaque (any encoding, e.g. a trace's choices as float64): its device alone
                p.device("propose", leaf, "z")
            p.dtype_device("propose", log_q, "log_q", xb, z)
            p.finite("propose", log_q, "log_q", xb, z, allow_neg_inf=False)
            if "q_parameters" in members:
                p.gradient("propose", log_q, p.phi, "the proposal's parameters φ (q_parameters())", xb, z)
            if "log_joint" in members:
                _log_joint(p, xb, z, 1, "p_parameters" in members, proposed=True)
            if has_member(model, "log_proposal"):
                lp = model.log_proposal(xb, z)
                _log_proposal(p, xb, z, lp, 1, "q_parameters" in members)
                _consistent(p, xb, z, log_q, lp)
        if "propose_discrete" in members and "q_parameters" in members:
            _hybrid_gradients(p, xb, k, "propose_continuous" in members)
        if "log_likelihood" in members and has_member(model, "proposal_distribution"):
            _relaxed_gradient(p, xb, k)
        if "sample" in members:
            with torch.no_grad():
                zs, xs = model.sample(xb.shape[0])
            p.dtype_device("sample", xs, "x")
            p.finite("sample", xs, "x")
            for leaf in leaves(zs):
                p.device("sample", leaf, "z")
            if "log_joint" in members:
                _log_joint(p, xs, zs, 0, "p_parameters" in members and "propose" not in members, proposed=False)
            if "log_proposal" in members:
                _log_proposal(p, xs, zs, model.log_proposal(xs, zs), 0, "q_parameters" in members)
            if "log_prior" in members:
                lp = model.log_prior(zs)
                p.dtype_device("log_prior", lp, "log p(z)")
                p.finite("log_prior", lp, "log p(z)")
            if "exponential_family" in members:
                for v, what in zip(model.exponential_family(zs), ("η", "Ψ")):
                    p.dtype_device("exponential_family", v, what)
                    p.finite("exponential_family", v, what, allow_neg_inf=False)
            if "sufficient_statistics" in members:
                s = model.sufficient_statistics(xs)
                p.dtype_device("sufficient_statistics", s, "S(x)")
                p.finite("sufficient_statistics", s, "S(x)", allow_neg_inf=False)
        if has_member(model, "exact_log_marginal") and (getattr(model, "latent_states", None) or 0) <= PROBE_STATES:
            check_exact_log_marginal(model, xb, p)


def _hybrid_gradients(p: _Probe, x: Tensor, k: int, continuous: bool) -> None:
    """Each factor of a hybrid proposal, q(d | x) and q(c | d, x), must carry a gradient to φ: the
    group as a whole may have one from the other factor while this one would never train."""
    d, log_q_d = p.model.propose_discrete(x, k)
    factors = [("propose_discrete", log_q_d, "log q(d | x)")]
    if continuous:
        factors.append(("propose_continuous", p.model.propose_continuous(x, d, 2)[1], "log q(c | d, x)"))
    for member, value, what in factors:
        if not depends_on(value, p.phi):
            raise ModelCheckError(
                f"{p.name}.{member} returned {what} that does not depend on the proposal's parameters φ (q_parameters()): "
                "is it detached or computed under no_grad? That factor of q would never train"
            )


def _relaxed_gradient(p: _Probe, x: Tensor, k: int) -> None:
    """``log_likelihood`` must be differentiable in a relaxed z (a point inside [0, 1]^d or the
    simplex, between the proposal's states): Concrete's and RELAX's pathwise gradients flow
    through it, and one that rounds or detaches z would leave them silently zero."""
    with torch.no_grad():
        q = p.model.proposal_distribution(x)
        hard = q.sample((k,))
    categorical = isinstance(getattr(q, "base_dist", q), torch.distributions.OneHotCategorical)
    z = (0.8 * hard + 0.2 / (hard.shape[-1] if categorical else 2)).to(hard.dtype).requires_grad_(True)  # inside the simplex or the cube
    if not depends_on(p.model.log_likelihood(x, z), [z]):
        raise ModelCheckError(
            f"{p.name}.log_likelihood(x, z) does not depend on z at a relaxed z (between the states): Concrete and RELAX "
            "differentiate through it; compute it from z with gradient (no rounding, .detach() or torch.no_grad)"
        )


def _log_joint(p: _Probe, x: Tensor, z, dim: int, grad: bool, proposed: bool) -> None:
    model = p.model
    v = model.log_joint(x, z)
    p.dtype_device("log_joint", v, "log p(x, z)", x, z)
    p.finite("log_joint", v, "log p(x, z)", x, z)
    if grad:
        p.gradient("log_joint", v, p.theta, "the generative parameters θ (p_parameters())", x, z)
    p.order("log_joint", model.log_joint, x, z, dim)
    if proposed:
        dead = (v == -float("inf")).all(0)
        if dead.sum() * 2 > dead.numel():
            warnings.warn(
                f"{p.name}.log_joint is −inf at every particle the proposal drew for {int(dead.sum())} of {dead.numel()} datapoints: "
                "their importance weights are all zero, so an importance-weighted step learns nothing from them and their "
                "log-likelihood estimate is −inf. The proposal puts its particles where the model says the data are impossible: "
                "train q by sleep-phase updates first (RWS(q_update='sleep' or 'both'), WS, or ALWS(q_update='sleep') learn from "
                "the model's own samples, which are always possible), or give the likelihood a tolerance (an ABC kernel around "
                "the simulator's output) so that nearby particles score finite",
                UserWarning,
                stacklevel=4,
            )


def _consistent(p: _Probe, x: Tensor, z, log_q: Tensor, lp: Tensor) -> None:
    """``propose``'s log_q must be ``log_proposal`` at its own particles; where it is not, find the
    datapoint j whose proposal produced datapoint i's log_q."""
    same = torch.isclose(lp.detach(), log_q.detach(), rtol=1e-3, atol=1e-3) | (lp.detach() == log_q.detach())
    if bool(same.all()):
        return
    r, i = (int(t) for t in (~same).nonzero()[0])
    other = None
    with torch.no_grad():
        for j in range(x.shape[0]):
            at_j = p.model.log_proposal(x[j].expand_as(x), z)[:, i]
            if j != i and bool(torch.isclose(at_j, log_q.detach()[:, i], rtol=1e-3, atol=1e-3).all()):
                other = j
                break
    cond = f"datapoint {other}'s x" if other is not None else "something other than its own x"
    raise p.fail(
        f"propose returned log_q {float(log_q.detach()[r, i]):.6g} for datapoint {i}, but log_proposal(x, z) at the same particle is "
        f"{float(lp.detach()[r, i]):.6g} nats: datapoint {i}'s proposal is "
        f"conditioned on {cond}, or log_q is not log q(z | x) at the particles it returned. Build one proposal q(z | x) from the "
        "batch as it is and take both the particles and their log-density from it"
    )


def _log_proposal(p: _Probe, x: Tensor, z, v: Tensor, dim: int, grad: bool) -> None:
    p.dtype_device("log_proposal", v, "log q(z | x)", x, z)
    p.finite("log_proposal", v, "log q(z | x)", x, z)
    if grad:
        p.gradient("log_proposal", v, p.phi, "the proposal's parameters φ (q_parameters())", x, z)
    p.order("log_proposal", p.model.log_proposal, x, z, dim)


def check_exact_log_marginal(model, x: Tensor, probe: _Probe | None = None) -> None:
    """The model's own ``exact_log_marginal(x)`` [B] must be finite, of the data's dtype and device,
    and differentiable in θ (exact references and diagnostics use its gradient).

    Raises:
        ModelCheckError: naming ``exact_log_marginal`` and the fix.
    """
    p = probe or _Probe(model, x)
    v = model.exact_log_marginal(x)
    p.dtype_device("exact_log_marginal", v, "log p(x)")
    p.finite("exact_log_marginal", v, "log p(x)")
    p.gradient("exact_log_marginal", v, p.theta, "the generative parameters θ (p_parameters()); the exact references take its gradient")


def first_nonfinite(model, x: Tensor, members: Iterable[str], k: int = PROBE_K) -> str | None:
    """Re-run a batch ``x`` [B, D] member by member and describe the first member whose value, or
    whose gradient with respect to its parameter group, is non-finite; None if all are finite.

    Used by the trainer to name the source of a non-finite loss or gradient (under :func:`quiet_probe`).
    """
    members = set(members)
    p = _Probe(model, x)
    calls = []
    with quiet_probe(model, x.device), torch.enable_grad():
        try:
            if "propose" in members:
                z, log_q = model.propose(x, k)
                calls += [("propose", "log_q", log_q, p.phi, x, z)]
                if "log_joint" in members:
                    calls += [("log_joint", "log p(x, z) at proposed particles", model.log_joint(x, z), p.theta, x, z)]
                if "log_proposal" in members:
                    calls += [("log_proposal", "log q(z | x)", model.log_proposal(x, z), p.phi, x, z)]
            if "sample" in members:
                with torch.no_grad():
                    zs, xs = model.sample(x.shape[0])
                calls += [("sample", "x", xs, [], None, None)]
                for member, params in (("log_joint", p.theta), ("log_proposal", p.phi)):
                    if member in members:
                        calls += [(member, "its value at the model's own samples", getattr(model, member)(xs, zs), params, xs, zs)]
        except Exception as e:  # a member that raises on this batch is itself the answer
            return f"re-running the batch, a member raised {first_line(e)}"
        for member, what, v, params, xx, zz in calls:
            bad = ~torch.isfinite(v) if member != "log_joint" else (torch.isnan(v) | torch.isposinf(v))
            if bool(bad.any()):
                src = p.source(member, xx, zz, lambda t: not bool(torch.isfinite(t).all()))
                return f"{p.name}.{member} returned non-finite {what} for datapoint {int(bad.nonzero()[0][-1])}{src}"
            live = v.masked_fill(~torch.isfinite(v), 0) if member == "log_joint" else v
            if params and live.requires_grad:
                grads = torch.autograd.grad(live.sum(), params, allow_unused=True, retain_graph=True)
                for prm, g in zip(params, grads):
                    if g is not None and not bool(torch.isfinite(g).all()):
                        src = p.source(member, xx, zz, lambda t: True)
                        return f"the gradient of {p.name}.{member} ({what}) is non-finite in a parameter of shape {list(prm.shape)}{src}"
    return None
