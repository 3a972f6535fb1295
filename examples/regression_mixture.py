"""A mixture of linear-Gaussian regressions: a discrete latent d and a continuous one c, the model
that hybrid memoised wake-sleep (``--algorithm hmws``) is for, small enough to answer exactly.

    d ~ Categorical(softmax(a)),            d ∈ {0, …, D−1}   (D = 4 components)
    c | d ~ N(μ_d, I_H),                    c ∈ R^H            (H = 2)
    x | d, c ~ N(A_d c + b_d, σ² I_P),      x ∈ R^P            (P = 3, σ = 0.5)

θ = (a, μ, A, b).  Given d the continuous part is conjugate, so p(x | d) = N(A_d μ_d + b_d,
A_d A_dᵀ + σ² I) and p(c | d, x) is Gaussian, both in closed form: :meth:`exact_log_joint_discrete`
gives log p(d, x) for every d, ``exact_log_marginal`` log p(x) (exact evaluation), and
:meth:`use_exact_continuous_proposal` sets q(c | d, x) to the exact p(c | d, x).

The model declares its latents' split as the contract's hybrid members do
(:data:`wakesleep.models.contract.HYBRID`): z = (d, c), d long [*S, B], c [*S, B, H];
q(d | x) = softmax of a small MLP of x, q(c | d, x) = N(M_d x + m_d, L_d L_dᵀ) (one linear map and
one Cholesky factor per component: the exact posterior's family).  It also has ``propose`` and
``log_proposal`` of the pair, so RWS, WS and importance-sampled evaluation take it as it is.

    wakesleep train --algorithm hmws --model examples/regression_mixture.py:mixture --dataset FILE.npz
    python examples/regression_mixture.py --write-data FILE.npz      # a data set from a fixed true model
    python examples/regression_mixture.py                            # train by HMWS, print log p(x) before and after
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn
from torch.distributions import MultivariateNormal

import wakesleep as ws
from wakesleep.models import hybrid_propose

COMPONENTS, CONTINUOUS, DATA, SIGMA = 4, 2, 3, 0.5


class RegressionMixture(nn.Module):
    """The model and its proposal, float32 by default (``.double()`` for the exact tests)."""

    def __init__(self, seed: int = 0, components: int = COMPONENTS, continuous: int = CONTINUOUS, data_dim: int = DATA, sigma: float = SIGMA):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        dd, h, p = components, continuous, data_dim
        self.data_dim, self.sigma = p, sigma
        self.logits = nn.Parameter(torch.zeros(dd))
        self.means = nn.Parameter(2.0 * torch.randn(dd, h, generator=g))
        self.loadings = nn.Parameter(torch.randn(dd, p, h, generator=g))
        self.offsets = nn.Parameter(2.0 * torch.randn(dd, p, generator=g))
        self.discrete_net = nn.Sequential(nn.Linear(p, 16), nn.Tanh(), nn.Linear(16, dd))
        self.q_maps = nn.Parameter(0.1 * torch.randn(dd, h, p, generator=g))  # M_d
        self.q_shifts = nn.Parameter(torch.zeros(dd, h))  # m_d
        self.q_scales = nn.Parameter(torch.zeros(dd, h, h))  # L_d: strict lower part, log of the diagonal

    # ------------------------------------------------------------------ the contract

    def p_parameters(self):
        return [self.logits, self.means, self.loadings, self.offsets]

    def q_parameters(self):
        return list(self.discrete_net.parameters()) + [self.q_maps, self.q_shifts, self.q_scales]

    def sample(self, n: int):
        with torch.no_grad():
            d = torch.multinomial(torch.softmax(self.logits, 0), n, replacement=True)  # [n]
            c = self.means[d] + torch.randn(n, self.means.shape[1], dtype=self.means.dtype, device=d.device)
            x = self._mean_x(d, c) + self.sigma * torch.randn(n, self.data_dim, dtype=c.dtype, device=d.device)
        return (d, c), x

    def log_joint(self, x, z):
        """log p(d, c, x) [*S, B] for z = (d [*S, B], c [*S, B, H]) and x [B, P]."""
        d, c = z
        log_prior_c = -0.5 * ((c - self.means[d]) ** 2).sum(-1) - 0.5 * c.shape[-1] * math.log(2 * math.pi)
        resid = x - self._mean_x(d, c)
        log_lik = -0.5 * (resid**2).sum(-1) / self.sigma**2 - self.data_dim * (math.log(self.sigma) + 0.5 * math.log(2 * math.pi))
        return torch.log_softmax(self.logits, 0)[d] + log_prior_c + log_lik

    def propose_discrete(self, x, k):
        log_q = torch.log_softmax(self.discrete_net(x), -1)  # [B, D]
        with torch.no_grad():
            d = torch.multinomial(log_q.exp(), k, replacement=True).T  # [K, B]
        return d, log_q.gather(1, d.T).T

    def log_proposal_discrete(self, x, d):
        log_q = torch.log_softmax(self.discrete_net(x), -1)  # [B, D]
        return log_q.expand(*d.shape, log_q.shape[-1]).gather(-1, d[..., None])[..., 0]

    def propose_continuous(self, x, d, k):
        q = self._continuous(x, d)  # batch [*S, B]
        with torch.no_grad():
            c = q.sample((k,))  # [K, *S, B, H]
        return c, q.log_prob(c)

    def log_proposal_continuous(self, x, d, c):
        """log q(c | d, x) [*S', *S, B] for d [*S, B] and c [*S', *S, B, H]."""
        return self._continuous(x, d).log_prob(c)

    def propose(self, x, k):
        return hybrid_propose(self, x, k)

    def log_proposal(self, x, z):
        d, c = z
        return self.log_proposal_discrete(x, d) + self.log_proposal_continuous(x, d, c)

    def exact_log_marginal(self, x):
        """log p(x) [B], nats, with ∇θ: a log-sum-exp over d of the closed form."""
        return torch.logsumexp(self.exact_log_joint_discrete(x), 0)

    # ------------------------------------------------------------------ exact answers

    def exact_log_joint_discrete(self, x):
        """log p(d, x) = log π_d + log N(x; A_d μ_d + b_d, A_d A_dᵀ + σ² I) [D, B], with ∇θ."""
        mean = (self.loadings @ self.means[..., None])[..., 0] + self.offsets  # [D, P]
        cov = self.loadings @ self.loadings.transpose(-1, -2) + self.sigma**2 * torch.eye(self.data_dim, dtype=mean.dtype, device=mean.device)
        log_x = MultivariateNormal(mean, covariance_matrix=cov).log_prob(x[:, None, :]).T  # [D, B]
        return torch.log_softmax(self.logits, 0)[:, None] + log_x

    @torch.no_grad()
    def use_exact_continuous_proposal(self) -> None:
        """Set q(c | d, x) to the exact p(c | d, x) = N(Σ_d (μ_d + A_dᵀ(x − b_d)/σ²), Σ_d),
        Σ_d = (I + A_dᵀ A_d / σ²)⁻¹; then every continuous weight w_k = p(d, x) exactly."""
        h = self.means.shape[1]
        eye = torch.eye(h, dtype=self.means.dtype)
        cov = torch.linalg.inv(eye + self.loadings.transpose(-1, -2) @ self.loadings / self.sigma**2)  # [D, H, H]
        self.q_maps.copy_(cov @ self.loadings.transpose(-1, -2) / self.sigma**2)
        self.q_shifts.copy_(
            (cov @ (self.means - (self.loadings.transpose(-1, -2) @ self.offsets[..., None])[..., 0] / self.sigma**2)[..., None])[..., 0]
        )
        chol = torch.linalg.cholesky(cov)
        self.q_scales.copy_(chol.tril(-1) + torch.diag_embed(chol.diagonal(dim1=-2, dim2=-1).log()))

    # ------------------------------------------------------------------ pieces

    def _mean_x(self, d, c):
        return (self.loadings[d] @ c[..., None])[..., 0] + self.offsets[d]

    def _continuous(self, x, d) -> MultivariateNormal:
        loc = (self.q_maps[d] @ x[..., None])[..., 0] + self.q_shifts[d]  # [*S, B, H]: x [B, P] broadcasts
        raw = self.q_scales[d]
        scale = raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())
        return MultivariateNormal(loc, scale_tril=scale, validate_args=False)


def mixture(data_dim: int = DATA) -> RegressionMixture:
    """The factory ``--model examples/regression_mixture.py:mixture`` calls (data of width 3)."""
    if data_dim != DATA:
        raise ValueError(f"the regression mixture has data of width {DATA}, got {data_dim}")
    with torch.random.fork_rng(devices=[]):  # the same start every call, without resetting the caller's random stream
        torch.manual_seed(0)  # the proposal network's initialisation
        return RegressionMixture(seed=0)


def make_data(n: int, seed: int = 0) -> torch.Tensor:
    """n draws x [n, 3] from a fixed true model (its θ from seed 123, π ∝ (1, 2, 3, 4))."""
    torch.manual_seed(seed)
    truth = RegressionMixture(seed=123)
    with torch.no_grad():
        truth.logits.copy_(torch.arange(1.0, COMPONENTS + 1).log())
    return truth.sample(n)[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write-data", metavar="FILE.npz", help="write train/valid/test splits (2000/500/500) and stop")
    p.add_argument("--epochs", type=int, default=5)
    a = p.parse_args(argv)
    if a.write_data:
        import numpy as np

        np.savez(a.write_data, train=make_data(2000, 0).numpy(), valid=make_data(500, 1).numpy(), test=make_data(500, 2).numpy())
        return
    model, train_x, test_x = mixture(), make_data(2000, 0), make_data(500, 2)
    with torch.no_grad():
        before = model.exact_log_marginal(test_x).mean().item()
    ws.train(
        model, ws.HybridMemoisedWakeSleep(k=5, continuous_k=5, memory_size=3), train_x, None, epochs=a.epochs, batch_size=50, lr_p=1e-2, lr_q=1e-2
    )
    with torch.no_grad():
        after = model.exact_log_marginal(test_x).mean().item()
    print(f"test log p(x), exact: {before:.3f} -> {after:.3f} nats")


if __name__ == "__main__":
    main()
