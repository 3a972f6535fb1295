"""What the two Pyro paths share: importing Pyro, which sites count, running a program in a private
parameter store, and refusing ``pyro.param`` held in Pyro's global store."""

from __future__ import annotations

import torch
from torch import Tensor, nn

try:
    import pyro
    from pyro import poutine
    from pyro.distributions import Unit
    from pyro.poutine.uncondition_messenger import UnconditionMessenger
    from pyro.poutine.util import site_is_subsample
except ImportError as e:  # exercised by tests/test_pyro.py with pyro hidden
    raise ImportError(f'wakesleep.pyro needs Pyro ({e}): pip install "wakesleep[pyro]"') from e

from wakesleep.models.contract import device_dtype

#: The name of the plate that vectorises particles (and flattened sample dims).
PARTICLES = "_wakesleep_particles"


def is_sample(site) -> bool:
    """A sample site that carries a density (not a plate's subsample site)."""
    return site["type"] == "sample" and not site_is_subsample(site)


def is_data_site(site) -> bool:
    """An observed site that holds data: not ``pyro.factor`` (a Unit) nor ``pyro.deterministic``."""
    return site["is_observed"] and not isinstance(site["fn"], Unit) and not site["infer"].get("_deterministic", False)


def is_latent(site) -> bool:
    """A sample site that the program draws (neither observed nor a plate's subsample site)."""
    return is_sample(site) and not site["is_observed"]


class Release(UnconditionMessenger):
    """``poutine.uncondition`` for some sites only (the data sites): those are drawn, while
    ``pyro.deterministic`` sites keep their values (released, Pyro would draw a broadcast [n, n]
    value from their Delta) and ``pyro.factor`` sites stay factors.

    Args:
        names: the sites to release, or None for every data site (:func:`is_data_site`).
    """

    def __init__(self, names=None):
        super().__init__()
        self.names = None if names is None else set(names)

    def _pyro_sample(self, msg) -> None:
        if self.names is None:
            if msg["is_observed"] and not isinstance(msg["fn"], Unit) and not msg["infer"].get("_deterministic", False):
                super()._pyro_sample(msg)
        elif msg["name"] in self.names:
            super()._pyro_sample(msg)


def unconstrained(value: Tensor) -> Tensor:
    """The tensor a ``pyro.param`` value stands for: a constrained value (``PyroParam`` with a
    constraint) keeps a weak reference to its unconstrained ``nn.Parameter``."""
    ref = getattr(value, "unconstrained", None)
    out = ref() if callable(ref) else None
    return value if out is None else out


def check_programs(model, guide) -> None:
    """Raise ``TypeError`` unless both programs are ``nn.Module``s (checkpoints hold their parameters)."""
    for name, fn in (("model", model), ("guide", guide)):
        if not isinstance(fn, nn.Module):
            raise TypeError(
                f"the Pyro {name} must be a torch.nn.Module (a pyro.nn.PyroModule, or a module whose forward "
                f"is the program and which holds nn.Parameters) so that checkpoints hold its parameters; "
                f"got {type(fn).__name__}"
            )


def trace_private(fn, *args):
    """``poutine.trace(fn).get_trace(*args)`` in a fresh, private parameter store: PyroModules
    register their own parameters into it and read them back, so nothing is shared with other
    instances through names in Pyro's global store."""
    with pyro.get_param_store().scope():
        return poutine.trace(fn).get_trace(*args)


class PyroPrograms(nn.Module):
    """The parameters of a Pyro model (θ, the submodule ``generative``) and guide (φ, the submodule
    ``recognition``; ``state_dict`` keys ``generative.…``, ``recognition.…``), and the refusal of
    ``pyro.param`` held outside them.  The base of both paths' models."""

    def __init__(self, model: nn.Module, guide: nn.Module, data_dim: int | None):
        super().__init__()
        check_programs(model, guide)
        if data_dim is not None and (isinstance(data_dim, bool) or not isinstance(data_dim, int) or data_dim < 1):
            raise ValueError(f"data_dim must be a positive integer or None, got {data_dim!r}")
        self.generative, self.recognition = model, guide
        self._data_dim = data_dim
        self._width: int | None = None  # the width of the last x seen

    def p_parameters(self) -> list[nn.Parameter]:
        """θ: the Pyro model's parameters."""
        return list(self.generative.parameters())

    def q_parameters(self) -> list[nn.Parameter]:
        """φ: the guide's parameters, less any it shares with the model."""
        theta = set(self.p_parameters())
        return [p for p in self.recognition.parameters() if p not in theta]

    @property
    def data_dim(self) -> int:
        """D: ``data_dim=`` if given, else the width of the last x seen.  Absent (``AttributeError``,
        so ``getattr(model, "data_dim", default)`` gives the default) while neither is known."""
        d = self._data_dim if self._data_dim is not None else self._width
        if d is None:
            raise AttributeError("data_dim")
        return d

    def x_for_sampling(self, n: int) -> Tensor:
        """Zeros [n, D] standing in for data where the model's observation is released or unused.

        Raises:
            ValueError: D unknown (no ``data_dim=`` and no batch seen yet).
        """
        d = self._data_dim if self._data_dim is not None else self._width
        if d is None:
            raise ValueError("the data width D is not known yet: pass data_dim= to from_pyro (or call the model on a data batch first)")
        device, dtype = device_dtype(self)
        return torch.zeros(n, d, dtype=dtype, device=device)

    def check_params(self, trace, program) -> None:
        """Raise ``TypeError`` if the trace of ``program`` (the model or the guide) holds a
        ``pyro.param`` site whose value is not a parameter of the two modules."""
        own = None
        for name, site in trace.nodes.items():
            if site["type"] != "param":
                continue
            if own is None:
                own = {id(p) for p in self.parameters()}
            if id(unconstrained(site["value"])) not in own:
                which = "model" if program is self.generative else "guide"
                raise TypeError(
                    f"the Pyro {which} uses pyro.param({name!r}) from Pyro's global parameter store, which a "
                    "checkpoint cannot hold: hold the parameter in the module (PyroParam in a pyro.nn.PyroModule, "
                    "or an nn.Parameter attribute of the nn.Module)"
                )
