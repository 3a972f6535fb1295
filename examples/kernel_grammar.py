"""The structured time-series model of Le et al. (ICLR 2022, *Hybrid memoised wake-sleep*, §5.1) as
their ``cmws/examples/timeseries`` code sets it up, written on this library's hybrid contract, so
that HMWS, RWS and MWS train it alike (``experiments/hmws_timeseries.py`` runs it beside their code).

    d = an expression of at most 10 tokens over W R 1 2 3 4 C * + ( )   (a Gaussian-process kernel:
        W white noise, R squared exponential, 1–4 periodic of short … extra-long period, C constant)
    d ~ p_θ(d)                  an LSTM over tokens (hidden 128), each step a token and a stop bit
    c | d ~ p_θ(c | d)          16 raw parameters per base kernel of d, an LSTM conditioned on an
                                LSTM embedding of d, each step a diagonal Gaussian
    x | d, c ~ N(0, K_{d,c}(t, t) + 0.02 I + jitter)    t = 128 points on [−2, 2]
    log p_θ(d, c, x) = log p(d) + log p(c | d) + log N(x; …) − 10·len(d)

q_φ(d | x): an LSTM over the series' 128 values (hidden 128) embeds x; an LSTM over tokens fed that
embedding proposes d.  q_φ(c | d, x): an LSTM over the base kernels fed the series' embedding and
an LSTM embedding of d (the guide's own) proposes c.  z = (d, c), d = (tokens long [*S, B, 10],
stop one-hot long [*S, B, 10]) zero-padded past its length, c float [*S, B, 10, 16] zero past the
number of base kernels: the authors' ``(raw_expression, eos)`` and ``raw_gp_params``.

What follows their code (``models/timeseries.py``, ``util.py``, ``lstm_util.py``,
``expression_prior_pretraining.py``, ``data.py``, read, not copied): the vocabulary and its order,
the grammar's parse (``+`` below ``*``, parentheses; an expression that does not parse gets
log-likelihood −10⁶ with the identity as covariance), which of the 16 raw parameters each base
kernel reads and its squashing (a sigmoid into an interval of width ``param_range`` = 0.02 around
0.5 for the scales and squared lengthscales, around 0.2/0.5/1.0/1.5 for the four periods), the
noise 0.02 I and their jitter 10⁻³ (1 + K_ii) on the diagonal, the length penalty 10 per token,
the LSTMs' inputs (the previous token one-hot or the previous c, zeros at the first step, then
the conditioning embedding), their sizes and the order in which the modules are built, so that
one ``torch.manual_seed`` gives both codes the same initial parameters (checked in
``experiments/hmws_timeseries.py --check``: their state dict loads into ours and the log-densities
agree).  The prior over d starts pretrained on 2000 batches of 10 expressions drawn from their
kernel PCFG (``kernel_pcfg.json``'s productions and probabilities, expressions longer than
``max_chars`` redrawn), as their ``init`` does; the synthetic data (:func:`synthetic_data`) are
theirs: 200 draws from a model with ``max_chars`` 20 whose prior was pretrained on 500 batches of 50.

Departures, stated: (i) the GP log-likelihood is computed in one batched Cholesky per distinct
expression, and a covariance whose Cholesky fails gets −10⁶ alone (theirs: the whole batch of
particles gets −10⁶); (ii) the LSTMs run over the padded sequence with masks instead of packed
sequences (the same values: the LSTM is causal); (iii) the random streams of sampling differ from
theirs (same distributions, other draws), so the pretrained prior and the data differ from theirs
unless their data file is passed (``experiments/hmws_timeseries.py`` passes theirs to both).

    python examples/kernel_grammar.py --write-data FILE.npz     # their synthetic data (200 series)
    wakesleep train --algorithm hmws --model examples/kernel_grammar.py:grammar --dataset FILE.npz ...
"""

from __future__ import annotations

import argparse
import functools
import math

import torch
from torch import nn
from torch.nn import functional as F

from wakesleep.models import hybrid_propose

#: The tokens, in the authors' order (their ``char_to_num``).
VOCAB = "WR1234C*+()"
BASES = set("WR1234C")
PARAMS = 16  # raw parameters per base kernel (their gp_params_dim)
T = 128  # points per series (their num_timesteps)
NOISE = 0.02
LENGTH_PENALTY = 10.0
INVALID = -1e6
#: Their kernel PCFG (``kernel_pcfg.json``): K → (K) | K+K | K*K | W | R | 1 | 2 | 3 | 4 | C.
PRODUCTIONS = (("(", "K", ")"), ("K", "+", "K"), ("K", "*", "K"), ("W",), ("R",), ("1",), ("2",), ("3",), ("4",), ("C",))
PRODUCTION_PROBS = (0.1, 0.1, 0.1, 0.175, 0.175, 0.04375, 0.04375, 0.04375, 0.04375, 0.175)
#: Base kernel → (first raw parameter, centres of its squashed parameters in their order).
SLOTS = {
    "W": (0, (0.5,)),
    "R": (1, (0.5, 0.5)),
    "1": (3, (0.5, 0.2, 0.5)),
    "2": (6, (0.5, 0.5, 0.5)),
    "3": (9, (0.5, 1.0, 0.5)),
    "4": (12, (0.5, 1.5, 0.5)),
    "C": (15, (0.5,)),
}


class ParseError(ValueError):
    pass


@functools.cache
def parse(expression: str):
    """The kernel tree of ``expression`` (their ``Kernel`` grammar): ``("+", children)``,
    ``("*", children)`` or ``(base, slot)``, slot the base kernel's position among the expression's
    base kernels.  Raises :class:`ParseError` where their parser raises ``ParsingError``."""
    pos, slot = 0, 0

    def peek():
        return expression[pos : pos + 1]

    def addition():
        nonlocal pos
        values = [multiplication()]
        while peek() == "+":
            pos += 1
            values.append(multiplication())
        return values[0] if len(values) == 1 else ("+", tuple(values))

    def multiplication():
        nonlocal pos
        values = [parenthesis()]
        while peek() == "*":
            pos += 1
            values.append(parenthesis())
        return values[0] if len(values) == 1 else ("*", tuple(values))

    def parenthesis():
        nonlocal pos
        if peek() == "(":
            pos += 1
            value = addition()
            if peek() != ")":
                raise ParseError(f"no closing parenthesis at {pos} in {expression!r}")
            pos += 1
            return value
        return value_()

    def value_():
        nonlocal pos, slot
        char = peek()
        pos += 1
        if char not in BASES:
            raise ParseError(f"cannot parse {char!r} in {expression!r}")
        slot += 1
        return (char, slot - 1)

    tree = addition()
    if pos < len(expression):
        raise ParseError(f"unexpected {peek()!r} at {pos} in {expression!r}")
    return tree


def squash(raw: torch.Tensor, centre: float, width: float) -> torch.Tensor:
    """sigmoid(raw) mapped onto [centre − width/2, centre + width/2] (their ``get_interval``)."""
    return torch.sigmoid(raw) * width + (centre - width / 2)


def gram(tree, raw: torch.Tensor, t: torch.Tensor, width: float) -> torch.Tensor:
    """The kernel of ``tree`` on the grid t [T] for raw parameters raw [N, slots, 16]: [N, T, T]."""
    op = tree[0]
    if op in ("+", "*"):
        out = gram(tree[1][0], raw, t, width)
        for child in tree[1][1:]:
            out = out + gram(child, raw, t, width) if op == "+" else out * gram(child, raw, t, width)
        return out
    first, centres = SLOTS[op]
    p = [squash(raw[:, tree[1], first + i], c, width)[:, None, None] for i, c in enumerate(centres)]  # [N, 1, 1] each
    diff = t[:, None] - t[None, :]
    if op == "W":
        return p[0] * torch.eye(t.shape[0], dtype=raw.dtype, device=raw.device)
    if op == "R":
        return p[0] * torch.exp(-(diff**2) / (2 * p[1]))
    if op == "C":
        return p[0] * torch.ones_like(diff)
    return p[0] * torch.exp(-2 * torch.sin(math.pi * diff.abs() / p[1]) ** 2 / p[2])  # periodic: scale, period, lengthscale²


def expression_of(tokens: torch.Tensor, length: int) -> str:
    return "".join(VOCAB[i] for i in tokens[:length].tolist())


def lengths(stop: torch.Tensor) -> torch.Tensor:
    """Tokens in each expression [*S]: the first stop bit's position + 1, or all when none is set."""
    n = stop.shape[-1]
    first = torch.where(stop.bool().any(-1), stop.argmax(-1), n - 1)
    return first + 1


def count_bases(tokens: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Base kernels among the first n tokens [*S] (their ``count_base_kernels``)."""
    positions = torch.arange(tokens.shape[-1], device=tokens.device)
    return ((tokens < len(BASES)) & (positions < n[..., None])).sum(-1)


class Sequence(nn.Module):
    """An autoregressive LSTM over up to ``steps`` items (their ``TimeseriesDistribution``): at step
    s the LSTM reads [item_{s−1} (zeros at s = 0), embedding] and a linear layer gives either the
    logits of a token and of the stop bit (``discrete``) or a diagonal Gaussian's mean and log-scale
    (continuous).  The LSTM and the linear layer are passed in (the model owns them)."""

    @staticmethod
    def inputs(items: torch.Tensor, size: int, embedding: torch.Tensor | None, discrete: bool) -> torch.Tensor:
        """The teacher-forced inputs [N, steps, size + E] of items [N, steps(, size)]."""
        prev = F.one_hot(items, size).to(torch.get_default_dtype()) if discrete else items
        prev = torch.cat([torch.zeros_like(prev[:, :1]), prev[:, :-1]], 1)
        if embedding is not None:
            prev = torch.cat([prev, embedding[:, None].expand(-1, prev.shape[1], -1)], -1)
        return prev

    @staticmethod
    def log_prob_discrete(lstm, linear, tokens, stop, n, embedding=None) -> torch.Tensor:
        """log p(tokens, stop) [N] over the first n steps; tokens, stop [N, steps], n [N]."""
        out, _ = lstm(Sequence.inputs(tokens, len(VOCAB), embedding, True).transpose(0, 1))
        logits = linear(out).transpose(0, 1)  # [N, steps, V + 1]
        lp = torch.log_softmax(logits[..., : len(VOCAB)], -1).gather(-1, tokens[..., None])[..., 0]
        lp = lp - F.binary_cross_entropy_with_logits(logits[..., -1], stop.to(logits.dtype), reduction="none")
        mask = torch.arange(tokens.shape[1], device=tokens.device) < n[:, None]
        return torch.where(mask, lp, 0.0).sum(-1)

    @staticmethod
    def log_prob_continuous(lstm, linear, c, n, embedding) -> torch.Tensor:
        """log p(c) [N] over the first n steps; c [N, steps, 16], n [N]."""
        out, _ = lstm(Sequence.inputs(c, PARAMS, embedding, False).transpose(0, 1))
        loc, log_scale = linear(out).transpose(0, 1).chunk(2, -1)
        lp = torch.distributions.Independent(torch.distributions.Normal(loc, log_scale.exp()), 1).log_prob(c)
        mask = torch.arange(c.shape[1], device=c.device) < n[:, None]
        return torch.where(mask, lp, 0.0).sum(-1)

    @staticmethod
    @torch.no_grad()
    def sample_discrete(lstm, linear, num: int, steps: int, embedding=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``num`` expressions (tokens, stop) [num, steps], zero past their length (their sampler:
        every step drawn, the length set by the first stop bit)."""
        dtype = torch.get_default_dtype()
        x = torch.zeros(num, len(VOCAB), dtype=dtype, device=linear.weight.device)
        hc, tokens, stops = None, [], []
        for _ in range(steps):
            inp = x if embedding is None else torch.cat([x, embedding], -1)
            out, hc = lstm(inp[None], hc)
            logits = linear(out[0])
            token = torch.distributions.Categorical(logits=logits[:, : len(VOCAB)]).sample()
            stops.append(torch.distributions.Bernoulli(logits=logits[:, -1]).sample())
            tokens.append(token)
            x = F.one_hot(token, len(VOCAB)).to(dtype)
        tokens, stop_bits = torch.stack(tokens, 1), torch.stack(stops, 1)
        n = lengths(stop_bits)
        keep = torch.arange(steps, device=n.device) < n[:, None]
        return torch.where(keep, tokens, 0), F.one_hot(n - 1, steps)

    @staticmethod
    @torch.no_grad()
    def sample_continuous(lstm, linear, n: torch.Tensor, steps: int, embedding: torch.Tensor) -> torch.Tensor:
        """c [N, steps, 16] for embeddings [N, E], zero past each row's n [N] steps."""
        x = torch.zeros(embedding.shape[0], PARAMS, dtype=embedding.dtype, device=embedding.device)
        hc, out_c = None, []
        for _ in range(int(n.max().item()) if n.numel() else 0):
            out, hc = lstm(torch.cat([x, embedding], -1)[None], hc)
            loc, log_scale = linear(out[0]).chunk(2, -1)
            x = torch.distributions.Normal(loc, log_scale.exp()).sample()
            out_c.append(x)
        c = torch.zeros(embedding.shape[0], steps, PARAMS, dtype=embedding.dtype, device=embedding.device)
        if out_c:
            c[:, : len(out_c)] = torch.stack(out_c, 1)
        return torch.where((torch.arange(steps, device=n.device) < n[:, None])[..., None], c, 0.0)


def embed_expression(lstm, tokens, n) -> torch.Tensor:
    """The LSTM's hidden state after the first n tokens: [N, H] (their ``get_expression_embedding``)."""
    out, _ = lstm(F.one_hot(tokens, len(VOCAB)).to(torch.get_default_dtype()).transpose(0, 1))  # [steps, N, H]
    return out.gather(0, (n - 1)[None, :, None].expand(1, -1, out.shape[-1]))[0]


class GenerativeModel(nn.Module):
    """p_θ(d, c, x), their ``GenerativeModel``'s modules, names and construction order."""

    def __init__(self, max_chars: int = 10, hidden: int = 128, param_range: float = 0.02):
        super().__init__()
        self.max_chars, self.hidden, self.param_range = max_chars, hidden, param_range
        self.expression_lstm = nn.LSTM(len(VOCAB), hidden)
        self.expression_extractor = nn.Linear(hidden, len(VOCAB) + 1)
        self.gp_params_lstm = nn.LSTM(PARAMS + hidden, hidden)
        self.gp_params_extractor = nn.Linear(hidden, 2 * PARAMS)


class Guide(nn.Module):
    """q_φ(d, c | x), their ``Guide``'s modules, names and construction order."""

    def __init__(self, max_chars: int = 10, hidden: int = 128):
        super().__init__()
        self.max_chars, self.hidden = max_chars, hidden
        self.obs_embedder = nn.LSTM(1, hidden)
        self.expression_embedder = nn.LSTM(len(VOCAB), hidden)
        self.expression_lstm = nn.LSTM(hidden + len(VOCAB), hidden)
        self.expression_extractor = nn.Linear(hidden, len(VOCAB) + 1)
        self.gp_params_lstm = nn.LSTM(hidden + PARAMS + hidden, hidden)
        self.gp_params_extractor = nn.Linear(hidden, 2 * PARAMS)


class KernelGrammar(nn.Module):
    """The time-series model on the hybrid contract (:data:`wakesleep.models.contract.HYBRID`):
    z = (d, c), d = (tokens, stop) long [*S, B, max_chars] each, c [*S, B, max_chars, 16]; x [B, 128].

    Args:
        max_chars: the longest expression (theirs: 10; 20 for the data's model).
        hidden: the LSTMs' width (theirs: 128).
        param_range: the width of the squashed parameters' intervals (theirs: 0.02).
    """

    def __init__(self, max_chars: int = 10, hidden: int = 128, param_range: float = 0.02):
        super().__init__()
        self.data_dim = T
        self.generative_model = GenerativeModel(max_chars, hidden, param_range)
        self.guide = Guide(max_chars, hidden)
        self.max_chars, self.param_range = max_chars, param_range
        self.register_buffer("t", torch.linspace(-2, 2, T))

    def p_parameters(self):
        return list(self.generative_model.parameters())

    def q_parameters(self):
        return list(self.guide.parameters())

    # -- the generative model ------------------------------------------------------------------
    def log_prior_discrete(self, tokens, stop) -> torch.Tensor:
        """log p_θ(d) [N] for tokens, stop [N, max_chars]."""
        g = self.generative_model
        return Sequence.log_prob_discrete(g.expression_lstm, g.expression_extractor, tokens, stop, lengths(stop))

    def log_prior(self, z) -> torch.Tensor:
        """log p_θ(d) + log p_θ(c | d) [*S] for z = ((tokens, stop), c) with leaves [*S, …]."""
        (tokens, stop), c = z
        shape = tokens.shape[:-1]
        tokens, stop, c = tokens.reshape(-1, self.max_chars), stop.reshape(-1, self.max_chars), c.reshape(-1, self.max_chars, PARAMS)
        g, n = self.generative_model, lengths(stop)
        emb = embed_expression(g.expression_lstm, tokens, n)
        lp_c = Sequence.log_prob_continuous(g.gp_params_lstm, g.gp_params_extractor, c, count_bases(tokens, n), emb)
        return (self.log_prior_discrete(tokens, stop) + lp_c).view(shape)

    def kernels(self, tokens, stop, c) -> tuple[torch.Tensor, torch.Tensor]:
        """K_{d,c}(t, t) [N, T, T] (the identity where d does not parse) and whether d parses [N],
        for d, c flat [N, …]: one batched evaluation per distinct expression."""
        n = lengths(stop)
        cov = torch.empty(tokens.shape[0], T, T, dtype=c.dtype, device=c.device)
        valid = torch.ones(tokens.shape[0], dtype=torch.bool, device=c.device)
        groups: dict[str, list[int]] = {}
        for i, (row, k) in enumerate(zip(tokens.tolist(), n.tolist())):
            groups.setdefault("".join(VOCAB[j] for j in row[:k]), []).append(i)
        for expression, rows in groups.items():
            idx = torch.tensor(rows, device=c.device)
            try:
                cov[idx] = gram(parse(expression), c[idx], self.t, self.param_range)
            except ParseError:
                cov[idx] = torch.eye(T, dtype=c.dtype, device=c.device)
                valid[idx] = False
        return cov, valid

    def log_joint(self, x, z) -> torch.Tensor:
        """log p_θ(d, c, x) − 10·len(d) [*S, B] for x [B, 128], z leaves [*S, B, …], nats."""
        (tokens, stop), c = z
        shape = tokens.shape[:-1]
        flat_t, flat_s = tokens.reshape(-1, self.max_chars), stop.reshape(-1, self.max_chars)
        flat_c = c.reshape(-1, self.max_chars, PARAMS)
        cov, valid = self.kernels(flat_t, flat_s, flat_c)
        eye = torch.eye(T, dtype=cov.dtype, device=cov.device)
        cov = cov + NOISE * eye
        cov = cov + 1e-3 * eye * (1 + cov)  # their get_multivariate_normal_dist's jitter
        chol, info = torch.linalg.cholesky_ex(cov)
        ok = valid & (info == 0)
        chol = torch.where(ok[:, None, None], chol, eye)
        xs = x.expand(*shape, T).reshape(-1, T, 1)
        white = torch.linalg.solve_triangular(chol, xs, upper=False)[..., 0]
        log_lik = -0.5 * (white**2).sum(-1) - chol.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * T * math.log(2 * math.pi)
        log_lik = torch.where(ok, log_lik, torch.full_like(log_lik, INVALID))
        penalty = LENGTH_PENALTY * lengths(flat_s).to(log_lik.dtype)
        return self.log_prior(z) + (log_lik - penalty).view(shape)

    @torch.no_grad()
    def sample(self, n: int):
        """n draws ((tokens, stop), c), x [n, 128] from p_θ; a d that does not parse gives x from
        the covariance 10⁻⁶ I and a failed Cholesky gives x = 0, as theirs."""
        g = self.generative_model
        tokens, stop = Sequence.sample_discrete(g.expression_lstm, g.expression_extractor, n, self.max_chars)
        m = lengths(stop)
        emb = embed_expression(g.expression_lstm, tokens, m)
        c = Sequence.sample_continuous(g.gp_params_lstm, g.gp_params_extractor, count_bases(tokens, m), self.max_chars, emb)
        cov, valid = self.kernels(tokens, stop, c)
        eye = torch.eye(T, dtype=cov.dtype, device=cov.device)
        cov = torch.where(valid[:, None, None], cov, 1e-6 * eye)
        cov = cov + 1e-3 * eye * (1 + cov)  # their sampler: the kernel alone (no 0.02 I), their jitter
        chol, info = torch.linalg.cholesky_ex(cov)
        x = (chol @ torch.randn(n, T, 1, dtype=cov.dtype, device=cov.device))[..., 0]
        x = torch.where((info == 0)[:, None], x, 0.0)
        return ((tokens, stop), c), x

    # -- the proposal -------------------------------------------------------------------------
    def embed_obs(self, x) -> torch.Tensor:
        """The guide's LSTM embedding of each series: [B, H] for x [B, 128]."""
        _, (h, _) = self.guide.obs_embedder(x.T[..., None])
        return h[0]

    def propose_discrete(self, x, k):
        """K expressions per series from q_φ(d | x): (tokens, stop) [K, B, max_chars] detached, log q [K, B]."""
        q, b = self.guide, x.shape[0]
        emb = self.embed_obs(x)
        tokens, stop = Sequence.sample_discrete(q.expression_lstm, q.expression_extractor, k * b, self.max_chars, emb.repeat(k, 1))
        d = (tokens.view(k, b, -1), stop.view(k, b, -1))
        return d, self.log_proposal_discrete(x, d, emb)

    def log_proposal_discrete(self, x, d, emb=None):
        """log q_φ(d | x) [*S, B] for d leaves [*S, B, max_chars]."""
        tokens, stop = d
        shape = tokens.shape[:-1]
        emb = (self.embed_obs(x) if emb is None else emb).expand(*shape, -1).reshape(-1, self.guide.hidden)
        tokens, stop = tokens.reshape(-1, self.max_chars), stop.reshape(-1, self.max_chars)
        q = self.guide
        return Sequence.log_prob_discrete(q.expression_lstm, q.expression_extractor, tokens, stop, lengths(stop), emb).view(shape)

    def _continuous_embedding(self, x, tokens, emb=None):
        tokens, stop = tokens
        shape = tokens.shape[:-1]
        obs = (self.embed_obs(x) if emb is None else emb).expand(*shape, -1).reshape(-1, self.guide.hidden)
        tokens, stop = tokens.reshape(-1, self.max_chars), stop.reshape(-1, self.max_chars)
        n = lengths(stop)
        return torch.cat([obs, embed_expression(self.guide.expression_embedder, tokens, n)], -1), count_bases(tokens, n), shape

    def propose_continuous(self, x, d, k):
        """K raw-parameter draws c [K, *S, B, max_chars, 16] (detached) for each d [*S, B, …] from
        q_φ(c | d, x), and log q_φ(c | d, x) [K, *S, B]."""
        q = self.guide
        emb, n, shape = self._continuous_embedding(x, d)
        c = Sequence.sample_continuous(q.gp_params_lstm, q.gp_params_extractor, n.repeat(k), self.max_chars, emb.detach().repeat(k, 1))
        log_q = Sequence.log_prob_continuous(q.gp_params_lstm, q.gp_params_extractor, c, n.repeat(k), emb.repeat(k, 1))
        return c.view(k, *shape, self.max_chars, PARAMS), log_q.view(k, *shape)

    def propose(self, x, k):
        """K joint draws ((tokens, stop), c) [K, B, …] from q_φ(d | x) q_φ(c | d, x), and log q [K, B]."""
        return hybrid_propose(self, x, k)

    def log_proposal(self, x, z):
        """log q_φ(d, c | x) [*S, B] for z leaves [*S, B, …]."""
        d, c = z
        q = self.guide
        emb, n, shape = self._continuous_embedding(x, d)
        log_q_c = Sequence.log_prob_continuous(q.gp_params_lstm, q.gp_params_extractor, c.reshape(-1, self.max_chars, PARAMS), n, emb)
        return self.log_proposal_discrete(x, d) + log_q_c.view(shape)


# -- their pretraining and data --------------------------------------------------------------------
def sample_pcfg_expression(max_depth: int = 20) -> str:
    """One expression from their kernel PCFG (``kernel_pcfg.json``; ``pcfg_util.sample_expression``):
    leftmost derivation, a production drawn per non-terminal; RuntimeError past depth 20, as theirs."""
    probs = torch.tensor(PRODUCTION_PROBS)

    def expand(depth):
        if depth > max_depth:
            raise RuntimeError("Max depth reached")
        production = PRODUCTIONS[torch.distributions.Categorical(probs=probs).sample()]
        return "".join(expand(depth + 1) if s == "K" else s for s in production)

    return expand(0)


def pcfg_batch(batch: int, max_chars: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` PCFG expressions of at most ``max_chars`` tokens (longer ones redrawn): tokens, stop [batch, max_chars]."""
    tokens = torch.zeros(batch, max_chars, dtype=torch.long)
    stop = torch.zeros(batch, max_chars, dtype=torch.long)
    for b in range(batch):
        while True:
            try:
                e = sample_pcfg_expression()
            except RuntimeError:  # theirs propagates this; a cut tree is rare, redraw it
                continue
            if len(e) <= max_chars:
                break
        tokens[b, : len(e)] = torch.tensor([VOCAB.index(ch) for ch in e])
        stop[b, len(e) - 1] = 1
    return tokens, stop


@torch.enable_grad()
def pretrain_prior(model: KernelGrammar, batch: int, iterations: int, progress: bool = False) -> None:
    """Fit p_θ(d)'s LSTM to PCFG expressions: Adam (lr 10⁻³) on −mean log p(d), ``iterations``
    batches of ``batch`` (their ``pretrain_expression_prior``; their ``init`` runs 2000 × 10)."""
    g = model.generative_model
    opt = torch.optim.Adam(list(g.expression_lstm.parameters()) + list(g.expression_extractor.parameters()))
    steps = range(iterations)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="pretraining p(d)")
    for _ in steps:
        tokens, stop = pcfg_batch(batch, model.max_chars)
        opt.zero_grad()
        (-model.log_prior_discrete(tokens, stop).mean()).backward()
        opt.step()


def grammar(data_dim: int = T, seed: int | None = 0, pretrain_iterations: int = 2000, hidden: int = 128, max_chars: int = 10) -> KernelGrammar:
    """The factory ``--model examples/kernel_grammar.py:grammar`` calls: their model and guide built
    from ``seed`` (the caller's random stream is left as it was; ``seed=None`` draws from it), the
    prior over d pretrained on ``pretrain_iterations`` PCFG batches of 10 (their ``init``)."""
    if data_dim != T:
        raise ValueError(f"the time-series model's series have length {T}, got {data_dim}")
    if seed is None:
        model = KernelGrammar(max_chars, hidden)
        pretrain_prior(model, 10, pretrain_iterations)
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return grammar(data_dim, None, pretrain_iterations, hidden, max_chars)


def small(data_dim: int = T) -> KernelGrammar:
    """A fast variant for the docs and tests: hidden 16, the prior pretrained on 50 batches."""
    return grammar(data_dim, seed=0, pretrain_iterations=50, hidden=16)


def synthetic_data(n: int = 200, seed: int = 0, pretrain_iterations: int = 500, hidden: int = 128) -> torch.Tensor:
    """Their ``generate_synthetic_data`` with their settings: seed 0, a model with max_chars 20 and
    hidden 128 whose prior is pretrained on ``pretrain_iterations`` batches of 50, then n series x [n, 128]."""
    torch.manual_seed(seed)
    model = KernelGrammar(max_chars=20, hidden=hidden)
    pretrain_prior(model, 50, pretrain_iterations)
    return model.sample(n)[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--write-data",
        metavar="FILE.npz",
        required=True,
        help="their synthetic series: keys train, valid, test (the same series, as their test set is their training set)",
    )
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--pretrain-iterations", type=int, default=500, help="the data model's prior pretraining (theirs: 500)")
    p.add_argument("--hidden", type=int, default=128)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from pathlib import Path

    from wakesleep.io import atomic_savez

    x = synthetic_data(a.n, pretrain_iterations=a.pretrain_iterations, hidden=a.hidden).numpy()
    Path(a.write_data).parent.mkdir(parents=True, exist_ok=True)
    atomic_savez(Path(a.write_data), {"train": x, "valid": x, "test": x})


if __name__ == "__main__":
    main()
