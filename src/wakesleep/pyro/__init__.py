"""The Pyro front end: a Pyro model and guide as a model that meets the contract
(:mod:`wakesleep.models.contract`), so that every estimator, the trainer and evaluation use it.

>>> model = from_pyro(MyModel(), MyGuide(), data_dim=784)                          # doctest: +SKIP
>>> ws.train(model, ws.RWS(k=5), x_train, x_valid)                                 # doctest: +SKIP
>>> grammar = from_pyro(Pcfg(), PcfgGuide(), vectorize_particles=False, data_dim=12)  # doctest: +SKIP

Two paths, split by job:

- :mod:`wakesleep.pyro.vectorised` (the default): programs over a batch with a data plate, K
  particles in one outer plate; z is a dict {site: [*S, B, …]}.  VAE and IWAE apply where the
  guide reparameterises.
- :mod:`wakesleep.pyro.programs` (``vectorize_particles=False``): programs whose structure
  depends on their own random choices, each particle of each datapoint traced on its own; z is the
  trace's choices as padded tensors (:mod:`wakesleep.models.choices`).

Both weigh particles per datapoint (Le, Kosiorek, Siddharth, Teh & Wood 2019), unlike Pyro's own
``ReweightedWakeSleep``, which normalises once per batch (pyro-ppl/pyro#2220).  What the two share
(parameters, the private parameter store, which sites count) is :mod:`wakesleep.pyro.common`.
Needs ``pyro-ppl`` (``pip install "wakesleep[pyro]"``).
"""

from __future__ import annotations

from torch import nn

from wakesleep.pyro.common import PARTICLES
from wakesleep.pyro.programs import ProgramModel
from wakesleep.pyro.vectorised import NotVectorisable, PyroModel

__all__ = ["PARTICLES", "NotVectorisable", "ProgramModel", "PyroModel", "from_pyro"]


def from_pyro(
    model: nn.Module,
    guide: nn.Module,
    data_dim: int | None = None,
    vectorize_particles: bool = True,
    max_choices: int = 64,
    program_input: str = "auto",
    max_traces: int = 1000,
) -> PyroModel | ProgramModel:
    """A model that meets the contract from a Pyro model and guide.

    Vectorised (the default; :class:`PyroModel`): ``model(x)`` and ``guide(x)`` take the batch
    x [B, D] and open a ``pyro.plate`` of size B around every sample site; the guide samples every
    latent site of the model and nothing else; the model observes x at one site (``obs=``);
    ``pyro.factor`` and ``pyro.deterministic`` are allowed in the model.  A program that cannot be
    vectorised fails with a message that names ``vectorize_particles=False``.

    Per particle (``vectorize_particles=False``; :class:`ProgramModel`): the programs take one
    datapoint, x_b [D], or a batch of one, ``x[b:b+1]`` ([1, D]), for a program written over a batch
    with a data plate (sequential ``for i in pyro.plate("data", len(x))`` or vectorised); they may
    recurse, loop on sampled values, draw a random number of sites and name sites after earlier
    choices.  The guide must draw the same latent sites as the model along the same path; the model
    observes the datapoint at one site whose drawn value has D elements (needed by the sleep
    phase: for an ABC likelihood, observe x through a distribution whose ``sample()`` simulates
    x and whose ``log_prob`` is the ABC score).

    Both: programs are ``torch.nn.Module``s (``PyroModule`` with ``PyroParam``/``nn.Parameter``,
    or a module holding ``nn.Parameter``s), so that checkpoints and the optimiser see their
    parameters; ``pyro.param`` in Pyro's global store is refused; every run uses a private
    parameter store.

    Args:
        model: the Pyro model, an ``nn.Module``.
        guide: the Pyro guide (the proposal), an ``nn.Module``.
        data_dim: D, needed to draw sleep samples (``sample``) or prior densities before any data
            has been seen; otherwise the width of the last batch.
        vectorize_particles: False to trace each (particle, datapoint) pair on its own.
        max_choices: per particle: L, the most scalar choices one trace may hold (z's last dim).
        program_input: per particle: ``"datapoint"`` (x_b [D]), ``"batch"`` (``x[b:b+1]`` ([1, D])) or
            ``"auto"`` (``"batch"`` when a run on two datapoints, or on one, has a plate of that size around every site).
        max_traces: per particle: ``enumerate_latents`` (exact evaluation, exact references) lists
            at most this many traces; a program with more (a recursion without bound) has none.

    Returns:
        :class:`PyroModel` or :class:`ProgramModel`: ``sample``, ``log_joint``, ``log_prior``,
        ``propose``, ``log_proposal``, ``p_parameters`` (the model's), ``q_parameters`` (the
        guide's, less shared ones); the per-particle model also ``sample_uniform`` (draws from the
        prior, for defensive RWS), ``enumerate_latents`` (finite discrete programs) and ``choices``.

    Raises:
        TypeError: a program that is not an ``nn.Module``; on first use, a ``pyro.param`` held in
            Pyro's global parameter store rather than in the modules.
        ValueError: a bad ``data_dim``, ``max_choices`` or ``program_input``; on first use,
            programs that break the requirements above (the message says what to change).
    """
    if vectorize_particles:
        return PyroModel(model, guide, data_dim)
    return ProgramModel(model, guide, data_dim, max_choices=max_choices, program_input=program_input, max_traces=max_traces)
