"""The vectorised Pyro path (the default of :func:`wakesleep.pyro.from_pyro`): a Pyro model and
guide whose K particles run at once in one outer plate.

Importance weights are per datapoint: log w[k, b] = log p(x_b, z_kb) − log q(z_kb | x_b) in nats,
each site's log-density summed over its event dimensions and over every plate except the data
plate, never over the data plate, so that reweighted wake-sleep normalises the K weights of each
datapoint separately (Bornschein & Bengio 2015; Le, Kosiorek, Siddharth, Teh & Wood 2019,
*Revisiting reweighted wake-sleep*).  Pyro's own ``ReweightedWakeSleep`` sums the log-weights
over the batch and normalises once per batch instead (pyro-ppl/pyro#2220): a different estimator.
K particles are vectorised by an outer plate at dim −(max plate nesting + 1), as Pyro's
``vectorize_particles`` does.  The sleep phase runs the model with its data site released
(``poutine.uncondition``, for that site only).

Requirements on the programs (checked on first use; each refusal says what to change):

- ``model(x)`` and ``guide(x)`` take the data batch x [B, D] and open a ``pyro.plate`` of size B
  over it (at any dim; without subsampling: the trainer draws the batches).  Every sample site of
  the model and of the guide sits inside it: a latent outside the data plate (a global latent)
  cannot be weighted per datapoint.  Further plates and event dimensions are summed.
- The guide samples every latent site of the model and nothing else; the model observes x at
  one site (``obs=``), as x, as ``x[..., 0]`` for D = 1, or as x with a plate over its columns.
  ``pyro.factor`` and ``pyro.deterministic`` sites are allowed in the model (inside the data
  plate); ``log_joint`` includes the factors, sleep samples (``sample``) ignore them.
- Both are ``torch.nn.Module``s (a ``pyro.nn.PyroModule`` with ``PyroParam``/``nn.Parameter``, or
  a module whose ``forward`` is the program and which holds ``nn.Parameter``s), so that
  ``state_dict``, ``.to()``, checkpoints and the trainer's optimiser see their parameters.
  ``pyro.param`` in Pyro's global parameter store is refused (a checkpoint cannot hold it).
  Every run of the programs uses a fresh, private parameter store (``ParamStoreDict.scope``), so
  that a ``PyroModule``'s parameters are its own: in Pyro's default (global) mode two
  ``PyroModule`` instances with the same attribute names would otherwise share ``PyroParam``s
  through the store by name.

Needs ``pyro-ppl`` (``pip install "wakesleep[pyro]"``).
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from torch import Tensor, nn

from wakesleep.fused import first_line
from wakesleep.pyro.common import PARTICLES, PyroPrograms, Release, is_data_site, is_sample, trace_private


def _frames(site) -> list:
    return [f for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLES]


class NotVectorisable(ValueError):
    """A program that could not be run with its particles in one plate (control flow on sampled values)."""


def probe(run, model: nn.Module, guide: nn.Module, x: Tensor) -> dict[str, Any]:
    """Trace both programs without particles (``run(program, x, replay=...)``): the latent sites,
    their ranks and event ranks, the data plate's dim, the data site, the plate nesting.  The data
    plate is the plate whose size follows the batch: the programs run on two batches of different
    sizes (rows of x), so a plate of another size (D, say) is never mistaken for it.  Draws from a
    forked random stream: the caller's stream does not move.

    Raises:
        ValueError: no data plate; a sample site outside it (a global latent, or an observed
            site outside it); latents the guide does not sample, or guide sites the model lacks.
        TypeError: ``pyro.param`` in the global store.
    """
    b = x.shape[0]
    traces = []
    with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        for rows in (b, b + 1):
            xs = x[torch.arange(rows, device=x.device) % b]
            g = run(guide, xs)
            traces.append((run(model, xs, replay=g), g))
    (m, g), (m2, g2) = traces
    sizes = [{f.name: f.size for s in tr.nodes.values() if is_sample(s) for f in _frames(s)} for tr in (m, g, m2, g2)]
    data_names = {n for n, size in {**sizes[0], **sizes[1]}.items() if size == b and {**sizes[2], **sizes[3]}.get(n) == b + 1}
    if not data_names:
        raise ValueError(
            f"found no pyro.plate over the data batch (a plate of size x.shape[0] = {b} in the model and the "
            "guide): open `with pyro.plate('data', x.shape[0]):` around every sample site (without subsampling: "
            "the trainer draws the batches); or, for a program written for one datapoint or with control flow "
            "on its own random choices, use from_pyro(model, guide, vectorize_particles=False)"
        )
    latents = {n: s for n, s in m.nodes.items() if is_sample(s) and not s["is_observed"]}
    guided = {n: s for n, s in g.nodes.items() if is_sample(s) and not s["is_observed"]}
    if not latents:
        raise ValueError("the model has no latent sample site (every site is observed): there is nothing to propose")
    missing = [n for n in latents if n not in guided]
    if missing:
        raise ValueError(f"the guide does not sample the model's latent site(s) {missing}: a proposal must draw every latent")
    extra = [n for n in guided if n not in latents]
    if extra:
        raise ValueError(
            f"the guide samples site(s) {extra} that the model lacks: auxiliary guide variables have no "
            "density q(z | x) to weigh; sample only the model's latents"
        )
    if set(latents) != {n for n, s in m2.nodes.items() if is_sample(s) and not s["is_observed"]}:
        raise NotVectorisable("the model's latent sites differ between two runs (a random number of sample sites, or names from sampled values)")
    dims = set()
    sites = [(f"model site {n!r}", s) for n, s in m.nodes.items() if is_sample(s)]
    sites += [(f"guide site {n!r}", s) for n, s in guided.items()]
    for what, site in sites:
        data = [f.dim for f in _frames(site) if f.name in data_names]
        if not data:
            kind = "latent" if not site["is_observed"] else "observed"
            raise ValueError(
                f"{kind} {what} is outside the data plate (no pyro.plate of size x.shape[0] around it): "
                "importance weights per datapoint need per-datapoint sites (a global latent cannot be "
                "weighted per datapoint); put it inside the data plate, or make it a parameter"
            )
        dims.update(data)
    if len(dims) > 1:
        raise ValueError(f"the data plate sits at different dims {sorted(dims)} in different sites: give it one dim")
    every = [s for tr in (m, g) for s in tr.nodes.values() if is_sample(s)]
    dims_at = dims.pop()
    return {
        "latents": list(latents),
        "observed": [n for n, s in m.nodes.items() if is_sample(s) and is_data_site(s)],
        "nesting": max([-f.dim for s in every for f in _frames(s)] + [len(s["fn"].batch_shape) for s in every]),
        "data_plate_dim": dims_at,
        "rank": {n: guided[n]["value"].dim() for n in latents},
        "event_dim": {n: len(guided[n]["fn"].event_shape) for n in latents},
        # where the data plate's dim sits in each latent's plain value (0 when it is the outermost plate)
        "data_pos": {n: guided[n]["value"].dim() - len(guided[n]["fn"].event_shape) + dims_at for n in latents},
        "reparameterizable": all(guided[n]["fn"].has_rsample for n in latents),
    }


class SiteLayout:
    """Where each latent's dims sit, between the contract's layout (z leaves [*S, B, …]) and the
    sites' own (the data plate at its dim, particles in an outer plate), and per-datapoint sums of
    log-densities; built from :func:`probe`'s description of the programs."""

    def __init__(self, info: dict[str, Any]):
        self.info = info

    def log_density(self, trace, names, k: int | None, detach_values: bool) -> Tensor:
        """Σ over the named sites of log f(value), [K, B] (k given) or [B], nats: each site's
        log_prob (already summed over its event dims) summed over every plate dim except the
        data plate's (and the particle plate's)."""
        info = self.info
        ndim = info["nesting"] + (k is not None)  # batch dims of every log_prob, padded on the left
        keep = {ndim + info["data_plate_dim"]} | ({0} if k is not None else set())
        total = None
        for name in names:
            site = trace.nodes[name]
            value = site["value"].detach() if detach_values else site["value"]
            lp = scale_and_mask(site["fn"].log_prob(value), site["scale"], site["mask"])
            if lp.dim() > ndim:
                raise ValueError(
                    f"site {name!r} has log-densities of shape {list(lp.shape)}, more batch dims than the "
                    f"{ndim} plates: declare its extra dims as event dims (.to_event) or put them in plates"
                )
            lp = lp.reshape((1,) * (ndim - lp.dim()) + tuple(lp.shape))
            other = [d for d in range(ndim) if d not in keep]
            if other:
                lp = lp.sum(other)
            total = lp if total is None else total + lp
        return total

    def to_site(self, name: str, value: Tensor, k: int | None) -> Tensor:
        """A latent from the contract's layout, [B, …] or [k, B, …], to the site's: the batch dim
        back to the data plate's place in the site's value (a no-op when the data plate is the
        outermost plate, the usual case), and in a particle plate the size-1 dims that Pyro
        broadcasts between the particle dim and the site's plain shape ([k, 1, …, B, …])."""
        info = self.info
        pos = info["data_pos"][name]
        if k is None:
            return value.movedim(0, pos)
        pad = info["nesting"] - (info["rank"][name] - info["event_dim"][name])
        value = value.movedim(1, 1 + pos)
        return value.reshape(k, *(1,) * pad, *value.shape[1:])

    def from_site(self, name: str, value: Tensor, k: int | None) -> Tensor:
        """The inverse of :meth:`to_site`: a site's value (plain, or [k, 1, …, plain]) as [B, …] or [k, B, …]."""
        pos = self.info["data_pos"][name]
        if k is None:
            return value.movedim(pos, 0)
        value = value.reshape(k, *value.shape[value.dim() - self.info["rank"][name] :])
        return value.movedim(1 + pos, 1)

    def sample_shape(self, z: dict) -> tuple[int, ...]:
        """The sample dims S that z carries in front of each site's plain value.

        Raises:
            ValueError: z is not a dict holding every latent site, or its sites disagree on S.
        """
        info = self.info
        if not isinstance(z, dict) or any(n not in z for n in info["latents"]):
            have = sorted(z) if isinstance(z, dict) else type(z).__name__
            raise ValueError(f"z must be a dict holding every latent site {info['latents']}; got {have}")
        shapes = {}
        for n in info["latents"]:
            s = z[n].dim() - info["rank"][n]
            if s < 0:
                raise ValueError(
                    f"latent {n!r} has shape {list(z[n].shape)}: fewer dims than the site's own {info['rank'][n]} (z leaves are [*S, B, ...])"
                )
            shapes[n] = tuple(z[n].shape[:s])
        if len(set(shapes.values())) > 1:
            raise ValueError(f"the latents carry different sample dims: {shapes}")
        return shapes[info["latents"][0]]


class PyroModel(PyroPrograms):
    """A Pyro model p_θ(z, x) and guide q_φ(z | x) behind the model contract, particles vectorised
    (build it with :func:`wakesleep.pyro.from_pyro`, which documents the requirements).

    z is a dict {latent site name: value}, each value [*S, B, …]: the value the site has in a plain
    run of the model (no particles) with the data plate's dim moved to the front (a no-op when the
    data plate is the outermost plate), after S sample dims; the S dims are read off each site's
    rank, and any number of them is flattened into one particle plate and restored.  x is [B, D].
    Log-densities are in nats.  The two programs are the submodules ``generative`` and
    ``recognition`` (``state_dict`` keys ``generative.…``, ``recognition.…``).
    """

    def __init__(self, model: nn.Module, guide: nn.Module, data_dim: int | None = None):
        super().__init__(model, guide, data_dim)
        self._layout: SiteLayout | None = None
        self._checked_sample = False

    @property
    def reparameterizable(self) -> bool:
        """True when every latent site of the guide draws by ``rsample`` (VAE and IWAE apply).
        Known once the programs have been traced: after the first batch, or at once when the
        data width is known (``data_dim=``)."""
        if self._layout is None:
            if self._data_dim is None and self._width is None:
                return False
            self._probe(self.x_for_sampling(2))
        return self._layout.info["reparameterizable"]

    def _run(self, program, x: Tensor, k: int | None = None, data: dict | None = None, release=(), replay=None):
        """The trace of ``program(x)`` (the model or the guide): conditioned on ``data`` (a dict of
        site values) or replayed against the trace ``replay``, inside a particle plate of size k when
        k is given, with the observed sites named in ``release`` drawn instead.

        Raises:
            TypeError: a ``pyro.param`` site whose value is not a parameter of the two modules.
            NotVectorisable: the program failed to run with a batch or particles (a ``ValueError``
                that names ``vectorize_particles=False``).
        """
        fn = program
        if replay is not None:
            fn = poutine.replay(fn, trace=replay)
        if data is not None:
            fn = poutine.condition(fn, data=data)
        if release:
            fn = Release(release)(fn)
        if k is not None:
            inner, dim = fn, -(self._layout.info["nesting"] + 1)

            def fn(x):
                with pyro.plate(PARTICLES, k, dim=dim, device=x.device):
                    return inner(x)

        try:
            trace = trace_private(fn, x)
        except (RuntimeError, TypeError, IndexError, KeyError, AttributeError) as e:
            which = "model" if program is self.generative else "guide"
            raise NotVectorisable(
                f"the Pyro {which} failed on a batch of {x.shape[0]} datapoints{'' if k is None else f' with {k} particles in a plate'} "
                f"({first_line(e)}). A program whose control flow depends on its own "
                "random choices (recursion, a while loop on a sampled value, site names from sampled values), or that is written "
                "for one datapoint, cannot be vectorised: use from_pyro(model, guide, vectorize_particles=False), which traces "
                "each particle of each datapoint on its own"
            ) from e
        self.check_params(trace, program)
        return trace

    def _probe(self, x: Tensor) -> dict[str, Any]:
        if self._layout is None:
            self._layout = SiteLayout(probe(self._run, self.generative, self.recognition, x))
        return self._layout.info

    def _seen(self, x: Tensor) -> dict[str, Any]:
        if x.ndim != 2:
            raise ValueError(f"x must be a data batch [B, D], got shape {list(x.shape)}")
        self._width = x.shape[-1]
        return self._probe(x)

    def _evaluate(self, program, x: Tensor, z: dict, names=None) -> Tensor:
        """Σ log f over ``names`` (default: every sample site) of ``program(x)`` conditioned on z,
        [*S, B]: z's sample dims S flattened into one particle plate and restored."""
        layout = self._layout
        lead = layout.sample_shape(z)
        k = None
        if lead:
            k = 1
            for s in lead:
                k *= s
            z = {n: v.reshape(k, *v.shape[len(lead) :]) for n, v in z.items() if n in layout.info["latents"]}
        trace = self._run(program, x, k, {n: layout.to_site(n, z[n], k) for n in layout.info["latents"]})
        if names is None:
            names = [n for n, s in trace.nodes.items() if is_sample(s)]
        out = layout.log_density(trace, names, k, detach_values=False)
        return out.reshape(*lead, out.shape[-1]) if lead else out

    # ------------------------------------------------------------ the contract
    def propose(self, x: Tensor, k: int, reparameterize: bool = False) -> tuple[dict, Tensor]:
        """K particles z ~ q_φ(z | x) from the guide, vectorised: z {site: [K, B, …]} (detached
        unless ``reparameterize``), log q [K, B] in nats, differentiable in φ.

        Raises:
            ValueError: k < 1, x not [B, D], or programs that break the requirements of :func:`from_pyro`.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"the number of particles k must be an integer >= 1, got {k!r}")
        info = self._seen(x)
        g = self._run(self.recognition, x, k)
        z = {n: self._layout.from_site(n, g.nodes[n]["value"] if reparameterize else g.nodes[n]["value"].detach(), k) for n in info["latents"]}
        log_q = self._layout.log_density(g, info["latents"], k, detach_values=not reparameterize)
        return z, log_q.expand(k, x.shape[0])

    def log_proposal(self, x: Tensor, z: dict) -> Tensor:
        """log q_φ(z | x), [*S, B] for z {site: [*S, B, …]} and x [B, D], nats; differentiable in φ
        (and in z where z carries a gradient)."""
        info = self._seen(x)
        return self._evaluate(self.recognition, x, z, info["latents"])

    def log_joint(self, x: Tensor, z: dict) -> Tensor:
        """log p_θ(x, z), [*S, B] for z {site: [*S, B, …]} and x [B, D], nats: every sample site of
        the model (latents, the observation, factors)."""
        self._seen(x)
        return self._evaluate(self.generative, x, z)

    def log_prior(self, z: dict) -> Tensor:
        """log p_θ(z), [*S, B] for z {site: [*S, B, …]} (so [n] for the z of ``sample(n)``), nats:
        the model's latent sites.

        Raises:
            ValueError: the data width is unknown (pass ``data_dim=``).
        """
        info = self._probe(self.x_for_sampling(1))
        b = z[info["latents"][0]].shape[len(self._layout.sample_shape(z))]  # the batch follows the sample dims
        return self._evaluate(self.generative, self.x_for_sampling(b), z, info["latents"])

    def sample(self, n: int) -> tuple[dict, Tensor]:
        """n draws (z, x) ~ p_θ without gradient (the sleep phase): the model run on zeros [n, D]
        with its data site released (``poutine.uncondition`` for that site).  z {site: [n, …]}, x [n, D].

        Raises:
            ValueError: the data width is unknown (pass ``data_dim=``); the model observes more than
                one data site; or x [n, D] cannot be recovered from the observed site's value.
        """
        x0 = self.x_for_sampling(n)
        info = self._probe(x0)
        if len(info["observed"]) != 1:
            raise ValueError(f"sampling x needs the model to observe the data at one site; it observes {info['observed']}")
        obs = info["observed"][0]
        with torch.no_grad():
            m = self._run(self.generative, x0, release=[obs])
            z = {name: self._layout.from_site(name, m.nodes[name]["value"], None) for name in info["latents"]}
            site = m.nodes[obs]
            value = site["value"]
            # The data plate's dim of the value (after its batch dims come its event dims) to the front.
            at = value.dim() - len(site["fn"].event_shape) + info["data_plate_dim"]
            x = value.movedim(at, 0).reshape(n, -1).to(x0.dtype)
            if not self._checked_sample:  # once: the model, given this x, observes the same value
                given = {name: self._layout.to_site(name, v, None) for name, v in z.items()}
                again = self._run(self.generative, x, data=given).nodes[obs]["value"]
                if x.shape != x0.shape or again.shape != value.shape or not torch.equal(again.to(value.dtype), value):
                    raise ValueError(
                        f"cannot recover x [n, {x0.shape[1]}] from the value of the observed site {obs!r} "
                        f"(shape {list(value.shape)}): observe x as x, as x[..., 0] for D = 1, or with a plate "
                        "over its columns"
                    )
                self._checked_sample = True
        return z, x
