"""The same Helmholtz machine written for Pyro 1.9, stepped by ``pyro.infer.SVI`` (shared by the benchmarks).

:func:`pyro_svi` copies a :class:`wakesleep.HelmholtzMachine`'s layers into a Pyro model and guide
(SBN: Bernoulli prior with learned logits, Bernoulli layers; Gaussian: N(0, I) prior, Gaussian
recognition layers, Bernoulli likelihood) and returns an SVI object with ``pyro.optim.Adam``:

- ``algorithm="rws"``: ``ReweightedWakeSleep(num_particles=k, insomnia=0.5, num_sleep_particles=1)``
  (``insomnia=0.5`` is our ``q_update="both"``: half wake-φ, half sleep-φ, one sleep sample per
  datapoint);
- ``algorithm="iwae"``: ``RenyiELBO(alpha=0)``, the IWAE bound.

Both Pyro objectives normalise the importance weights once per batch, not per datapoint: they
compute a different estimator from ours at the same cost.  Used by ``benchmarks/rws_step.py``
(one step, timed) and ``benchmarks/time_to_quality.py`` (training to a log-likelihood level).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PyroCounterpart:
    """An SVI object and the modules it trains (copies of the wakesleep model's, updated in place
    by ``svi.step``; the SBN prior's logits live in Pyro's parameter store as ``"prior_logits"``)."""

    svi: object
    generative: nn.ModuleList
    recognition: nn.ModuleList
    prior: nn.Module
    kind: str

    def step(self, x: torch.Tensor) -> float:
        """One SVI step on the minibatch x [B, D]; returns Pyro's loss."""
        return self.svi.step(observations={"x": x})

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained parameters under :class:`wakesleep.HelmholtzMachine`'s names (load them
        into a model built like the original with ``load_state_dict``)."""
        import pyro

        out = {f"generative.{k}": v.detach().clone() for k, v in self.generative.state_dict().items()}
        out.update({f"recognition.{k}": v.detach().clone() for k, v in self.recognition.state_dict().items()})
        if self.kind == "sbn":
            out["prior.logits"] = pyro.param("prior_logits").detach().clone()
        else:
            out.update({f"prior.{k}": v.detach().clone() for k, v in self.prior.state_dict().items()})
        return out


def pyro_svi(model, algorithm: str, k: int, lr: float = 1e-3) -> PyroCounterpart:
    """A Pyro model and guide with the same layers as ``model`` (deep copies of its parameters) and
    an SVI object with ``pyro.optim.Adam({"lr": lr})``.

    Args:
        model: a :class:`wakesleep.HelmholtzMachine` (``kind`` ``"sbn"`` or ``"gaussian"``).
        algorithm: ``"rws"`` (``ReweightedWakeSleep``, insomnia 0.5) or ``"iwae"`` (``RenyiELBO(alpha=0)``).
        k: particles per step.
        lr: Adam's learning rate for every parameter.

    Clears Pyro's global parameter store and switches Pyro's validation off (its support checks
    cost time and change nothing here).

    Raises:
        ValueError: an unknown ``algorithm``.
    """
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, RenyiELBO, ReweightedWakeSleep

    if algorithm not in ("rws", "iwae"):
        raise ValueError(f"algorithm must be 'rws' or 'iwae', got {algorithm!r}")
    pyro.clear_param_store()
    pyro.enable_validation(False)
    gen = copy.deepcopy(model.generative)
    rec = copy.deepcopy(model.recognition)
    prior = copy.deepcopy(model.prior)
    kind = model.config["kind"]
    if kind == "sbn":
        pyro.param("prior_logits", prior.logits.detach().clone())  # in the store from the start (the model's call then returns it)

    def bernoulli(net, parent):
        return dist.Bernoulli(logits=net(parent)).to_event(1)

    def normal(layer, parent):
        mean, log_scale = layer.params(parent)
        return dist.Normal(mean, log_scale.exp()).to_event(1)

    def p_model(observations):
        xs = observations["x"]
        pyro.module("generative", gen)
        if kind == "sbn":
            prior_logits = pyro.param("prior_logits", prior.logits.detach().clone())
        with pyro.plate("data", xs.shape[0]):
            if kind == "sbn":
                z = pyro.sample("z_top", dist.Bernoulli(logits=prior_logits).expand([xs.shape[0], prior.out_features]).to_event(1))
                for i in reversed(range(1, len(gen))):
                    z = pyro.sample(f"z{i}", bernoulli(gen[i].net, z))
                pyro.sample("x", bernoulli(gen[0].net, z), obs=xs)
            else:
                loc = torch.zeros(xs.shape[0], prior.out_features, dtype=xs.dtype, device=xs.device)
                z = pyro.sample("z_top", dist.Normal(loc, torch.ones_like(loc)).to_event(1))
                pyro.sample("x", bernoulli(gen[0].net, z), obs=xs)

    def guide(observations):
        xs = observations["x"]
        pyro.module("recognition", rec)
        with pyro.plate("data", xs.shape[0]):
            names = [f"z{i}" for i in range(1, len(rec))] + ["z_top"]
            h = xs
            for layer, name in zip(rec, names):
                h = pyro.sample(name, bernoulli(layer.net, h) if kind == "sbn" else normal(layer, h))

    if algorithm == "rws":
        loss = ReweightedWakeSleep(num_particles=k, insomnia=0.5, num_sleep_particles=1, vectorize_particles=True, max_plate_nesting=1)
    else:
        loss = RenyiELBO(alpha=0.0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(p_model, guide, pyro.optim.Adam({"lr": lr}), loss=loss)
    return PyroCounterpart(svi, gen, rec, prior, kind)
