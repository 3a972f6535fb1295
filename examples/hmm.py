"""A hidden Markov model with Gaussian emissions, as a user's own model written against the model
contract (:mod:`wakesleep.models.contract`), trained by reweighted wake-sleep (Bornschein & Bengio
2015) with a recurrent proposal.

    z_0 ~ Cat(π),   z_t | z_{t-1} ~ Cat(A[z_{t-1}]),   x_t | z_t ~ N(μ_{z_t}, σ²),   t = 0..T-1,

with 3 states.  Learned: the initial distribution π, the transition matrix A (each as logits,
row-wise softmax) and the emission means μ; the emission scale σ is **fixed** (a buffer, 1 by
default), so that the means carry the emissions' whole fit and the likelihood stays bounded.
Data x [B, T] (the data width D is T); latents z are integer state sequences, a long tensor
[*S, B, T] (S the sample dimensions: [K, B, T] for K particles per sequence).

The proposal q_φ(z | x) = Π_t q(z_t | z_{t-1}, x) is autoregressive: a bidirectional GRU reads x,
and the logits of z_t are a linear read-out of its output at t plus a learned row for the previous
state (a start row at t = 0).  The exact posterior has this form,
log p(z_t | z_{t-1}, x) = log A[z_{t-1}, z_t] + log β_t(z_t) + const with β_t the backward
message of x_{t:T} (Rabiner 1989, eq. 23–25), so the family can hold it as far as the GRU's
backward pass can carry β_t.

log p_θ(x) is exact by the forward algorithm (Rabiner 1989, "A tutorial on hidden Markov models
and selected applications in speech recognition", Proc. IEEE 77(2), §III.A, eq. 19–21), in log
space and differentiable in θ; :meth:`HMM.enumerate_latents` lists all 3^T sequences for small T.

Run ``python examples/hmm.py`` to train by RWS from a perturbed start and print, as ``key: value``
lines, the importance-sampled log-likelihood of the learned model against the exact ones of the
true and the learned parameters.  ``wakesleep train --model examples/hmm.py:hmm`` builds the
model of :func:`hmm` (T = the data's width).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import Tensor, nn

import wakesleep as ws

STATES = 3
#: Largest number of sequences :meth:`HMM.enumerate_latents` lists (the library's enumeration limit).
MAX_ENUMERATED = 2**24


class HMM(nn.Module):
    """A 3-state Gaussian-emission HMM over sequences of length T with a recurrent proposal.

    Args:
        length: T, the sequence length (= the data width D), ≥ 1.
        sigma: the fixed emission standard deviation σ > 0.
        hidden: GRU units per direction of the proposal.
        means: initial emission means [3] (default −1, 0, 1: distinct, so that learning is not
            stuck at the symmetric point); π and A start uniform.

    Raises:
        ValueError: length < 1, sigma ≤ 0, hidden < 1 or means not of shape [3].
    """

    def __init__(self, length: int = 20, sigma: float = 1.0, hidden: int = 16, means=None):
        super().__init__()
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length (T) must be an integer >= 1, got {length!r}")
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden!r}")
        self.length = self.data_dim = length
        self.init_logits = nn.Parameter(torch.zeros(STATES))
        self.trans_logits = nn.Parameter(torch.zeros(STATES, STATES))  # row i: logits of z_t given z_{t-1} = i
        means = torch.linspace(-1.0, 1.0, STATES) if means is None else torch.as_tensor(means, dtype=torch.get_default_dtype()).clone()
        if means.shape != (STATES,):
            raise ValueError(f"means must be {STATES} numbers, got shape {list(means.shape)}")
        self.means = nn.Parameter(means)
        self.register_buffer("log_sigma", torch.tensor(math.log(sigma)))
        # proposal
        self.rnn = nn.GRU(1, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, STATES)
        self.prev_logits = nn.Parameter(torch.zeros(STATES + 1, STATES))  # row STATES: the start (t = 0)

    # ------------------------------------------------------------ generative model
    def p_parameters(self) -> list[nn.Parameter]:
        return [self.init_logits, self.trans_logits, self.means]

    def q_parameters(self) -> list[nn.Parameter]:
        return [*self.rnn.parameters(), *self.head.parameters(), self.prev_logits]

    def _emission(self, x: Tensor) -> Tensor:
        """log N(x_t; μ_s, σ²) for every state s: [B, T, 3] for x [B, T], nats."""
        return -0.5 * ((x[..., None] - self.means) / self.log_sigma.exp()) ** 2 - self.log_sigma - 0.5 * math.log(2 * math.pi)

    def log_prior(self, z: Tensor) -> Tensor:
        """log p_θ(z) for z [*S, T] (integers in 0..2), [*S], nats."""
        log_a = torch.log_softmax(self.trans_logits, -1)
        return torch.log_softmax(self.init_logits, 0)[z[..., 0]] + log_a[z[..., :-1], z[..., 1:]].sum(-1)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x, z) for x [B, T] and z [*S, B, T], [*S, B], nats."""
        sigma = self.log_sigma.exp()
        log_lik = (-0.5 * ((x - self.means[z]) / sigma) ** 2).sum(-1) - x.shape[-1] * (self.log_sigma + 0.5 * math.log(2 * math.pi))
        return self.log_prior(z) + log_lik

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """n ancestral draws: z [n, T] (long), x [n, T]; no gradient."""
        with torch.no_grad():
            trans = torch.softmax(self.trans_logits, -1)
            z = torch.empty(n, self.length, dtype=torch.long, device=self.means.device)
            z[:, 0] = torch.multinomial(torch.softmax(self.init_logits, 0), n, replacement=True)
            for t in range(1, self.length):
                z[:, t] = torch.multinomial(trans[z[:, t - 1]], 1)[:, 0]
            return z, self.means[z] + self.log_sigma.exp() * torch.randn(z.shape, dtype=self.means.dtype, device=z.device)

    def exact_log_marginal(self, x: Tensor) -> Tensor:
        """log p_θ(x) [B] for x [B, T] by the forward algorithm (Rabiner 1989, eq. 19–21), nats.

        α_0(j) = log π_j + log e_0(j),  α_t(j) = logsumexp_i(α_{t-1}(i) + log A_ij) + log e_t(j),
        log p(x) = logsumexp_j α_{T-1}(j); O(T·3²) per sequence, differentiable in θ.

        Raises:
            ValueError: x not [B, T].
        """
        if x.ndim != 2 or x.shape[1] != self.length:
            raise ValueError(f"x must be [B, {self.length}], got shape {list(x.shape)}")
        log_e = self._emission(x)
        log_a = torch.log_softmax(self.trans_logits, -1)
        alpha = torch.log_softmax(self.init_logits, 0) + log_e[:, 0]
        for t in range(1, self.length):
            alpha = torch.logsumexp(alpha[:, :, None] + log_a, 1) + log_e[:, t]
        return torch.logsumexp(alpha, -1)

    def enumerate_latents(self) -> Tensor:
        """Every state sequence once: [3^T, T] (long), in lexicographic order.

        Raises:
            ValueError: 3^T > 2^24 (T ≥ 16): use :meth:`exact_log_marginal` or importance sampling.
        """
        count = STATES**self.length
        if count > MAX_ENUMERATED:
            raise ValueError(
                f"an HMM with T={self.length} has 3^{self.length} = {count} state sequences; "
                f"enumeration is limited to 2^24 (T <= 15): use exact_log_marginal (the forward algorithm)"
            )
        idx = torch.arange(count, device=self.means.device)
        powers = STATES ** torch.arange(self.length - 1, -1, -1, device=idx.device)
        return (idx[:, None] // powers) % STATES

    # ------------------------------------------------------------ proposal
    def proposal_table(self, x: Tensor) -> Tensor:
        """log q_φ(z_t = j | z_{t-1} = i, x) as a table [B, T, 4, 3] for x [B, T] (row i = 3 is the
        start, used at t = 0), nats, differentiable in φ."""
        out, _ = self.rnn(x[..., None])  # [B, T, 2h]: the forward and backward passes over x
        return torch.log_softmax(self.head(out)[:, :, None, :] + self.prev_logits, -1)

    @staticmethod
    def _previous(z: Tensor) -> Tensor:
        """z_{t-1} for every t, with the start row (3) at t = 0: [*S, B, T]."""
        return torch.cat([torch.full_like(z[..., :1], STATES), z[..., :-1]], -1)

    def _log_q(self, table: Tensor, z: Tensor) -> Tensor:
        b, t = table.shape[:2]
        zb = z.reshape(-1, b, t)
        rows = table[torch.arange(b, device=z.device)[:, None], torch.arange(t, device=z.device), self._previous(zb)]  # [N, B, T, 3]
        return rows.gather(-1, zb[..., None])[..., 0].sum(-1).reshape(z.shape[:-1])

    def log_proposal(self, x: Tensor, z: Tensor) -> Tensor:
        """log q_φ(z | x) for x [B, T] and z [*S, B, T], [*S, B], nats."""
        return self._log_q(self.proposal_table(x), z)

    def propose(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """K sequences z ~ q_φ(z | x) per datapoint: z [K, B, T] (long, no gradient) and log_q [K, B]
        (differentiable in φ)."""
        table = self.proposal_table(x)
        b, t = table.shape[:2]
        with torch.no_grad():
            z = torch.empty(k, b, t, dtype=torch.long, device=x.device)
            prev = torch.full((k, b), STATES, dtype=torch.long, device=x.device)
            rows = torch.arange(b, device=x.device)
            for s in range(t):
                logits = table[rows, s, prev]  # [K, B, 3]
                # Gumbel-max: argmax(logits + G) with G = −log E, E ~ Exp(1), is a draw from softmax(logits).
                prev = z[..., s] = (logits - torch.empty_like(logits).exponential_().log()).argmax(-1)
        return z, self._log_q(table, z)


# ------------------------------------------------------------------ the experiment


def true_hmm(length: int = 20) -> HMM:
    """The true HMM: means (−3, 0, 3) with σ = 1 (well separated), π = (0.6, 0.3, 0.1), and sticky
    transitions (0.8 on the diagonal)."""
    model = HMM(length)
    with torch.no_grad():
        model.init_logits.copy_(torch.tensor([0.6, 0.3, 0.1]).log())
        model.trans_logits.copy_(torch.tensor([[0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]]).log())
        model.means.copy_(torch.tensor([-3.0, 0.0, 3.0]))
    return model


def make_data(n: int, seed: int = 0, length: int = 20) -> Tensor:
    """n sequences x [n, T] from :func:`true_hmm`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return true_hmm(length).sample(n)[1]


def perturbed(model: HMM, scale: float = 1.0, seed: int = 0) -> HMM:
    """``model`` with N(0, scale²) noise added to every logit of π and A and to every mean (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.p_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
    return model


def hmm(data_dim: int = 20) -> HMM:
    """The factory of ``--model examples/hmm.py:hmm``: an HMM over sequences of length T = data_dim."""
    return HMM(data_dim)


def parameters_of(model: HMM) -> dict:
    """π [3], A [3, 3] and μ [3] as tensors, the states ordered by their means (the model may learn
    them in another order: the likelihood does not change when the states are relabelled)."""
    with torch.no_grad():
        order = torch.argsort(model.means)
        return {
            "means": model.means[order],
            "init": torch.softmax(model.init_logits, 0)[order],
            "trans": torch.softmax(model.trans_logits, -1)[order][:, order],
        }


def parameter_errors(model: HMM, truth: HMM) -> dict:
    """Largest absolute errors of μ, π and A against ``truth`` (states matched by sorted means)."""
    a, b = parameters_of(model), parameters_of(truth)
    return {f"{k}_max_error": (a[k] - b[k]).abs().max().item() for k in ("means", "init", "trans")}


def main(argv=None) -> dict:
    """Train by RWS (K = 20, wake-φ) from the truth perturbed by N(0, 1) noise on every logit and
    mean (:func:`perturbed`), then print and return: the importance-sampled test log-likelihood of
    the learned model (``log_likelihood``, its s.e. over sequences), the exact ones (forward
    algorithm) of the learned, true and starting parameters, the paired per-sequence difference
    importance − exact, and the largest errors of μ, π and A.  All in nats.  ``argv``: the
    command-line arguments (default ``sys.argv[1:]``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="training sequences")
    p.add_argument("--n-test", type=int, default=500, help="test sequences")
    p.add_argument("--length", type=int, default=20, help="T, the sequence length")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--k", type=int, default=20, help="RWS particles")
    p.add_argument("--eval-k", type=int, default=1000, help="particles of the importance-sampled log-likelihood")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--write-data",
        default=None,
        metavar="FILE.npz",
        help="write train/valid/test splits (--n, 1000, --n-test) for `wakesleep train --dataset FILE.npz` and stop",
    )
    a = p.parse_args(argv)
    if a.write_data:
        from pathlib import Path

        import numpy as np

        Path(a.write_data).parent.mkdir(parents=True, exist_ok=True)

        splits = {"train": (a.n, a.seed), "valid": (1000, a.seed + 2), "test": (a.n_test, a.seed + 1)}
        np.savez(a.write_data, **{k: make_data(n, s, length=a.length).numpy() for k, (n, s) in splits.items()})
        print(f"data: {a.write_data}")
        return {}
    start_time = time.perf_counter()
    torch.manual_seed(a.seed)
    x, x_valid, x_test = (make_data(n, a.seed + i, a.length) for i, n in enumerate((a.n, min(a.n, 500), a.n_test)))
    truth = true_hmm(a.length)
    model = perturbed(true_hmm(a.length), 1.0, a.seed)
    start = parameter_errors(model, truth)
    ll_start = ws.exact_log_likelihood(model, x_test).mean
    ws.train(model, ws.RWS(k=a.k, q_update="wake"), x, x_valid, epochs=a.epochs, lr_p=1e-2, lr_q=1e-2, patience=None, progress=False, seed=a.seed)
    learned = parameter_errors(model, truth)
    ll = ws.log_likelihood(model, x_test, k=a.eval_k, seed=a.seed)
    with torch.no_grad():  # per sequence, paired with the exact value: the proposal's own error
        gap = ws.evaluate.mean_stderr(ws.evaluate.importance_log_marginal(model, x_test, a.eval_k) - model.exact_log_marginal(x_test))
    out = {
        "log_likelihood": ll.mean,
        "log_likelihood_stderr": ll.stderr,
        "exact_log_likelihood": ws.exact_log_likelihood(model, x_test).mean,
        "exact_log_likelihood_true": ws.exact_log_likelihood(truth, x_test).mean,
        "exact_log_likelihood_start": ll_start,
        "importance_minus_exact": gap.mean,
        "importance_minus_exact_stderr": gap.stderr,
        **{f"{k}_start": v for k, v in start.items()},
        **learned,
        "means": parameters_of(model)["means"].tolist(),
        "means_true": parameters_of(truth)["means"].tolist(),
        "seconds": time.perf_counter() - start_time,
    }
    for key, value in out.items():
        print(f"{key}: {', '.join(f'{v:.4f}' for v in value) if isinstance(value, list) else f'{value:.4f}'}")
    return out


if __name__ == "__main__":
    main()
