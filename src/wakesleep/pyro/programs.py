"""The per-particle Pyro path (``from_pyro(..., vectorize_particles=False)``): programs whose
structure depends on their own random choices (recursion, a loop until a random stop, a random
number of sample sites, site names from earlier choices), traced particle by particle and
datapoint by datapoint.

For each datapoint x_b and particle k the guide runs on its own, z_kb ~ q_φ(z | x_b) (the trace's
choices), then the model is replayed on those choices:
log w[k, b] = log p_θ(x_b, z_kb) − log q_φ(z_kb | x_b), nats, summed over every site of the run,
so that the K weights of each datapoint are normalised separately (Le, Baydin, Zinkov & Wood
2019 and Le, Kosiorek, Siddharth, Teh & Wood 2019, *Revisiting reweighted wake-sleep for models with
stochastic control flow*).  z is the trace's choices as padded tensors
(:mod:`wakesleep.models.choices`); :meth:`ProgramModel.choices` decodes it.  The sleep phase runs the
model forward with its data site released.  The cost is two program runs per particle and
datapoint (``benchmarks/pyro_paths.py`` measures it per sample site).
"""

from __future__ import annotations

from queue import LifoQueue

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import discrete_escape, enum_extend, site_is_subsample
from torch import Tensor, nn

from wakesleep.models.choices import DTYPES, ChoiceCodec
from wakesleep.pyro.common import PyroPrograms, Release, is_latent, is_sample, trace_private

INPUTS = ("auto", "datapoint", "batch")


class _Replay(Messenger):
    """Gives each latent site its value from one trace's choices ({address: (elements, kind)}),
    as ``poutine.replay`` does, and counts the choices used."""

    def __init__(self, codec: ChoiceCodec, table: dict, what: str, device: torch.device):
        super().__init__()
        self.codec, self.table, self.what, self.device, self.used = codec, table, what, device, set()

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["name"] is None or site_is_subsample(msg):
            return
        address = self.codec.address(msg["name"])
        entry = self.table.get(address)
        if entry is None:
            raise ValueError(
                f"the {self.what} drew site {msg['name']!r}, which the choices of z do not hold: the model and the guide "
                "must sample the same latent sites, with the same names, along the same path"
            )
        values, code = entry
        shape = msg["fn"].shape()
        value = torch.tensor(values, dtype=DTYPES[code])
        if value.numel() != shape.numel():
            raise ValueError(f"site {msg['name']!r} of the {self.what} has shape {list(shape)}, but z holds {value.numel()} elements for it")
        msg["value"] = value.reshape(shape).to(self.device)
        msg["done"] = True
        self.used.add(address)


def plated(program, x: Tensor, rows: int) -> bool:
    """Whether ``program`` runs on a batch of ``rows`` datapoints with a plate of that size around every site."""
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            trace = trace_private(program, x[torch.arange(rows, device=x.device) % x.shape[0]])
    except Exception:  # a program for one datapoint may fail on a batch: it is not a batch program
        return False
    sites = [s for s in trace.nodes.values() if is_sample(s)]
    return bool(sites) and all(any(f.size == rows for f in s["cond_indep_stack"]) for s in sites)


def log_density(trace, latents_only: bool) -> Tensor:
    """Σ log f(value) over the trace's sample sites (its latents only, or every one:
    latents, the observation, ``pyro.factor``s), scaled and masked, summed over all dims: nats."""
    total = None
    for site in trace.nodes.values():
        if not is_sample(site) or (latents_only and site["is_observed"]):
            continue
        lp = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"]).sum()
        total = lp if total is None else total + lp
    return total


def latents_of(trace) -> list[tuple[str, Tensor]]:
    return [(n, s["value"]) for n, s in trace.nodes.items() if is_latent(s) and not s["infer"].get("was_observed", False)]


def list_traces(program, inp: Tensor, max_states: int) -> list[list[tuple[str, Tensor]]]:
    """Every trace of ``program(inp)``'s latents once, as lists of (site name, value), by Pyro's
    exhaustive search over discrete sites (``poutine.queue``), the data site drawn, not enumerated.

    Raises:
        ValueError: a latent without ``enumerate_support``, or more than ``max_states`` traces.
    """
    queue = LifoQueue()
    queue.put(poutine.Trace())
    # The data site is released outside the search, so that it is drawn, not enumerated.
    fn = Release()(poutine.queue(program, queue, escape_fn=discrete_escape, extend_fn=enum_extend))
    rows = []
    with torch.no_grad(), torch.random.fork_rng(devices=[inp.device] if inp.device.type == "cuda" else []):
        while not queue.empty():
            if len(rows) >= max_states:
                raise ValueError(
                    f"the model has more than max_traces={max_states} traces: its latents are not enumerated (an unbounded "
                    "recursion?); pass a larger max_traces= to from_pyro for a finite program"
                )
            trace = trace_private(fn, inp)
            latents = latents_of(trace)
            for name, _ in latents:
                if not getattr(trace.nodes[name]["fn"], "has_enumerate_support", False):
                    raise ValueError(f"latent site {name!r} has no finite support (enumerate_support): the traces cannot be listed")
            rows.append(latents)
    return rows


class ProgramModel(PyroPrograms):
    """A Pyro model p_θ(z, x) and guide q_φ(z | x), each run per particle and datapoint, behind the
    model contract (build it with :func:`wakesleep.pyro.from_pyro` and ``vectorize_particles=False``).

    z is a dict of padded tensors {``address``, ``value``, ``kind``}, each [*S, B, L]
    (:mod:`wakesleep.models.choices`), L = ``max_choices``; x is [B, D]; log-densities in nats.  The
    programs take one datapoint: x_b [D] (``program_input="datapoint"``), or a batch of one,
    ``x[b:b+1]`` ([1, D]), for a program written over a batch with a data plate (``"batch"``: a
    sequential ``for i in pyro.plate("data", len(x))`` or a vectorised one); ``"auto"`` tells them
    apart by running each program on two datapoints, then on one (a plate of that size around every
    site means ``"batch"``).

    Raises:
        ValueError: a bad ``max_choices`` or ``program_input``.
    """

    reparameterizable = False

    def __init__(
        self,
        model: nn.Module,
        guide: nn.Module,
        data_dim: int | None = None,
        max_choices: int = 64,
        program_input: str = "auto",
        max_traces: int = 0,
    ):
        super().__init__(model, guide, data_dim)
        if program_input not in INPUTS:
            raise ValueError(f"program_input must be one of {INPUTS}, got {program_input!r}")
        if isinstance(max_traces, bool) or not isinstance(max_traces, int) or max_traces < 0:
            raise ValueError(f"max_traces must be an integer >= 0, got {max_traces!r}")
        self.codec = ChoiceCodec(max_choices)
        self.program_input = program_input
        self.max_traces = max_traces
        self._inputs: dict[str, str] = {}
        self._enumerable: bool | None = None

    @property
    def has_exact_log_marginal(self) -> bool:
        """Whether :meth:`enumerate_latents` lists the model's traces: ``max_traces`` > 0 (an opt-in:
        Pyro's exhaustive search reruns the program from its start for every partial trace, which for
        a deep recursion costs far more runs than it finds traces), every latent discrete and at most
        ``max_traces`` traces (found once, by listing them).  False makes exact evaluation refuse the
        model rather than search without end."""
        if self.max_traces == 0:
            return False
        if self._enumerable is None:
            try:
                self.enumerate_latents()
                self._enumerable = True
            except ValueError:
                self._enumerable = False
        return self._enumerable

    # ------------------------------------------------------------ running the programs
    def _what(self, program) -> str:
        return "Pyro model" if program is self.generative else "Pyro guide"

    def _style(self, program, x: Tensor) -> str:
        """How ``program`` takes one datapoint: ``"datapoint"`` (x_b [D]) or ``"batch"`` (x[b:b+1])."""
        if self.program_input != "auto":
            return self.program_input
        key = "model" if program is self.generative else "guide"
        if key not in self._inputs:
            self._inputs[key] = "batch" if any(plated(program, x, rows) for rows in (2, 1)) else "datapoint"
        return self._inputs[key]

    def _input(self, program, x: Tensor, b: int) -> Tensor:
        return x[b] if self._style(program, x) == "datapoint" else x[b : b + 1]

    def _trace(self, program, inp: Tensor, table: dict | None = None, release: bool = False):
        """One run of ``program(inp)``: replayed on one trace's choices (``table``), with its data
        sites drawn (``release``).

        Raises:
            ValueError: the run drew a site that the choices lack, or left some of them unused.
        """
        fn, replay = program, None
        if table is not None:
            replay = _Replay(self.codec, table, self._what(program), inp.device)
            fn = replay(fn)
        if release:
            fn = Release()(fn)
        trace = trace_private(fn, inp)
        self.check_params(trace, program)
        if replay is not None and len(replay.used) != len(table):
            unused = [self.codec.names.get(a, f"<address {a}>") for a in table if a not in replay.used]
            raise ValueError(
                f"the {self._what(program)} did not draw site(s) {unused} that the choices of z hold: the model and the "
                "guide must sample the same latent sites, with the same names, along the same path"
            )
        return trace

    def _seen(self, x: Tensor) -> int:
        if not isinstance(x, Tensor) or x.ndim != 2:
            raise ValueError(f"x must be a data batch [B, D], got {list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        self._width = x.shape[-1]
        return x.shape[0]

    def _draw(self, program, x: Tensor, k: int) -> tuple[dict, Tensor]:
        """K runs of ``program`` per datapoint: choices [K, B, L] and Σ log f over their latents [K, B]."""
        b = self._seen(x)
        rows, log_f = [None] * (k * b), [None] * (k * b)
        for j in range(b):
            inp = self._input(program, x, j)
            for i in range(k):
                trace = self._trace(program, inp)
                rows[i * b + j] = latents_of(trace)
                log_f[i * b + j] = log_density(trace, latents_only=True)
        z = {n: v.reshape(k, b, -1) for n, v in self.codec.encode(rows, x.device, self._what(program)).items()}
        return z, torch.stack(log_f).reshape(k, b)

    def _score(self, program, x: Tensor, z: dict, latents_only: bool) -> Tensor:
        """Σ log f of ``program`` replayed on each trace of z [*S, B, L], per datapoint: [*S, B]."""
        lead, rows = self.codec.rows(z)
        b = lead[-1]
        if b != x.shape[0]:
            raise ValueError(f"z holds choices for {b} datapoints [*S, B, L] = {list(z['address'].shape)}, x has {x.shape[0]}")
        inputs = [self._input(program, x, j) for j in range(b)]
        out = [log_density(self._trace(program, inputs[r % b], self.codec.table(row)), latents_only) for r, row in enumerate(rows)]
        return torch.stack(out).reshape(lead)

    # ------------------------------------------------------------ the contract
    def propose(self, x: Tensor, k: int) -> tuple[dict, Tensor]:
        """K particles z ~ q_φ(z | x_b) per datapoint, each from its own run of the guide: z
        (choices [K, B, L], detached), log q [K, B] in nats, differentiable in φ.

        Raises:
            ValueError: k < 1, x not [B, D], a trace over ``max_choices``.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"the number of particles k must be an integer >= 1, got {k!r}")
        return self._draw(self.recognition, x, k)

    def log_proposal(self, x: Tensor, z: dict) -> Tensor:
        """log q_φ(z | x), [*S, B] for choices z [*S, B, L] and x [B, D], nats, differentiable in φ."""
        self._seen(x)
        return self._score(self.recognition, x, z, latents_only=True)

    def log_joint(self, x: Tensor, z: dict) -> Tensor:
        """log p_θ(x, z), [*S, B] for choices z [*S, B, L] and x [B, D], nats: every sample site
        of the model's run (latents, the observation, ``pyro.factor``s); −inf where z is impossible."""
        self._seen(x)
        return self._score(self.generative, x, z, latents_only=False)

    def log_prior(self, z: dict) -> Tensor:
        """log p_θ(z), [*S, B] for choices z [*S, B, L], nats: the model's latent sites."""
        lead, _ = self.codec.rows(z)
        x0 = self.x_for_sampling(1).expand(lead[-1], -1)
        return self._score(self.generative, x0, z, latents_only=True)

    def sample(self, n: int) -> tuple[dict, Tensor]:
        """n runs of the model (z, x) ~ p_θ without gradient (the sleep phase), its data site drawn
        (``poutine.uncondition``): choices [n, L], x [n, D].

        Raises:
            ValueError: D unknown (pass ``data_dim=``); a model that does not observe one data
                site of D elements.
        """
        x0 = self.x_for_sampling(1)
        inp = self._input(self.generative, x0.expand(2, -1), 0)
        rows, xs = [], []
        with torch.no_grad():
            for _ in range(n):
                trace = self._trace(self.generative, inp, release=True)
                data = [s for s in trace.nodes.values() if is_sample(s) and s["infer"].get("was_observed", False)]
                if len(data) != 1 or data[0]["value"].numel() != x0.shape[1]:
                    raise ValueError(
                        f"sampling x needs the model to observe the datapoint at one site (obs=x) whose value has D = {x0.shape[1]} "
                        f"elements; it observed {[(s['name'], list(s['value'].shape)) for s in data]}. For an ABC or other "
                        "likelihood written with pyro.factor, observe x through a distribution whose sample() simulates x"
                    )
                rows.append(latents_of(trace))
                xs.append(data[0]["value"].reshape(-1).to(x0.dtype))
        return self.codec.encode(rows, x0.device, "Pyro model"), torch.stack(xs)

    def sample_uniform(self, x: Tensor, k: int) -> tuple[dict, Tensor]:
        """K draws per datapoint from the model's prior p_θ(z), the broad component of defensive
        importance sampling (``RWS(defensive=δ)``) where a program's latents have no finite support
        to be uniform over: choices [K, B, L] and log p_θ(z) [K, B] (detached), nats."""
        with torch.no_grad():
            return self._draw(self.generative, x, k)

    def log_uniform(self, x: Tensor, z: dict) -> Tensor:
        """log p_θ(z) [*S, B] (detached) for choices z [*S, B, L]: :meth:`sample_uniform`'s density at
        any z, which defensive RWS needs at every particle it keeps, whichever component drew it."""
        with torch.no_grad():
            return self.log_prior(z)

    def enumerate_latents(self) -> dict:
        """Every trace of the model's latents once, for a program whose every latent is discrete
        and whose traces are at most ``max_traces`` (a grammar with bounded depth; ``from_pyro(...,
        max_traces=N)`` opts in): choices [S, L], found by Pyro's exhaustive search over discrete
        sites (``poutine.queue``).

        Raises:
            ValueError: ``max_traces`` = 0 (not asked for), a latent without ``enumerate_support``,
                or more than ``max_traces`` traces.
        """
        max_states = self.max_traces
        if max_states == 0:
            raise ValueError("the model's traces are listed only when asked: pass max_traces=N to from_pyro (the most traces to list)")
        x0 = self.x_for_sampling(1)
        inp = self._input(self.generative, x0.expand(2, -1), 0)
        rows = list_traces(self.generative, inp, max_states)
        return self.codec.encode(rows, x0.device, "Pyro model")

    def choices(self, z: dict) -> list:
        """z decoded: nested lists over [*S, B] of {site name: value} dicts, in the order drawn."""
        return self.codec.choices(z)
