"""Probabilistic context-free grammars as Pyro programs with stochastic control flow: the study of
Le, Kosiorek, Siddharth, Teh & Wood (2019), *Revisiting reweighted wake-sleep for models with
stochastic control flow* (UAI), trained through the per-particle Pyro path
(``from_pyro(..., vectorize_particles=False)``).

The model p_θ(tree, x) expands the start symbol recursively: each non-terminal picks a production
from Categorical(softmax θ_symbol) (θ learned, randn at the start, as in their code), recursion cut
below depth ``max_depth`` (a deeper non-terminal stays a leaf, as theirs does); x is observed through
an ABC likelihood, a :class:`~torch.distributions.Distribution` whose ``sample()`` is the tree's
output (so the sleep phase draws x exactly as the grammar does) and whose ``log_prob(x)`` is the
ABC score:

- ``astronomers`` (Manning & Schütze's toy English grammar): x is the sentence, token ids padded
  with ``PAD`` (−1) to D; log p(x | tree) = −Levenshtein(yield(tree), x)²;
- ``polynomial``: x is the polynomial's values on 100 points in [−10, 10];
  log p(x | tree) = −log(1 + MSE(x, f_tree)).

The guide q_φ(tree | x) is their proposal: an embedding of x (a GRU over the sentence's one-hot
words; a CNN over the plotted curve), then a GRU cell that walks the tree in the order it is built,
each node's input the embedding, the parent's production (one-hot) and the node's non-terminal
(one-hot), its hidden state the parent's, and an MLP per non-terminal giving the production's
logits.  Site names are the node's path in the tree (``"S"``, ``"NP.0"``, ``"PP.0.1"``, …), so
which sites exist depends on earlier choices.  Modules are created in their code's order, so that
one seed gives the same initial θ and φ as ``util.set_seed(seed); util.init_models(...)``.

    wakesleep train --model examples/pcfg.py:astronomers --algorithm rws --k 20 --dataset DATA.npz
    python examples/pcfg.py --write-data runs/data/astronomers.npz     # sentences from the true grammar
    python examples/pcfg.py                                            # a short RWS run, key: value lines

``model.metrics(x)`` (recorded at each validation as ``valid_p_error`` etc.) gives their measures:
``p_error``, the mean over non-terminals of KL(p_true ‖ p_θ) between the production probabilities
(nats); ``q_error_to_true`` / ``q_error_to_model``, −(1/100) Σ log q_φ(tree | x) over 100 pairs
drawn from the true / the learned grammar.  Needs ``pyro-ppl``.
"""

from __future__ import annotations

import argparse
import math
import types
from dataclasses import dataclass, field

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch import nn
from torch.distributions import constraints

from wakesleep.pyro import from_pyro

PAD = -1.0
XS = torch.linspace(-10, 10, 100)  # the polynomial's abscissae


@dataclass(frozen=True)
class Grammar:
    """A PCFG: productions per non-terminal (in a fixed order), the start symbol, the true
    production probabilities, and how a tree becomes data (``"sentence"`` or ``"curve"``)."""

    name: str
    terminals: tuple[str, ...]
    productions: dict[str, list[list[str]]]
    start: str
    true_probs: dict[str, list[float]]
    output: str
    nonterminals: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "nonterminals", tuple(sorted(self.productions)))


ASTRONOMERS = Grammar(
    name="astronomers",
    terminals=("astronomers", "ears", "saw", "stars", "telescopes", "with"),
    productions={
        "S": [["NP", "VP"]],
        "NP": [["NP", "PP"], ["astronomers"], ["ears"], ["saw"], ["stars"], ["telescopes"]],
        "VP": [["V", "NP"], ["VP", "PP"]],
        "PP": [["P", "NP"]],
        "P": [["with"]],
        "V": [["saw"]],
    },
    start="S",
    true_probs={"S": [1.0], "NP": [0.4, 0.1, 0.18, 0.04, 0.18, 0.1], "VP": [0.7, 0.3], "PP": [1.0], "P": [1.0], "V": [1.0]},
    output="sentence",
)

POLYNOMIAL = Grammar(
    name="polynomial",
    terminals=("x", "*", "+", "-", "1", "2", "3"),
    productions={
        "E": [["E1", "*", "E1"], ["E1", "*", "N"], ["E1", "+", "N"], ["E1", "-", "N"], ["N", "-", "E1"]],
        "E1": [["x"], ["E"]],
        "N": [["1"], ["2"], ["3"]],
    },
    start="E",
    true_probs={"E": [0.2] * 5, "E1": [0.4, 0.6], "N": [0.33, 0.33, 0.34]},
    output="curve",
)

GRAMMARS = {g.name: g for g in (ASTRONOMERS, POLYNOMIAL)}


# ---------------------------------------------------------------- trees and their outputs
def leaves(tree) -> list[str]:
    """The yield: a tree is a symbol (a leaf) or [symbol, *subtrees]."""
    return [tree] if isinstance(tree, str) else [w for t in tree[1:] for w in leaves(t)]


def token_ids(words: list[str], grammar: Grammar) -> list[int]:
    """Words → ids in sorted(terminals); a non-terminal leaf (a cut recursion) → len(terminals)."""
    vocab = sorted(grammar.terminals)
    return [vocab.index(w) if w in grammar.terminals else len(vocab) for w in words]


def polynomial_values(tree, xs: torch.Tensor = XS) -> torch.Tensor:
    """f_tree(xs); a non-terminal leaf (a cut recursion) counts as 0 (their code raises there)."""
    if isinstance(tree, str):
        return xs.clone() if tree == "x" else torch.full_like(xs, float(tree) if tree.isdigit() else 0.0)
    kids = tree[1:]
    if len(kids) == 1:
        return polynomial_values(kids[0], xs)
    a, op, b = polynomial_values(kids[0], xs), kids[1], polynomial_values(kids[2], xs)
    return a * b if op == "*" else a + b if op == "+" else a - b


def edit_distance(a, b) -> int:
    """Levenshtein distance between two sequences (unit insertions, deletions, substitutions)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def words_of(x: torch.Tensor) -> list[int]:
    """The token ids of a padded sentence x [D] (the PAD entries dropped)."""
    return x[x != PAD].long().tolist()


class SentenceABC(TorchDistribution):
    """x = the yield's token ids padded with PAD to D (cut at D); log p(x) = −Levenshtein(yield, x)²."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, tokens: list[int], width: int):
        self.tokens, self.width = tokens, width
        super().__init__(event_shape=torch.Size([width]), validate_args=False)

    def sample(self, sample_shape=torch.Size()):
        x = torch.full((self.width,), PAD)
        x[: min(len(self.tokens), self.width)] = torch.tensor(self.tokens[: self.width], dtype=x.dtype)
        return x.expand(*sample_shape, self.width)

    def log_prob(self, x):
        return torch.tensor(-(float(edit_distance(self.tokens, words_of(x))) ** 2), dtype=x.dtype)


class CurveABC(TorchDistribution):
    """x = f_tree on the 100 points; log p(x) = −log(1 + mean (x − f_tree)²)."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, values: torch.Tensor):
        self.values = values
        super().__init__(event_shape=values.shape, validate_args=False)

    def sample(self, sample_shape=torch.Size()):
        return self.values.expand(*sample_shape, *self.values.shape)

    def log_prob(self, x):
        return -torch.log1p(((x - self.values.to(x)) ** 2).mean())


def likelihood(grammar: Grammar, tree, width: int) -> TorchDistribution:
    if grammar.output == "sentence":
        return SentenceABC(token_ids(leaves(tree), grammar), width)
    return CurveABC(polynomial_values(tree))


# ---------------------------------------------------------------- the model and the guide
class PCFG(nn.Module):
    """p_θ(tree, x): a recursive PCFG with learned production logits θ (randn start)."""

    def __init__(self, grammar: Grammar, max_depth: int = 30, logits: dict | None = None):
        super().__init__()
        self.grammar, self.max_depth = grammar, max_depth
        self.logits = nn.ParameterDict(
            {a: nn.Parameter(torch.randn(len(rules)) if logits is None else logits[a]) for a, rules in grammar.productions.items()}
        )

    def expand(self, symbol: str, address: str, depth: int):
        if symbol in self.grammar.terminals or depth > self.max_depth:
            return symbol
        rule = pyro.sample(symbol + address, dist.Categorical(logits=self.logits[symbol]))
        children = self.grammar.productions[symbol][rule]
        return [symbol] + [self.expand(c, f"{address}.{i}", depth + 1) for i, c in enumerate(children)]

    def forward(self, x):
        tree = self.expand(self.grammar.start, "", 0)
        pyro.sample("x", likelihood(self.grammar, tree, x.shape[-1]), obs=x)


class Parser(nn.Module):
    """q_φ(tree | x): a GRU cell over the tree's nodes in the order they are built, fed the
    embedding of x, the parent's production and the node's non-terminal; an MLP per non-terminal."""

    def __init__(self, grammar: Grammar, embed: nn.Module, obs_dim: int = 100, hidden: int = 100, max_depth: int = 30):
        super().__init__()
        self.grammar, self.max_depth, self.embed = grammar, max_depth, embed
        self.rules = max(len(r) for r in grammar.productions.values())
        self.gru = nn.GRUCell(obs_dim + self.rules + len(grammar.nonterminals), hidden)
        self.heads = nn.ModuleDict(
            {
                a: nn.Sequential(nn.Linear(hidden, 50), nn.ReLU(), nn.Linear(50, 25), nn.ReLU(), nn.Linear(25, len(r)))
                for a, r in grammar.productions.items()
            }
        )

    def expand(self, symbol: str, address: str, depth: int, obs, parent_rule, h):
        if symbol in self.grammar.terminals or depth > self.max_depth:
            return
        where = nn.functional.one_hot(torch.tensor(self.grammar.nonterminals.index(symbol)), len(self.grammar.nonterminals))
        h = self.gru(torch.cat([obs, parent_rule, where.to(obs)])[None], h[None])[0]
        rule = pyro.sample(symbol + address, dist.Categorical(logits=self.heads[symbol](h)))
        rule_1hot = nn.functional.one_hot(rule, self.rules).to(obs)
        for i, child in enumerate(self.grammar.productions[symbol][rule]):
            self.expand(child, f"{address}.{i}", depth + 1, obs, rule_1hot, h)

    def forward(self, x):
        obs = self.embed(x)
        self.expand(self.grammar.start, "", 0, obs, obs.new_zeros(self.rules), obs.new_zeros(self.gru.hidden_size))


class SentenceEmbedder(nn.Module):
    """A GRU over the sentence's one-hot words (a non-terminal leaf: zeros); its last output."""

    def __init__(self, grammar: Grammar, dim: int = 100):
        super().__init__()
        self.vocab = len(grammar.terminals)
        self.gru = nn.GRU(self.vocab, dim)

    def forward(self, x):
        words = nn.functional.one_hot(x[x != PAD].long(), self.vocab + 1)[:, : self.vocab].to(x)
        return self.gru(words[:, None])[0][-1, 0]


def curve_image(ys: torch.Tensor, size: int = 100) -> torch.Tensor:
    """The curve (XS, ys) drawn black (0) on white (1), y in [−100, 100] bottom to top, as their
    1-inch matplotlib plot at 100 dpi is; here a column per point and a vertical stroke to the next."""
    rows = ((100 - ys.clamp(-1e4, 1e4)) / 200 * (size - 1)).round()
    nxt = torch.cat([rows[1:], rows[-1:]])
    lo, hi = torch.minimum(rows, nxt).clamp(0, size - 1), torch.maximum(rows, nxt).clamp(0, size - 1)
    visible = (torch.maximum(rows, nxt) >= 0) & (torch.minimum(rows, nxt) <= size - 1)
    grid = torch.arange(size, dtype=ys.dtype)[:, None]
    ink = (grid >= lo[None]) & (grid <= hi[None]) & visible[None]
    return 1.0 - ink.to(ys.dtype)


class CurveEmbedder(nn.Module):
    """Their CNN over the plotted curve (4 conv layers, 3 max-pools) and an MLP 640-320-160-dim."""

    def __init__(self, dim: int = 100):
        super().__init__()
        conv = [nn.Conv2d(1, 20, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(20, 20, 3), nn.ReLU(), nn.MaxPool2d(2)]
        conv += [nn.Conv2d(20, 20, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(20, 10, 3), nn.ReLU()]
        self.cnn = nn.Sequential(*conv)
        self.mlp = nn.Sequential(nn.Linear(640, 320), nn.ReLU(), nn.Linear(320, 160), nn.ReLU(), nn.Linear(160, dim))

    def forward(self, x):
        return self.mlp(self.cnn(curve_image(x)[None, None]).reshape(-1))


# ---------------------------------------------------------------- behind the contract
def true_pcfg(grammar: Grammar, max_depth: int = 30) -> PCFG:
    """The true grammar (logits = log of the true probabilities, as their true model's)."""
    return PCFG(grammar, max_depth, logits={a: torch.tensor(p).log() for a, p in grammar.true_probs.items()})


def production_probs(pcfg: PCFG) -> dict[str, torch.Tensor]:
    return {a: torch.softmax(v.detach(), 0) for a, v in pcfg.logits.items()}


def p_error(pcfg: PCFG) -> float:
    """Their ``util.get_p_error``: mean over non-terminals of KL(p_true ‖ p_θ) of the production
    probabilities, nats."""
    probs = production_probs(pcfg)
    kls = [(t * (t.log() - probs[a].log())).sum() for a, p in pcfg.grammar.true_probs.items() for t in [torch.tensor(p)]]
    return float(sum(kls) / len(kls))


def q_error(model, source, n: int = 100) -> float:
    """Their ``util.get_q_error``: −(1/n) Σ log q_φ(tree | x) over n pairs (tree, x) ~ ``source``
    (a model behind the contract: the true grammar or the learned one)."""
    with torch.no_grad():
        z, x = source.sample(n)
        return float(-model.log_proposal(x, z).mean())


def _metrics(self, x=None) -> dict[str, float]:
    """The study's measures (the contract's optional ``metrics``; x is not used: the q errors draw
    their own 100 pairs, from the true and from the learned grammar, as their code does)."""
    n = self.metrics_samples
    return {"p_error": p_error(self.generative), "q_error_to_true": q_error(self, self.truth, n), "q_error_to_model": q_error(self, self, n)}


def grammar_model(grammar: Grammar, data_dim: int, max_depth: int = 30, max_choices: int = 2048, obs_dim: int = 100, hidden: int = 100):
    """A PCFG and its parser behind the model contract (per-particle Pyro path), with ``metrics``.
    Modules are built in their code's order (θ, then the embedder, the GRU cell, the heads)."""
    pcfg = PCFG(grammar, max_depth)
    embed = SentenceEmbedder(grammar, obs_dim) if grammar.output == "sentence" else CurveEmbedder(obs_dim)
    parser = Parser(grammar, embed, obs_dim, hidden, max_depth)
    # The grammar's traces are unbounded: no max_traces=, so they are never listed (no exact evaluation).
    model = from_pyro(pcfg, parser, vectorize_particles=False, data_dim=data_dim, max_choices=max_choices)
    # The true grammar, for the q error on true pairs (held outside the module tree: not trained, not saved).
    object.__setattr__(
        model, "truth", from_pyro(true_pcfg(grammar, max_depth), parser, vectorize_particles=False, data_dim=data_dim, max_choices=max_choices)
    )
    model.metrics = types.MethodType(_metrics, model)
    model.metrics_samples = 100  # pairs per q error (theirs: 100)
    return model


def astronomers(data_dim: int = 256, max_depth: int = 30, max_choices: int = 2048):
    """The astronomers grammar (``--model examples/pcfg.py:astronomers``): sentences padded to D."""
    return grammar_model(ASTRONOMERS, data_dim, max_depth, max_choices)


def polynomial(data_dim: int = 100, max_depth: int = 30, max_choices: int = 2048):
    """The polynomial grammar (``--model examples/pcfg.py:polynomial``): 100 values in [−10, 10]."""
    if data_dim != len(XS):
        raise ValueError(f"the polynomial's data are its values at {len(XS)} points: data of width {len(XS)}, got {data_dim}")
    return grammar_model(POLYNOMIAL, data_dim, max_depth, max_choices)


def sample_data(grammar: Grammar | str, n: int, data_dim: int | None = None, seed: int | None = None, max_depth: int = 30) -> torch.Tensor:
    """n data points x [n, D] from the true grammar (sentences padded with PAD, cut at D; or curves).

    Raises:
        ValueError: n < 1 or an unknown grammar name."""
    grammar = GRAMMARS[grammar] if isinstance(grammar, str) else grammar
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    d = data_dim or (256 if grammar.output == "sentence" else len(XS))
    truth = from_pyro(true_pcfg(grammar, max_depth), nn.Module(), vectorize_particles=False, data_dim=d, max_choices=4096)
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return truth.sample(n)[1].float()


def main(argv=None) -> dict:
    """Train the astronomers grammar by RWS (wake-φ) on fresh sentences and print ``key: value``
    lines: their metrics before and after, and seconds per step."""
    import time

    import wakesleep as ws
    from wakesleep.training import TrainConfig, build_optimizer, train_step

    p = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    p.add_argument("--grammar", choices=sorted(GRAMMARS), default="astronomers")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--write-data", default=None, help="write train/valid/test sentences (npz) here and stop")
    p.add_argument("--n", type=int, default=1000, help="training points for --write-data")
    a = p.parse_args(argv)
    grammar = GRAMMARS[a.grammar]
    if a.write_data:
        from pathlib import Path

        from wakesleep.io import atomic_savez

        parts = {
            name: sample_data(grammar, m, seed=a.seed + i).numpy() for i, (name, m) in enumerate([("train", a.n), ("valid", 100), ("test", 100)])
        }
        Path(a.write_data).parent.mkdir(parents=True, exist_ok=True)
        atomic_savez(Path(a.write_data), parts)
        return {"written": a.write_data}
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    model = astronomers() if a.grammar == "astronomers" else polynomial()
    data = sample_data(grammar, a.iterations * a.batch_size, seed=10_000 + a.seed)
    est = ws.RWS(k=a.k, q_update="wake")
    opt = build_optimizer(model, est, TrainConfig())
    out = {f"start_{k}": v for k, v in model.metrics().items()}
    t0 = time.perf_counter()
    for i in range(a.iterations):
        train_step(model, est, opt, data[i * a.batch_size : (i + 1) * a.batch_size])
    out["seconds_per_step"] = (time.perf_counter() - t0) / a.iterations
    out.update({f"end_{k}": v for k, v in model.metrics().items()})
    for key, value in out.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) and math.isfinite(value) else f"{key}: {value}")
    return out


if __name__ == "__main__":
    main()
