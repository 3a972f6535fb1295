"""A latent-variable neural process (Garnelo, Schwarz, Rosenbaum, Viola, Rezende, Eslami & Teh 2018,
"Neural processes", ICML workshop) on sine functions, its generative network trained by amortised
learning by wake-sleep (ALWS; Wenliang, Moskovitz, Kanagawa & Sahani 2020, ICML; its neural-process
experiment, ALGORITHMS.md §7.8) in place of the NP's ELBO, against the same network trained by the
ELBO.

Data: functions f(x) = a sin(x − b) with a ~ U(0.1, 5), b ~ U(0, π) (the ranges of the NP
literature's sine task), each observed at n points x_i ~ U(−π, π) with y_i = f(x_i) + ε_i,
ε_i ~ N(0, 0.1²).  One function's observation set is a datapoint, flattened to
[x_1..x_n, y_1..y_n] (D = 2n).

Two setups (``--setup``, :data:`SETUPS`): ``np`` (the default, above: n = 20 points, contexts 3
and 10, N = 1000 sleep samples, Adam 1e-3) and ``alws-code``, the ALWS authors' code's
(kevin-w-li/al-ws ``run_np.py`` as ALGORITHMS.md §9 reads it): a ~ U(−0.5, 1), b ~ U(−0.5, 0.5),
4 context and 4 target points (n = 8, context 4), N = 5000 sleep samples, Adam 1e-4 for θ and φ.
The x range, the noise, the networks, the kernel's rate and the ELBO's random context size are
ours in both (ALGORITHMS.md does not give the code's); options given on the command line win over
the setup's.

Model (z ∈ R^d, a float tensor [*S, B, d]):

    z ~ N(μ₀, diag s₀²)  (learned: the prior),   x_i ~ U(−π, π)  (fixed),
    y_i | x_i, z ~ N(g_θ(x_i, z), σ_y²),  g an MLP (1 + d → 64 → 64 → 1, tanh), σ_y = 0.01 + softplus(ρ) learned;

and the NP encoder q_φ(z | C) = N(μ_φ(r), diag σ_φ(r)²), r = mean_{i∈C} h_φ(x_i, y_i) (h an MLP
2 → 64 → 64 → 64; μ, log σ from an MLP of r): the mean-aggregated encoder of Garnelo et al.

Two trainings of the same network:

- **NP ELBO** (:class:`NPELBO`, Garnelo et al. eq. 5): per batch a context size m ~ U{3, …, n−1};
  the context is the first m points (the points are iid, so a random subset), the target all n;
  loss = −mean_b [E_{q(z|T)} Σ_{i∈T} log p(y_i | x_i, z) − KL(q(z|T) ‖ q(z|C))] with one
  reparameterised z.  The conditional prior is q(z | C); μ₀, s₀ are not used.
- **ALWS** (generic target t = log p_θ(data, z), since the likelihood's natural parameter depends
  on the random x_i, not on z alone) trains θ = (μ₀, s₀, g, ρ) by kernel ridge regression on
  whole observation sets, with a **set kernel**: a Gaussian kernel on the mean embedding
  φ(set) = mean_i h_κ(x_i, y_i) of a learned per-point network h_κ (2 → 64 → 32; :class:`SetFeatures`),
  learned by ALWS's kernel step.  The distance between mean embeddings adds (not multiplies, the
  defect ALGORITHMS.md §4 notes in the original set kernel) the per-point features' contributions.
  Afterwards q_φ is trained by sleep (:func:`train_sleep_proposal`, ALGORITHMS.md §4 last item):
  z ~ p_θ(z), a function's n points, a random context size m ~ U{1, …, n}; maximise log q_φ(z | C).

Metric (:func:`predictive_log_likelihood`, the same for both): for a held-out function with
context C (m_c points) and target T (the other n − m_c points),

    p̂(y_T | x_T, C) = (1/K) Σ_k p_θ(y_T | x_T, z_k),   z_k ~ q_φ(z | C)  iid,

an unbiased estimate of the predictive density p(y_T | x_T, C) = E_{q_φ(z|C)} p_θ(y_T | x_T, z) of
the network whose conditional prior given the context is q_φ(z | C) (for the ELBO model that is the
NP's own predictive; for ALWS, q_φ is the sleep-trained approximation of p_θ(z | C)).  Reported:
mean over functions of log p̂ / |T| (nats per target point; by Jensen a lower bound in expectation of
log p(y_T | x_T, C) / |T|), with the standard error over functions.  For reference, the same
quantity for the *true* process (z = (a, b) with its uniform prior, known noise) by self-normalised
importance sampling from the prior (``oracle``, consistent, bias O(1/K)); and with ``--prior-k``,
the ALWS model's own Bayesian predictive by the same self-normalised estimator with draws from its
learned prior (:func:`prior_predictive`), which involves no proposal: it separates a weak generative
model from a weak sleep-trained q(z | C).

Run ``python examples/neural_process.py`` to train both, evaluate and write ``neural_process.png``
(context points, truth and decoded functions for z ~ q(z | C), per model) in ``--out``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

import wakesleep as ws
from wakesleep.estimators.base import Estimator, EstimatorOutput
from wakesleep.importance import log_mean_exp
from wakesleep.kernels import GaussianKernel, KernelRidge
from wakesleep.lab.tables import key_lines
from wakesleep.models.contract import TRAINING_WITH_PROPOSAL

#: Ranges of the sine task: a ~ U(A_RANGE), b ~ U(B_RANGE), x ~ U(X_RANGE), noise s.d. NOISE.
A_RANGE, B_RANGE, X_RANGE, NOISE = (0.1, 5.0), (0.0, math.pi), (-math.pi, math.pi), 0.1
#: ``--setup``: the ranges of a and b and the defaults each setup gives (module docstring).
SETUPS = {
    "np": {"a_range": A_RANGE, "b_range": B_RANGE, "n_points": 20, "contexts": [3, 10], "sleep_samples": 1000, "lr": 1e-3},
    "alws-code": {"a_range": (-0.5, 1.0), "b_range": (-0.5, 0.5), "n_points": 8, "contexts": [4], "sleep_samples": 5000, "lr": 1e-4},
}


def sine_data(
    n_functions: int, n_points: int, seed: int = 0, a_range: tuple[float, float] = A_RANGE, b_range: tuple[float, float] = B_RANGE
) -> tuple[Tensor, Tensor]:
    """Observation sets of n_functions sine functions (module docstring), a ~ U(a_range),
    b ~ U(b_range): (data [F, 2n] = [x_1..x_n, y_1..y_n], params [F, 2] = (a, b)), float32, from a
    generator seeded by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    a = a_range[0] + (a_range[1] - a_range[0]) * torch.rand(n_functions, 1, generator=g)
    b = b_range[0] + (b_range[1] - b_range[0]) * torch.rand(n_functions, 1, generator=g)
    x = X_RANGE[0] + (X_RANGE[1] - X_RANGE[0]) * torch.rand(n_functions, n_points, generator=g)
    y = a * torch.sin(x - b) + NOISE * torch.randn(n_functions, n_points, generator=g)
    return torch.cat([x, y], dim=1), torch.cat([a, b], dim=1)


def split(data: Tensor) -> tuple[Tensor, Tensor]:
    """(x [..., n], y [..., n]) of flattened observation sets data [..., 2n].

    Raises:
        ValueError: an odd last dimension."""
    if data.shape[-1] % 2:
        raise ValueError(f"observation sets are [x_1..x_n, y_1..y_n]: the last dimension must be even, got {data.shape[-1]}")
    return data.chunk(2, dim=-1)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of the given widths with tanh between them."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class SetFeatures(nn.Module):
    """φ(set) = mean_i h(x_i, y_i) for flattened observation sets [N, 2n] -> [N, out_dim]: the
    mean embedding of a per-point network h (2 → hidden → out_dim), invariant to the order of the
    points.  With a Gaussian kernel on φ this is the set kernel of ALWS's neural-process kernel,
    with ‖φ(A) − φ(B)‖² the squared MMD between the two sets under the linear kernel on h."""

    def __init__(self, hidden: int = 64, out_dim: int = 32):
        super().__init__()
        self.out_dim = out_dim
        self.point = mlp([2, hidden, out_dim])

    def forward(self, data: Tensor) -> Tensor:
        x, y = split(data)
        return self.point(torch.stack([x, y], dim=-1)).mean(-2)


class NeuralProcess(nn.Module):
    """The latent-variable NP of the module docstring, on the model contract.

    Args:
        n_points: n, points per observation set (D = 2n); z_dim: d; hidden: decoder/encoder width;
        r_dim: width of the encoder's per-point representation.

    Raises:
        ValueError: non-positive sizes.
    """

    reparameterizable = True

    def __init__(self, n_points: int = 20, z_dim: int = 4, hidden: int = 64, r_dim: int = 64):
        super().__init__()
        if min(n_points, z_dim, hidden, r_dim) < 1:
            raise ValueError(f"sizes must be >= 1, got n_points={n_points}, z_dim={z_dim}, hidden={hidden}, r_dim={r_dim}")
        self.n_points, self.z_dim, self.data_dim = n_points, z_dim, 2 * n_points
        self.prior_mu = nn.Parameter(torch.zeros(z_dim))
        self.prior_log_s = nn.Parameter(torch.zeros(z_dim))
        self.decoder = mlp([1 + z_dim, hidden, hidden, 1])
        self.noise_raw = nn.Parameter(torch.tensor(0.0))
        self.point_encoder = mlp([2, hidden, hidden, r_dim])
        self.latent_encoder = mlp([r_dim, hidden, 2 * z_dim])

    # ---- generative network θ
    def p_parameters(self) -> list[nn.Parameter]:
        return [self.prior_mu, self.prior_log_s, self.noise_raw, *self.decoder.parameters()]

    def q_parameters(self) -> list[nn.Parameter]:
        return [*self.point_encoder.parameters(), *self.latent_encoder.parameters()]

    @property
    def noise(self) -> Tensor:
        """σ_y = 0.01 + softplus(ρ)."""
        return 0.01 + F.softplus(self.noise_raw)

    def prior(self) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.prior_mu, self.prior_log_s.exp())

    def decode(self, x: Tensor, z: Tensor) -> Tensor:
        """g(x_i, z): x [B, n] (or [*S, B, n]) and z [*S, B, d] -> means [*S, B, n]."""
        lead = torch.broadcast_shapes(z.shape[:-1], x.shape[:-1])
        n = x.shape[-1]
        zz = z.unsqueeze(-2).expand(*lead, n, self.z_dim)
        xx = x.expand(*lead, n).unsqueeze(-1)
        return self.decoder(torch.cat([xx, zz], dim=-1)).squeeze(-1)

    def point_log_likelihood(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        """log N(y_i; g(x_i, z), σ_y²) for x, y [B, n] and z [*S, B, d]: [*S, B, n]."""
        return torch.distributions.Normal(self.decode(x, z), self.noise).log_prob(y)

    def log_prior(self, z: Tensor) -> Tensor:
        """log N(z; μ₀, diag s₀²) for z [*S, d]: [*S]."""
        return self.prior().log_prob(z).sum(-1)

    def log_joint(self, data: Tensor, z: Tensor) -> Tensor:
        """log p_θ(data, z) = log p(z) + Σ_i [log p(y_i | x_i, z) − log 2π] for data [B, 2n] and
        z [*S, B, d]: [*S, B], nats."""
        x, y = split(data)
        return self.log_prior(z) + self.point_log_likelihood(x, y, z).sum(-1) - x.shape[-1] * math.log(X_RANGE[1] - X_RANGE[0])

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """n functions: z [n, d], data [n, 2n_points]; no gradient."""
        with torch.no_grad():
            z = self.prior().sample((n,))
            x = X_RANGE[0] + (X_RANGE[1] - X_RANGE[0]) * torch.rand(n, self.n_points, dtype=z.dtype, device=z.device)
            y = self.decode(x, z) + self.noise * torch.randn_like(x)
            return z, torch.cat([x, y], dim=1)

    # ---- the NP encoder φ: q(z | set), mean-aggregated
    def encode(self, x: Tensor, y: Tensor, mask: Tensor | None = None) -> torch.distributions.Normal:
        """q_φ(z | {(x_i, y_i): mask_i}) for x, y [B, m] and an optional boolean mask [B, m]
        (at least one point per row): Normal with loc and scale [B, d]."""
        h = self.point_encoder(torch.stack([x, y], dim=-1))  # [B, m, r]
        if mask is None:
            r = h.mean(-2)
        else:
            w = mask.to(h.dtype).unsqueeze(-1)
            r = (h * w).sum(-2) / w.sum(-2).clamp_min(1.0)
        mu, log_s = self.latent_encoder(r).chunk(2, dim=-1)
        return torch.distributions.Normal(mu, 0.01 + F.softplus(log_s))

    def propose(self, data: Tensor, k: int, reparameterize: bool = False) -> tuple[Tensor, Tensor]:
        """K particles z [K, B, d] from q_φ(z | all n points) and log q [K, B]."""
        q = self.encode(*split(data))
        z = q.rsample((k,)) if reparameterize else q.sample((k,))
        return z, q.log_prob(z).sum(-1)

    def log_proposal(self, data: Tensor, z: Tensor) -> Tensor:
        """log q_φ(z | all points) for data [B, 2n], z [*S, B, d]: [*S, B]."""
        return self.encode(*split(data)).log_prob(z).sum(-1)


class NPELBO(Estimator):
    """The NP's ELBO with a context/target split (Garnelo et al. 2018; module docstring): one
    context size m ~ U{3, …, n−1} per batch (the first m points), target all n points.

    Metric ``objective``: the ELBO per function (nats).

    Raises:
        ValueError: on use, observation sets of fewer than 4 points.
    """

    name = "np_elbo"

    def __init__(self, seed: int = 0):
        super().__init__()
        self._g = torch.Generator().manual_seed(seed)

    def requires(self, model) -> tuple[str, ...]:
        return TRAINING_WITH_PROPOSAL

    def forward(self, model, data: Tensor) -> EstimatorOutput:
        x, y = split(data)
        n = x.shape[-1]
        if n < 4:
            raise ValueError(f"the NP ELBO needs at least 4 points per set (context 3..n-1), got {n}")
        m = int(torch.randint(3, n, (1,), generator=self._g))
        q_t, q_c = model.encode(x, y), model.encode(x[:, :m], y[:, :m])
        z = q_t.rsample()
        ll = model.point_log_likelihood(x, y, z).sum(-1)
        kl = torch.distributions.kl_divergence(q_t, q_c).sum(-1)
        elbo = (ll - kl).mean()
        return EstimatorOutput(-elbo, {"objective": elbo.detach()})


def train_sleep_proposal(
    model: NeuralProcess, steps: int, batch_size: int = 200, lr: float = 1e-3, seed: int = 0, progress: bool = False
) -> list[float]:
    """q_φ(z | C) by sleep with θ fixed: each step z ~ p_θ(z) and a function's n points from
    :meth:`NeuralProcess.sample`, per row a context size m ~ U{1, …, n} (the first m points);
    Adam on −mean log q_φ(z | C).  Returns the loss per step (nats)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.q_parameters(), lr=lr)
    losses = []
    n = model.n_points
    for _ in tqdm(range(steps), desc="sleep proposal", disable=not progress, leave=False):
        z, data = model.sample(batch_size)
        m = torch.randint(1, n + 1, (batch_size, 1), generator=g)
        mask = torch.arange(n)[None, :] < m
        loss = -model.encode(*split(data), mask).log_prob(z).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ------------------------------------------------------------------ evaluation


def predictive_log_likelihood(log_lik_target: Tensor, log_lik_context: Tensor | None = None) -> Tensor:
    """log p̂(y_T | x_T, C) per function from K particles, [K, B] -> [B] (nats).

    - ``log_lik_context`` None: z_k ~ q(z | C) and ``log_lik_target[k] = log p(y_T | x_T, z_k)``;
      returns log (1/K) Σ_k p(y_T | z_k), whose exponent is unbiased for E_q p(y_T | z).
    - with ``log_lik_context`` [K, B] = log p(y_C | x_C, z_k), z_k ~ p(z) (prior draws): the
      self-normalised estimate log Σ_k p(y_C | z_k) p(y_T | z_k) − log Σ_k p(y_C | z_k) of the
      Bayesian predictive (consistent as K → ∞, biased at finite K).

    Raises:
        ValueError: shapes that differ or are not [K, B].
    """
    if log_lik_target.ndim != 2 or (log_lik_context is not None and log_lik_context.shape != log_lik_target.shape):
        raise ValueError(
            f"need [K, B] log-likelihoods of the same shape, got {tuple(log_lik_target.shape)} and {None if log_lik_context is None else tuple(log_lik_context.shape)}"
        )
    if log_lik_context is None:
        return log_mean_exp(log_lik_target)
    return torch.logsumexp(log_lik_context + log_lik_target, 0) - torch.logsumexp(log_lik_context, 0)


def model_predictive(model: NeuralProcess, data: Tensor, context: int, k: int, chunk: int = 100) -> Tensor:
    """log p̂(y_T | x_T, C) / |T| [F] for observation sets data [F, 2n] with the first ``context``
    points as C and the rest as T: K particles z ~ q_φ(z | C) (:func:`predictive_log_likelihood`)."""

    def score(xs: Tensor, ys: Tensor) -> Tensor:
        z = model.encode(xs[:, :context], ys[:, :context]).sample((k,))
        return predictive_log_likelihood(model.point_log_likelihood(xs[:, context:], ys[:, context:], z).sum(-1))

    return _per_target_point(data, context, chunk, score)


def _per_target_point(data: Tensor, context: int, chunk: int, score) -> Tensor:
    """``score(xs, ys)`` -> log p̂(y_T | x_T, C) [F_c] over chunks of ``chunk`` functions, without gradient,
    divided by |T| = n − context: [F], nats per target point.  Raises ValueError: context outside [1, n − 1]."""
    x, y = split(data)
    if not 1 <= context < x.shape[-1]:
        raise ValueError(f"context must be in [1, n - 1] = [1, {x.shape[-1] - 1}], got {context}")
    with torch.no_grad():
        out = [score(x[s : s + chunk], y[s : s + chunk]) for s in range(0, x.shape[0], chunk)]
    return torch.cat(out) / (x.shape[-1] - context)


def prior_predictive(model: NeuralProcess, data: Tensor, context: int, k: int, chunk: int = 10) -> Tensor:
    """The model's Bayesian log p(y_T | x_T, C) / |T| [F] (first ``context`` points as C) by
    self-normalised importance sampling with K prior draws z ~ p_θ(z) (consistent, bias O(1/K);
    :func:`predictive_log_likelihood` with the context's log-likelihood): no proposal involved."""

    def score(xs: Tensor, ys: Tensor) -> Tensor:
        z = model.prior().sample((k, 1))  # [K, 1, d], shared across the chunk's functions
        lp = model.point_log_likelihood(xs, ys, z)  # [K, B, n]
        return predictive_log_likelihood(lp[..., context:].sum(-1), lp[..., :context].sum(-1))

    return _per_target_point(data, context, chunk, score)


def oracle_predictive(
    data: Tensor, context: int, k: int = 20000, seed: int = 0, a_range: tuple[float, float] = A_RANGE, b_range: tuple[float, float] = B_RANGE
) -> Tensor:
    """The true process's log p(y_T | x_T, C) / |T| [F] by self-normalised importance sampling with
    K draws of (a, b) from their uniform prior on a_range × b_range (consistent, bias O(1/K)); noise known."""
    g = torch.Generator().manual_seed(seed)
    a = a_range[0] + (a_range[1] - a_range[0]) * torch.rand(k, 1, 1, generator=g)
    b = b_range[0] + (b_range[1] - b_range[0]) * torch.rand(k, 1, 1, generator=g)
    x, y = split(data)
    normal = torch.distributions.Normal(a * torch.sin(x - b), NOISE)  # [K, F, n]
    lp = normal.log_prob(y)
    return predictive_log_likelihood(lp[..., context:].sum(-1), lp[..., :context].sum(-1)) / (x.shape[-1] - context)


def plot_predictions(
    models: dict[str, NeuralProcess], data: Tensor, params: Tensor, context: int, path: str | Path, n_functions: int = 3, draws: int = 20
) -> Path:
    """Figure: per model (rows) and held-out function (columns), the context points, the true
    function, and ``draws`` decoded functions g(·, z), z ~ q_φ(z | C)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wakesleep.plots import _save_atomic

    x, y = split(data)
    grid = torch.linspace(*X_RANGE, 200)
    fig, axes = plt.subplots(len(models), n_functions, figsize=(3.3 * n_functions, 2.4 * len(models)), squeeze=False)
    for r, (name, m) in enumerate(models.items()):
        for j in range(n_functions):
            ax = axes[r, j]
            with torch.no_grad():
                z = m.encode(x[j : j + 1, :context], y[j : j + 1, :context]).sample((draws,))  # [K, 1, d]
                curves = m.decode(grid[None, :], z)[:, 0]  # [K, 200]
            for c in curves:
                ax.plot(grid, c, color="C0", alpha=0.25, lw=0.8)
            a, b = params[j]
            ax.plot(grid, a * torch.sin(grid - b), color="k", lw=1.2, label="truth")
            ax.plot(x[j, context:], y[j, context:], ".", color="0.6", ms=4, label="targets")
            ax.plot(x[j, :context], y[j, :context], "o", color="C3", ms=5, label="context")
            ax.set_ylim(-6, 6)
            ax.set_title(f"{name}, a={a:.2f}, b={b:.2f}", fontsize=8)
    axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    return _save_atomic(fig, path)


def parse_args(argv=None) -> argparse.Namespace:
    """The command's options, with ``--setup``'s values (:data:`SETUPS`) where an option is not given."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--setup",
        choices=sorted(SETUPS),
        default="np",
        help="np: a ~ U(0.1, 5), b ~ U(0, pi), n = 20, contexts 3 10, N = 1000, lr 1e-3 (default); "
        "alws-code: the ALWS authors' code's a ~ U(-0.5, 1), b ~ U(-0.5, 0.5), 4 context + 4 target points, N = 5000, lr 1e-4",
    )
    p.add_argument("--n-points", type=int, default=None, help="n, points per function (default: the setup's)")
    p.add_argument("--z-dim", type=int, default=4)
    p.add_argument("--n-train", type=int, default=2000, help="training functions")
    p.add_argument("--n-test", type=int, default=500, help="held-out functions")
    p.add_argument("--contexts", type=int, nargs="+", default=None, help="context sizes for the metric (default: the setup's)")
    p.add_argument("--epochs", type=int, default=30, help="epochs of each training")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=None, help="Adam rate of θ (both) and φ (ELBO) (default: the setup's)")
    p.add_argument("--lr-kernel", type=float, default=1e-3, help="Adam rate of the set kernel (ALWS)")
    p.add_argument("--sleep-samples", type=int, default=None, help="ALWS sleep samples per step (default: the setup's)")
    p.add_argument("--sleep-steps", type=int, default=3000, help="sleep-phase steps of the ALWS model's proposal")
    p.add_argument("--k", type=int, default=1000, help="particles of the predictive estimate")
    p.add_argument("--prior-k", type=int, default=0, help="if > 0: also the ALWS model's Bayesian predictive by K prior draws (self-normalised)")
    p.add_argument("--prior-n", type=int, default=100, help="held-out functions for --prior-k (the first ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/neural_process", help="directory of the figure")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    for name, value in SETUPS[a.setup].items():
        if getattr(a, name, None) is None:
            setattr(a, name, value)
    return a


def main(argv=None) -> dict:
    """Train the NP by its ELBO and by ALWS (then its proposal by sleep) on ``--n-train`` sine
    functions, print and return the predictive log-likelihood per target point of ``--n-test``
    held-out functions for each context size in ``--contexts``, write the figure."""
    a = parse_args(argv)
    torch.manual_seed(a.seed)
    ranges = dict(a_range=a.a_range, b_range=a.b_range)
    train, _ = sine_data(a.n_train, a.n_points, seed=a.seed, **ranges)
    test, test_params = sine_data(a.n_test, a.n_points, seed=a.seed + 1000, **ranges)
    out: dict = {}
    models = {}
    common = dict(epochs=a.epochs, batch_size=a.batch_size, patience=None, progress=not a.no_progress, seed=a.seed)
    t0 = time.process_time()
    torch.manual_seed(a.seed)
    elbo_model = NeuralProcess(a.n_points, a.z_dim)
    ws.train(elbo_model, NPELBO(seed=a.seed), train, None, lr_p=a.lr, lr_q=a.lr, **common)
    out["elbo_train_cpu_seconds"] = time.process_time() - t0
    models["NP ELBO"] = elbo_model
    t0 = time.process_time()
    torch.manual_seed(a.seed)
    alws_model = NeuralProcess(a.n_points, a.z_dim)  # the same start
    krr = KernelRidge(GaussianKernel(features=SetFeatures()), lam=1e-3, method="exact", seed=a.seed)
    est = ws.ALWS(sleep_samples=a.sleep_samples, target="generic", q_update=None, seed=a.seed, kernel_ridge=krr)
    ws.train(alws_model, est, train, None, lr_p=a.lr, lr_q=a.lr, lr_estimator=a.lr_kernel, **common)
    losses = train_sleep_proposal(alws_model, a.sleep_steps, seed=a.seed, progress=not a.no_progress)
    out["alws_train_cpu_seconds"] = time.process_time() - t0
    out["alws_sleep_proposal_final_loss"] = sum(losses[-100:]) / len(losses[-100:])
    models["ALWS"] = alws_model
    for m_c in a.contexts:
        for name, m in models.items():
            v = model_predictive(m, test, m_c, a.k)
            key = "elbo" if name == "NP ELBO" else "alws"
            out[f"{key}_pred_ll_c{m_c}"] = v.mean().item()
            out[f"{key}_pred_ll_c{m_c}_se"] = v.std().item() / math.sqrt(v.numel())
        if a.prior_k > 0:  # separates the generative model from the sleep-trained proposal, on the same functions
            sub = test[: a.prior_n]
            for name, m in models.items():
                key = "elbo" if name == "NP ELBO" else "alws"
                v = model_predictive(m, sub, m_c, a.k)
                out[f"{key}_pred_ll_c{m_c}_first{len(sub)}"] = v.mean().item()
                out[f"{key}_pred_ll_c{m_c}_first{len(sub)}_se"] = v.std().item() / math.sqrt(v.numel())
            v = prior_predictive(alws_model, sub, m_c, a.prior_k)
            out[f"alws_bayes_pred_ll_c{m_c}_first{len(sub)}"] = v.mean().item()
            out[f"alws_bayes_pred_ll_c{m_c}_first{len(sub)}_se"] = v.std().item() / math.sqrt(v.numel())
        v = oracle_predictive(test, m_c, seed=a.seed, **ranges)
        out[f"oracle_pred_ll_c{m_c}"] = v.mean().item()
        out[f"oracle_pred_ll_c{m_c}_se"] = v.std().item() / math.sqrt(v.numel())
    out["elbo_noise_sd"] = elbo_model.noise.item()
    out["alws_noise_sd"] = alws_model.noise.item()
    figure = plot_predictions(models, test, test_params, min(a.contexts), Path(a.out) / "neural_process.png")
    print(key_lines(out))
    print(f"figure: {figure}")
    return out


if __name__ == "__main__":
    main()
