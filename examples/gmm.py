"""The Gaussian mixture of Le, Kosiorek, Siddharth, Teh & Wood (2019), *Revisiting reweighted
wake-sleep* (ALGORITHMS.md §9), as a user's own model.

    c ~ Categorical(π),   x | c ~ N(μ_c, σ²),   μ_c = 10 c (c = 0..19),  σ = 5,
    true π_c ∝ c + 5;  π learned from the uniform start;  q(c | x) an MLP 1-16-16-20 (tanh).

Two ways to write it, the same model:

- :func:`mixture` through :func:`wakesleep.models.from_distributions` (three short functions);
- :class:`HandWrittenMixture`, the contract's members written out (the benchmark's baseline), with
  the optional members for continuous relaxation (``--algorithm concrete`` / ``relax``).

Both have the optional contract member ``metrics(x)`` (:func:`report`): π's L1 and L2 errors
against the truth and q's mean distances to the exact posteriors on held-out x, which the trainer
records at each validation (``experiments/le2019_gmm.toml`` runs the paper's study on them).

Run ``python examples/gmm.py`` to train it by RWS and print the L1 error of π and the mean
total-variation distance between q(c | x) and the exact posterior; ``--write-data FILE.npz``
writes a data set for ``wakesleep train --model examples/gmm.py:mixture --dataset FILE.npz``;
:func:`stream` is the same mixture as data that streams (``--data-from examples/gmm.py:stream``).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn
from torch.distributions import Categorical, Normal, OneHotCategorical

import wakesleep as ws

COMPONENTS, SIGMA = 20, 5.0


def true_probs() -> torch.Tensor:
    """π_c ∝ c + 5, [20]."""
    c = torch.arange(COMPONENTS, dtype=torch.get_default_dtype())
    return (c + 5) / (c + 5).sum()


def proposal_net() -> nn.Sequential:
    """q(c | x)'s logits: the MLP 1-16-16-20 with tanh of the paper's gmm/ setup."""
    return nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, COMPONENTS))


class MixturePrior(nn.Module):
    """p(c) = Categorical(softmax(logits)), logits learned from 0 (uniform); also holds μ_c."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(COMPONENTS))
        self.register_buffer("means", 10.0 * torch.arange(COMPONENTS, dtype=torch.get_default_dtype()))

    def forward(self) -> Categorical:
        return Categorical(logits=self.logits)


class MixtureProposal(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = proposal_net()

    def forward(self, x: torch.Tensor) -> Categorical:
        return Categorical(logits=self.net(x))  # x [B, 1] → batch [B]


def mixture(data_dim: int = 1) -> ws.models.DistributionsModel:
    """The mixture through ``from_distributions``: the factory ``--model examples/gmm.py:mixture`` calls."""
    if data_dim != 1:
        raise ValueError(f"the mixture is over scalars: data of width 1, got {data_dim}")
    prior = MixturePrior()
    model = ws.models.from_distributions(
        prior=prior,
        likelihood=lambda c: Normal(prior.means[c], SIGMA),
        proposal=MixtureProposal(),
    )
    model.metrics = lambda x: report(model, x)  # the contract's optional member: a plain attribute will do
    return model


class HandWrittenMixture(nn.Module):
    """The same model with the contract's members written by hand (no ``torch.distributions``)."""

    def __init__(self):
        super().__init__()
        self.prior = MixturePrior()
        self.proposal = MixtureProposal()
        self.log_norm = -0.5 * math.log(2 * math.pi * SIGMA**2)

    def p_parameters(self):
        return list(self.prior.parameters())

    def q_parameters(self):
        return list(self.proposal.parameters())

    def _log_lik(self, x, c):  # x [B, 1] against c [*S, B]
        return self.log_norm - 0.5 * ((x[:, 0] - self.prior.means[c]) / SIGMA) ** 2

    def sample(self, n):
        with torch.no_grad():
            c = torch.multinomial(torch.softmax(self.prior.logits, 0), n, replacement=True)
            return c, (self.prior.means[c] + SIGMA * torch.randn(n, device=c.device))[:, None]

    def log_joint(self, x, c):
        return torch.log_softmax(self.prior.logits, 0)[c] + self._log_lik(x, c)

    def log_prior(self, c):
        return torch.log_softmax(self.prior.logits, 0)[c]

    def propose(self, x, k):
        log_q = torch.log_softmax(self.proposal.net(x), -1)  # [B, C]
        with torch.no_grad():
            c = torch.multinomial(log_q.exp(), k, replacement=True).T  # [K, B]
        return c, log_q.gather(1, c.T).T

    def log_proposal(self, x, c):
        log_q = torch.log_softmax(self.proposal.net(x), -1)  # [B, C]
        return log_q.expand(*c.shape, COMPONENTS).gather(-1, c[..., None])[..., 0]

    def enumerate_latents(self):
        return torch.arange(COMPONENTS, device=self.prior.logits.device)

    # The optional members for continuous relaxation (Concrete, RELAX): c as a one-hot vector.
    def proposal_distribution(self, x):
        return OneHotCategorical(logits=self.proposal.net(x))  # batch [B], event [C]

    def prior_distribution(self):
        return OneHotCategorical(logits=self.prior.logits)

    def log_likelihood(self, x, z):  # z [*S, B, C] one-hot, or a point of the simplex: its mean Σ_c z_c μ_c
        return self.log_norm - 0.5 * ((x[:, 0] - z @ self.prior.means) / SIGMA) ** 2

    def metrics(self, x):
        return report(self, x)


def _states(x: torch.Tensor) -> torch.Tensor:
    return torch.arange(COMPONENTS, device=x.device)[:, None].expand(COMPONENTS, x.shape[0])  # every c for every x: [C, B]


def posterior(model, x: torch.Tensor, as_latent=lambda c: c) -> torch.Tensor:
    """The exact p_θ(c | x) [B, C] by enumeration; ``as_latent`` turns c [C, B] into the model's z
    (e.g. ``{"c": c}`` for a Pyro program)."""
    with torch.no_grad():
        return torch.softmax(model.log_joint(x, as_latent(_states(x))), 0).T


def proposal_probs(model, x: torch.Tensor, as_latent=lambda c: c) -> torch.Tensor:
    """q_φ(c | x) [B, C]."""
    with torch.no_grad():
        return model.log_proposal(x, as_latent(_states(x))).exp().T


def true_posterior(x: torch.Tensor) -> torch.Tensor:
    """The true model's posterior p(c | x) [B, C] (true π, μ_c = 10c, σ = 5), for x [B, 1]."""
    means = 10.0 * torch.arange(COMPONENTS, dtype=x.dtype, device=x.device)
    return torch.softmax(true_probs().to(x).log() - 0.5 * ((x - means) / SIGMA) ** 2, -1)


def learned_probs(model) -> torch.Tensor:
    """π = softmax of the prior's logits (the θ-parameter of shape [20])."""
    logits = next(p for p in model.p_parameters() if p.shape == (COMPONENTS,))
    return torch.softmax(logits.detach(), 0)


def make_data(n: int, seed: int = 0) -> torch.Tensor:
    """n points x [n, 1] from the true mixture."""
    g = torch.Generator().manual_seed(seed)
    c = torch.multinomial(true_probs(), n, replacement=True, generator=g)
    return (10.0 * c + SIGMA * torch.randn(n, generator=g))[:, None]


def stream():
    """Data that streams (``--data-from examples/gmm.py:stream``, compare's ``[data] data_from``): a
    fresh draw from the true mixture at every step, as the paper's ``gmm/`` code trains."""

    def sample(n: int, generator: torch.Generator) -> torch.Tensor:
        c = torch.multinomial(true_probs(), n, replacement=True, generator=generator)
        return (10.0 * c + SIGMA * torch.randn(n, generator=generator))[:, None]

    return sample


def report(model, x: torch.Tensor, as_latent=lambda c: c) -> dict:
    """π's error against the truth and q's distance to the exact posteriors, on held-out x [B, 1]:

    - ``pi_l1``, ``pi_l2``: ‖π − π_true‖₁ and ‖π − π_true‖₂ (the paper's "p error" is the L2);
    - ``q_tv``: mean over x of the total variation between q_φ(c | x) and the model's own p_θ(c | x);
    - ``q_l2``: mean over x of ‖q_φ(· | x) − p_true(· | x)‖₂, against the *true* model's posterior
      (the paper's "q error", Le et al. 2019, ``gmm/util.py: get_q_error``).
    """
    err = learned_probs(model) - true_probs().to(x)
    q = proposal_probs(model, x, as_latent)
    tv = 0.5 * (q - posterior(model, x, as_latent)).abs().sum(-1).mean().item()
    q_l2 = (q - true_posterior(x)).norm(dim=-1).mean().item()
    return {"pi_l1": err.abs().sum().item(), "pi_l2": err.norm().item(), "q_tv": tv, "q_l2": q_l2}


def exact_log_likelihood(model, x: torch.Tensor, as_latent=lambda c: c) -> ws.LogLikelihood:
    """Exact mean log p_θ(x) over x [B, 1], nats: log Σ_c p_θ(x, c) by enumeration."""
    with torch.no_grad():
        return ws.evaluate.mean_stderr(torch.logsumexp(model.log_joint(x, as_latent(_states(x))), 0))


def main(argv=None, build=None, as_latent=lambda c: c) -> dict:
    """Train the mixture by RWS (wake-φ updates) and print ``key: value`` lines: π's L1 error and
    q's mean total variation before and after, the K = 1000 and exact test log-likelihoods.
    ``build``: the model factory (default :func:`mixture`); ``as_latent``: c [C, B] → its z."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="training points")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-data", default=None, help="write train/valid/test splits to this .npz and stop")
    a = p.parse_args(argv)
    if a.write_data:
        from pathlib import Path

        import numpy as np

        Path(a.write_data).parent.mkdir(parents=True, exist_ok=True)

        np.savez(
            a.write_data, train=make_data(a.n, a.seed).numpy(), valid=make_data(1000, a.seed + 1).numpy(), test=make_data(1000, a.seed + 2).numpy()
        )
        print(f"data: {a.write_data}")
        return {}
    torch.manual_seed(a.seed)
    model = (build or mixture)()
    x, x_valid, x_test = make_data(a.n, a.seed), make_data(1000, a.seed + 1), make_data(1000, a.seed + 2)
    before = report(model, x_test, as_latent)
    ws.train(model, ws.RWS(k=a.k, q_update="wake"), x, x_valid, epochs=a.epochs, lr_p=1e-2, lr_q=1e-2, patience=None, progress=False)
    after = report(model, x_test, as_latent)
    ll, exact = ws.log_likelihood(model, x_test, k=1000, seed=0), exact_log_likelihood(model, x_test, as_latent)
    out = {
        "pi_l1_start": before["pi_l1"],
        "pi_l1": after["pi_l1"],
        "q_tv_start": before["q_tv"],
        "q_tv": after["q_tv"],
        "log_likelihood": ll.mean,
        "log_likelihood_stderr": ll.stderr,
        "exact_log_likelihood": exact.mean,
    }
    for key, value in out.items():
        print(f"{key}: {value:.4f}")
    return out


if __name__ == "__main__":
    main()
