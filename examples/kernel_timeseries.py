"""A CPU-scale sketch of the structured time-series task of Le et al. (ICLR 2022, *Hybrid memoised
wake-sleep*, §5.1): a Gaussian-process kernel is a discrete expression over base kernels, its
hyperparameters are continuous, and a series is one draw from the GP.

    d ~ Categorical(softmax(a))                one of 24 expressions: a base kernel B, B + B' or B × B'
                                               (unordered pairs), B ∈ {W white noise, R squared
                                               exponential, P periodic, L linear}
    c | d ~ N(μ_d, I_6)                        raw hyperparameters, 3 per base-kernel slot
    x | d, c ~ N(0, K_{d,c}(t, t) + σ² I)      t = 32 even points on [0, 1], σ² = 0.01

θ = (a, μ); q(d | x) is an MLP of the series, q(c | d, x) a diagonal Gaussian from an MLP of the
series and d (one-hot).  What is kept from the paper and what is not: the discrete part is a
kernel expression and the continuous part its hyperparameters, scored by the GP's marginal
likelihood (a Cholesky per particle), and HMWS's memory holds expressions; their expressions come
from a PCFG with up to 10 characters and an LSTM prior and proposal, ours are a fixed list of 24
with a categorical prior, and their data are real series (UCR, Mauna Loa, airlines) of length 256,
ours synthetic series of length 32 drawn from a known truth, so that the memory's best expression
can be scored against the one that made the series.  The model is hybrid in the contract's sense
(:data:`wakesleep.models.contract.HYBRID`): z = (d, c), d long [*S, B], c [*S, B, 6].

    python examples/kernel_timeseries.py                  # HMWS against RWS, a few epochs, key: value lines
    python examples/kernel_timeseries.py --write-data FILE.npz
    wakesleep train --algorithm hmws --model examples/kernel_timeseries.py:kernels --dataset FILE.npz
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import torch
from torch import nn

import wakesleep as ws
from wakesleep.models import hybrid_propose

BASES = ("W", "R", "P", "L")
#: (operation, first base, second base): 0 alone, 1 sum, 2 product; the 24 expressions.
EXPRESSIONS = [(0, i, i) for i in range(4)] + [(op, i, j) for op in (1, 2) for i, j in itertools.combinations_with_replacement(range(4), 2)]
T, PARAMS, NOISE = 32, 6, 0.01


def expression_name(d: int) -> str:
    op, i, j = EXPRESSIONS[d]
    return BASES[i] if op == 0 else f"{BASES[i]}{'+*'[op - 1]}{BASES[j]}"


def base_kernels(t: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """The four base kernels' Gram matrices [*, 4, T, T] on the grid t [T] for raw hyperparameters
    raw [*, 3] (scale, lengthscale, period of one slot; each kernel reads what it needs)."""
    s2 = nn.functional.softplus(raw[..., 0])[..., None, None] + 0.01
    ell = torch.exp(raw[..., 1] - 2.0)[..., None, None]
    period = (0.1 + 0.4 * torch.sigmoid(raw[..., 2]))[..., None, None]
    diff = t[:, None] - t[None, :]
    eye = torch.eye(t.shape[0], dtype=t.dtype, device=t.device)
    white = s2 * eye
    se = s2 * torch.exp(-0.5 * diff**2 / ell**2)
    per = s2 * torch.exp(-2.0 * torch.sin(math.pi * diff.abs() / period) ** 2 / (4 * ell) ** 2)
    lin = s2 * (t[:, None] * t[None, :])
    return torch.stack(torch.broadcast_tensors(white, se, per, lin), -3)


class KernelTimeseries(nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        n = len(EXPRESSIONS)
        self.data_dim = T
        self.register_buffer("t", torch.linspace(0.0, 1.0, T))
        self.register_buffer("table", torch.tensor(EXPRESSIONS))  # [24, 3]
        self.logits = nn.Parameter(torch.zeros(n))
        self.means = nn.Parameter(torch.zeros(n, PARAMS))
        self.discrete_net = nn.Sequential(nn.Linear(T, hidden), nn.Tanh(), nn.Linear(hidden, n))
        self.continuous_net = nn.Sequential(nn.Linear(T + n, hidden), nn.Tanh(), nn.Linear(hidden, 2 * PARAMS))

    def p_parameters(self):
        return [self.logits, self.means]

    def q_parameters(self):
        return list(self.discrete_net.parameters()) + list(self.continuous_net.parameters())

    def gram(self, d, c):
        """K_{d,c}(t, t) + σ² I [*S, B, T, T] for d [*S, B] and c [*S, B, 6]."""
        op, i, j = self.table[d].unbind(-1)
        k1 = base_kernels(self.t, c[..., :3]).gather(-3, i[..., None, None, None].expand(*i.shape, 1, T, T))[..., 0, :, :]
        k2 = base_kernels(self.t, c[..., 3:]).gather(-3, j[..., None, None, None].expand(*j.shape, 1, T, T))[..., 0, :, :]
        op = op[..., None, None]
        k = torch.where(op == 0, k1, torch.where(op == 1, k1 + k2, k1 * k2))
        return k + NOISE * torch.eye(T, dtype=k.dtype, device=k.device)

    def sample(self, n):
        with torch.no_grad():
            d = torch.multinomial(torch.softmax(self.logits, 0), n, replacement=True)
            c = self.means[d] + torch.randn(n, PARAMS, dtype=self.means.dtype, device=d.device)
            x = (torch.linalg.cholesky(self.gram(d, c)) @ torch.randn(n, T, 1, dtype=c.dtype, device=d.device))[..., 0]
        return (d, c), x

    def log_joint(self, x, z):
        d, c = z
        chol = torch.linalg.cholesky(self.gram(d, c))  # [*S, B, T, T]
        white = torch.linalg.solve_triangular(chol, x.expand(*chol.shape[:-1])[..., None], upper=False)[..., 0]
        log_lik = -0.5 * (white**2).sum(-1) - chol.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * T * math.log(2 * math.pi)
        log_prior_c = -0.5 * ((c - self.means[d]) ** 2).sum(-1) - 0.5 * PARAMS * math.log(2 * math.pi)
        return torch.log_softmax(self.logits, 0)[d] + log_prior_c + log_lik

    def propose_discrete(self, x, k):
        log_q = torch.log_softmax(self.discrete_net(x), -1)  # [B, 24]
        with torch.no_grad():
            d = torch.multinomial(log_q.exp(), k, replacement=True).T
        return d, log_q.gather(1, d.T).T

    def log_proposal_discrete(self, x, d):
        log_q = torch.log_softmax(self.discrete_net(x), -1)
        return log_q.expand(*d.shape, log_q.shape[-1]).gather(-1, d[..., None])[..., 0]

    def _continuous(self, x, d):
        inputs = torch.cat([x.expand(*d.shape, T), nn.functional.one_hot(d, len(EXPRESSIONS)).to(x.dtype)], -1)
        loc, log_scale = self.continuous_net(inputs).chunk(2, -1)
        return torch.distributions.Independent(torch.distributions.Normal(loc, log_scale.clamp(-5, 3).exp()), 1)

    def propose_continuous(self, x, d, k):
        q = self._continuous(x, d)
        with torch.no_grad():
            c = q.sample((k,))
        return c, q.log_prob(c)

    def propose(self, x, k):
        return hybrid_propose(self, x, k)

    def log_proposal(self, x, z):
        d, c = z
        return self.log_proposal_discrete(x, d) + self._continuous(x, d).log_prob(c)


def kernels(data_dim: int = T) -> KernelTimeseries:
    """The factory ``--model examples/kernel_timeseries.py:kernels`` calls (series of length 32)."""
    if data_dim != T:
        raise ValueError(f"the kernel model's series have length {T}, got {data_dim}")
    with torch.random.fork_rng(devices=[]):  # the same start every call, without resetting the caller's random stream
        torch.manual_seed(0)
        return KernelTimeseries()


def truth() -> KernelTimeseries:
    """The data's model: six expressions (R, P, L, R+P, R*P, P+L) equally likely, μ = 0."""
    model = kernels()
    favoured = [EXPRESSIONS.index(e) for e in [(0, 1, 1), (0, 2, 2), (0, 3, 3), (1, 1, 2), (2, 1, 2), (1, 2, 3)]]
    with torch.no_grad():
        model.logits.fill_(-30.0)
        model.logits[favoured] = 0.0
    return model


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n series x [n, 32] from :func:`truth`, and the expression d [n] that made each."""
    torch.manual_seed(seed)
    (d, _), x = truth().sample(n)
    return x, d


def memory_accuracy(est, d_true: torch.Tensor) -> float:
    """Share of training series whose memory's first (best-scored) expression is the one that made it."""
    return (est.memory_filled[:, 0] & (est.memory_z0[:, 0] == d_true)).double().mean().item()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="training series")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--write-data", metavar="FILE.npz")
    a = p.parse_args(argv)
    if a.write_data:
        import numpy as np

        np.savez(a.write_data, train=make_data(a.n, 0)[0].numpy(), valid=make_data(50, 1)[0].numpy(), test=make_data(50, 2)[0].numpy())
        return {}
    x, d_true = make_data(a.n, 0)
    test = make_data(50, 2)[0]
    out = {}
    for name, est in (("hmws", ws.HybridMemoisedWakeSleep(k=5, continuous_k=5, memory_size=5)), ("rws", ws.RWS(k=50))):
        model = kernels()
        t0 = time.process_time()
        ws.train(model, est, x, None, epochs=a.epochs, batch_size=20, lr_p=1e-2, lr_q=3e-3, progress=False, seed=0)
        out[f"{name}_train_seconds"] = time.process_time() - t0
        out[f"{name}_test_log_likelihood"] = ws.log_likelihood(model, test, k=200, progress=False).mean
        if name == "hmws":
            out["hmws_memory_best_is_true_expression"] = memory_accuracy(est, d_true)
    for key, value in out.items():
        print(f"{key}: {value:.3f}")
    return out


if __name__ == "__main__":
    main()
