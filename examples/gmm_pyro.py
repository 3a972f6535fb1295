"""The Gaussian mixture of ``examples/gmm.py`` (Le et al. 2019) written as a Pyro program and
trained through :func:`wakesleep.pyro.from_pyro`: importance weights per datapoint, unlike Pyro's
own ``ReweightedWakeSleep``, which normalises them over the whole batch (pyro-ppl/pyro#2220).

The model and guide are ``nn.Module``s holding the same parameters as ``gmm.py``'s
(``MixturePrior`` and the 1-16-16-20 proposal network), so the two are twins: the tests check that
they give the same log-weights and RWS gradients for the same particles.  The latent z is a dict
``{"c": c}`` of integer components [*S, B].

Run ``python examples/gmm_pyro.py`` to train it by RWS and print the same ``key: value`` lines as
``gmm.py``; ``--model examples/gmm_pyro.py:mixture_pyro`` on the command line.  Needs ``pyro-ppl``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gmm  # noqa: E402

from wakesleep.pyro import from_pyro  # noqa: E402


class MixtureModel(nn.Module):
    """p(c) p(x | c): c ~ Categorical(π), x ~ N(10 c, 5²), in a plate over the data x [B, 1]."""

    def __init__(self):
        super().__init__()
        self.prior = gmm.MixturePrior()

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=self.prior.logits))
            pyro.sample("x", dist.Normal(self.prior.means[c], gmm.SIGMA), obs=x[..., 0])


class MixtureGuide(nn.Module):
    """q(c | x) = Categorical(MLP(x)) per datapoint."""

    def __init__(self):
        super().__init__()
        self.net = gmm.proposal_net()

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=self.net(x)))


def mixture_pyro(data_dim: int = 1):
    """The mixture as a Pyro program behind the model contract (``--model examples/gmm_pyro.py:mixture_pyro``)."""
    if data_dim != 1:
        raise ValueError(f"the mixture is over scalars: data of width 1, got {data_dim}")
    return from_pyro(MixtureModel(), MixtureGuide(), data_dim=1)


def as_latent(c: torch.Tensor) -> dict:
    """The Pyro model's z for components c [*S, B]: the dict {site name: value}."""
    return {"c": c}


def main(argv=None) -> dict:
    """Train the Pyro mixture by RWS with ``gmm.py``'s settings and print the same ``key: value``
    lines (``pi_l1``, ``q_tv``, the test log-likelihoods in nats); ``--help`` lists the options."""
    return gmm.main(argv, build=mixture_pyro, as_latent=as_latent)


if __name__ == "__main__":
    main()
