"""The Pyro front end: a Pyro model and guide as a model that meets the contract
(:mod:`wakesleep.models.contract`), so that every estimator, the trainer and evaluation use it.

Importance weights are per datapoint: log w[k, b] = log p(x_b, z_kb) − log q(z_kb | x_b), each
site's log-density summed over its event dimensions and over plates nested inside the data plate,
never over the data plate.  Pyro's own ``ReweightedWakeSleep`` normalises the weights once per
batch instead (pyro-ppl/pyro#2220), a different estimator from reweighted wake-sleep's
(Bornschein & Bengio 2015; Le, Kosiorek, Siddharth, Teh & Wood 2019, *Revisiting reweighted
wake-sleep*).  K particles are vectorised by an outer plate, as Pyro's ``vectorize_particles``
does.  The sleep phase runs the model with its observations released (``poutine.uncondition``).

Requirements on the programs:

- ``model(x)`` and ``guide(x)`` take the data batch x [B, D] and open a ``pyro.plate`` of size B
  over it, the outermost plate of every latent site (per-datapoint latents; a latent outside the
  data plate cannot be weighted per datapoint and is refused);
- the guide samples every latent site of the model; the model observes x at one site (``obs=``),
  of shape [B, D] or, for D = 1, [B];
- both are ``torch.nn.Module``s (``pyro.nn.PyroModule`` with ``PyroParam``, or modules holding
  ``nn.Parameter``s), so that checkpoints hold their parameters; ``pyro.param`` in Pyro's global
  parameter store is refused.

Needs ``pyro-ppl`` (``pip install "wakesleep[pyro]"``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

try:
    import pyro
    from pyro import poutine
    from pyro.distributions.util import scale_and_mask
    from pyro.poutine.util import site_is_subsample
except ImportError as e:  # pragma: no cover - exercised only without pyro
    raise ImportError(f"wakesleep.pyro needs Pyro ({e}): pip install \"wakesleep[pyro]\"") from e

PARTICLES = "_wakesleep_particles"


def _latent_sites(trace) -> dict[str, dict]:
    return {n: s for n, s in trace.nodes.items() if _is_sample(s) and not s["is_observed"]}


def _is_sample(site) -> bool:
    """A sample site that carries a density (not a plate's subsample site)."""
    return site["type"] == "sample" and not site_is_subsample(site)


def _frames(site) -> list:
    return [f for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLES]


class PyroModel(nn.Module):
    """A Pyro model p_θ(z, x) and guide q_φ(z | x) behind the model contract (build it with
    :func:`from_pyro`, which documents the requirements).  z is a dict {latent site name: value},
    each value [*S, B, …]; x is [B, D]."""

    def __init__(self, model: nn.Module, guide: nn.Module, data_dim: int | None = None):
        super().__init__()
        for name, fn in (("model", model), ("guide", guide)):
            if not isinstance(fn, nn.Module):
                raise TypeError(f"the Pyro {name} must be a torch.nn.Module (a pyro.nn.PyroModule, or a module whose forward "
                                f"is the program) so that checkpoints hold its parameters; got {type(fn).__name__}")
        self.generative, self.recognition = model, guide
        self._data_dim = data_dim
        self._info: dict[str, Any] | None = None

    # ------------------------------------------------------------ structure
    def p_parameters(self) -> list[nn.Parameter]:
        """θ: the Pyro model's parameters."""
        return list(self.generative.parameters())

    def q_parameters(self) -> list[nn.Parameter]:
        """φ: the guide's parameters, less any it shares with the model."""
        theta = set(self.p_parameters())
        return [p for p in self.recognition.parameters() if p not in theta]

    @property
    def data_dim(self) -> int | None:
        """D, from ``data_dim=`` or the first batch seen."""
        return self._data_dim if self._info is None else self._info["data_dim"]

    @property
    def reparameterizable(self) -> bool:
        """True when every latent site of the guide draws by ``rsample`` (known after the first batch)."""
        return bool(self._info and self._info["reparameterizable"])

    def _check_params(self, trace, program: str) -> None:
        own = {id(p) for p in self.parameters()}
        store = dict(pyro.get_param_store().named_parameters())
        for name, site in trace.nodes.items():
            if site["type"] == "param" and id(store.get(name)) not in own:
                raise TypeError(f"the Pyro {program} uses pyro.param({name!r}) from Pyro's global parameter store, which a "
                                "checkpoint cannot hold: hold the parameter in the module (PyroParam in a PyroModule, or an nn.Parameter)")

    def _probe(self, x: Tensor) -> dict[str, Any]:
        """Trace both programs once on x (cached): the latent sites, their value ranks, the data
        plate's dim, the observed site, the plate nesting."""
        if self._info is not None:
            return self._info
        b = x.shape[0]
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            g = poutine.trace(self.recognition).get_trace(x)
            m = poutine.trace(poutine.replay(self.generative, trace=g)).get_trace(x)
        self._check_params(m, "model")
        self._check_params(g, "guide")
        latents = _latent_sites(m)
        guided = _latent_sites(g)
        missing = [n for n in latents if n not in guided]
        if missing:
            raise ValueError(f"the guide does not sample the model's latent site(s) {missing}: a proposal must draw every latent")
        observed = [n for n, s in m.nodes.items() if _is_sample(s) and s["is_observed"]]
        nesting = max([-f.dim for s in list(m.nodes.values()) + list(g.nodes.values()) if _is_sample(s)
                       for f in _frames(s)] or [0])
        dims = set()
        for name, site in list(latents.items()) + [(n, g.nodes[n]) for n in latents]:
            data = [f for f in _frames(site) if f.size == b]
            if not data:
                raise ValueError(f"latent site {name!r} is outside the data plate (no pyro.plate of size {b} around it): "
                                 "importance weights per datapoint need per-datapoint latents; put it inside the data plate")
            dims.add(max(f.dim for f in data))  # the outermost plate of that size
        if len(dims) > 1:
            raise ValueError(f"the latent sites sit in data plates at different dims {sorted(dims)}: use one data plate")
        data_dim = dims.pop() if dims else -1
        if data_dim != -nesting:
            raise ValueError(f"the data plate (dim {data_dim}) must be the outermost plate (dim {-nesting}) of the programs")
        self._info = {
            "latents": list(latents), "observed": observed, "nesting": nesting, "data_plate_dim": data_dim,
            "ndim": {n: guided[n]["value"].dim() for n in latents}, "data_dim": x.shape[-1],
            "reparameterizable": all(guided[n]["fn"].has_rsample for n in latents),
        }
        return self._info

    def _x_for_sampling(self, n: int) -> Tensor:
        d = self.data_dim
        if d is None:
            raise ValueError("the model's data width is not known yet: pass data_dim= to from_pyro, or call it on data first")
        p = next(self.parameters(), None)
        return torch.zeros(n, d, dtype=p.dtype if p is not None else torch.get_default_dtype(),
                           device=p.device if p is not None else None)

    # ------------------------------------------------------------ traces
    def _trace(self, program, x: Tensor, k: int | None, data: dict | None = None):
        fn = program if data is None else poutine.condition(program, data=data)
        if k is not None:
            info = self._info

            def vectorised(x):
                with pyro.plate(PARTICLES, k, dim=-(info["nesting"] + 1)):
                    return fn(x)

            return poutine.trace(vectorised).get_trace(x)
        return poutine.trace(fn).get_trace(x)

    def _log_density(self, trace, names, detach_values: bool) -> Tensor:
        """Σ over the named sites of log f(value), summed over event dims and inner plates: [*S, B]."""
        inner = -self._info["data_plate_dim"] - 1  # plate dims inside the data plate
        total = None
        for name in names:
            site = trace.nodes[name]
            value = site["value"].detach() if detach_values else site["value"]
            lp = scale_and_mask(site["fn"].log_prob(value), site["scale"], site["mask"])
            if inner > 0 and lp.dim() >= inner:
                lp = lp.sum(tuple(range(-inner, 0)))
            total = lp if total is None else total + lp
        return total

    def _with_sample_dims(self, z: dict, run):
        """Run ``run(z_flat, k)`` with z's sample dims S flattened into one particle plate of size
        k (none when S is empty) and give its [k, B] (or [B]) result the shape [*S, B]."""
        first = self._info["latents"][0]
        s = z[first].dim() - self._info["ndim"][first]
        if s < 0:
            raise ValueError(f"latent {first!r} has shape {list(z[first].shape)}, fewer dims than the site's own {self._info['ndim'][first]}")
        if s == 0:
            return run(z, None)
        lead = z[first].shape[:s]
        flat = {n: v.reshape(-1, *v.shape[s:]) for n, v in z.items()}
        out = run(flat, flat[first].shape[0])
        return out.reshape(*lead, *out.shape[1:])

    # ------------------------------------------------------------ the contract
    def propose(self, x: Tensor, k: int, reparameterize: bool = False) -> tuple[dict, Tensor]:
        """K particles z ~ q_φ(z | x) by the guide, vectorised: z {site: [K, B, …]} (detached unless
        ``reparameterize``), log q [K, B] in nats, differentiable in φ.

        Raises:
            ValueError: k < 1, or programs that break the requirements of :func:`from_pyro`.
        """
        if k < 1:
            raise ValueError(f"the number of particles k must be >= 1, got {k}")
        info = self._probe(x)
        g = self._trace(self.recognition, x, k)
        z = {n: g.nodes[n]["value"] if reparameterize else g.nodes[n]["value"].detach() for n in info["latents"]}
        log_q = self._log_density(g, info["latents"], detach_values=not reparameterize)
        return z, log_q.expand(k, x.shape[0])

    def log_proposal(self, x: Tensor, z: dict) -> Tensor:
        """log q_φ(z | x), [*S, B] for z {site: [*S, B, …]}, nats."""
        info = self._probe(x)
        return self._with_sample_dims(z, lambda zz, k: self._log_density(self._trace(self.recognition, x, k, zz), info["latents"], True))

    def log_joint(self, x: Tensor, z: dict) -> Tensor:
        """log p_θ(x, z), [*S, B] for z {site: [*S, B, …]} and x [B, D], nats: every sample site of the model."""
        self._probe(x)

        def run(zz, k):
            m = self._trace(self.generative, x, k, zz)
            return self._log_density(m, [n for n, s in m.nodes.items() if _is_sample(s)], detach_values=False)

        return self._with_sample_dims(z, run)

    def log_prior(self, z: dict) -> Tensor:
        """log p_θ(z), [*S, B] for z {site: [*S, B, …]}: the model's latent sites (the data width
        must be known: ``data_dim=`` or a batch seen).

        Raises:
            ValueError: z before any batch was seen and without ``data_dim``.
        """
        info = self._probe(self._x_for_sampling(1))
        first = info["latents"][0]
        b = z[first].shape[z[first].dim() - info["ndim"][first]]  # the batch follows the sample dims
        x = self._x_for_sampling(b)
        return self._with_sample_dims(z, lambda zz, k: self._log_density(self._trace(self.generative, x, k, zz), info["latents"], False))

    def sample(self, n: int) -> tuple[dict, Tensor]:
        """n draws (z, x) ~ p_θ, without gradient: the model run with its observation released.
        z {site: [n, …]}, x [n, D].

        Raises:
            ValueError: the data width is unknown (pass ``data_dim=``), or the model does not
                observe exactly one site.
        """
        x0 = self._x_for_sampling(n)
        info = self._probe(x0)
        if len(info["observed"]) != 1:
            raise ValueError(f"sampling x needs the model to observe one site; it observes {info['observed']}")
        with torch.no_grad():
            m = poutine.trace(poutine.uncondition(self.generative)).get_trace(x0)
        z = {name: m.nodes[name]["value"] for name in info["latents"]}
        x = m.nodes[info["observed"][0]]["value"]
        return z, x.reshape(n, -1).to(x0.dtype)


def from_pyro(model: nn.Module, guide: nn.Module, data_dim: int | None = None) -> PyroModel:
    """A model that meets the contract from a Pyro model and guide (see the module docstring for
    what the programs must do).

    Args:
        model: ``model(x)``, a Pyro program over x [B, D] with a data plate, observing x.
        guide: ``guide(x)``, sampling every latent site of the model in the same data plate.
        data_dim: D, needed only to draw sleep samples before any data has been seen.

    Returns:
        :class:`PyroModel`: ``sample``, ``log_joint``, ``log_prior``, ``propose``, ``log_proposal``
        and both parameter groups; z is a dict {site name: tensor}.

    Raises:
        TypeError: a program that is not an ``nn.Module``; on first use, ``pyro.param`` sites
            held only in Pyro's global parameter store.
        ValueError: on first use, latent sites outside the data plate or not sampled by the guide.
    """
    return PyroModel(model, guide, data_dim)
