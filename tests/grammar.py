"""A small recursive grammar as a Pyro program, for exact tests of the per-particle path: every tree
can be listed (38 of them), and every tree gives every sentence a positive probability.

S → "a" | "b" | S S, with the recursion cut at depth 2 (there S → "a" | "b" with the first two
logits).  The sentence x [4] is the tree's yield, padded with PAD to 4 tokens, each token seen
through a noisy channel (the yield's token with probability 0.8, each other 0.1).  Site names
follow the node's path in the tree ("S", "S0", "S01", …): they depend on earlier choices.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from wakesleep.pyro import from_pyro

A, B, PAD = 0, 1, 2
MAX_DEPTH, LENGTH = 2, 4


def noisy_yield(tokens: list[int], device=None) -> dist.Distribution:
    """The channel p(x | yield): 4 tokens, each the yield's (or PAD past its end) with probability 0.8."""
    probs = torch.full((LENGTH, 3), 0.1, dtype=torch.float64, device=device)
    for i in range(LENGTH):
        probs[i, tokens[i] if i < len(tokens) else PAD] = 0.8
    return dist.Categorical(probs=probs).to_event(1)


class Grammar(nn.Module):
    """The model: production logits θ [3] (float64)."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))

    def expand(self, path: str) -> list[int]:
        logits = self.logits if len(path) - 1 < MAX_DEPTH else self.logits[:2]
        rule = pyro.sample(path, dist.Categorical(logits=logits))
        if rule.item() < 2:
            return [int(rule)]
        return self.expand(path + "0") + self.expand(path + "1")

    def forward(self, x):
        tokens = self.expand("S")
        pyro.sample("x", noisy_yield(tokens, x.device), obs=x.long())


class Parser(nn.Module):
    """The guide: q(rule | x, depth) from a linear layer over the one-hot sentence and the depth."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Linear(LENGTH * 3 + MAX_DEPTH + 1, 3).double()

    def expand(self, path: str, features) -> None:
        depth = len(path) - 1
        depth_code = nn.functional.one_hot(torch.tensor(depth, device=features.device), MAX_DEPTH + 1).double()
        logits = self.net(torch.cat([features, depth_code]))
        rule = pyro.sample(path, dist.Categorical(logits=logits if depth < MAX_DEPTH else logits[:2]))
        if rule.item() == 2:
            self.expand(path + "0", features)
            self.expand(path + "1", features)

    def forward(self, x):
        self.expand("S", nn.functional.one_hot(x.long(), 3).double().reshape(-1))


def grammar_model(**kwargs):
    """The grammar and its parser behind the contract (per particle)."""
    return from_pyro(Grammar(), Parser(), vectorize_particles=False, data_dim=LENGTH, **kwargs)


def sentences() -> torch.Tensor:
    """Every sentence x [81, 4] (float64)."""
    return torch.cartesian_prod(*[torch.arange(3)] * LENGTH).double()
