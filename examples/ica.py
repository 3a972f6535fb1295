"""Independent component analysis (ICA) as a user's own model without a proposal, trained by
amortised learning by wake-sleep (ALWS; Wenliang, Moskovitz, Kanagawa & Sahani 2020, "Amortised
learning by wake-sleep", ICML; its ICA experiment: x = A s + noise with Laplace sources; the learned
columns should match A up to permutation and sign).

    s ~ Laplace(0, 1)^d  (iid),   x | s ~ N(A s, σ² I_D):   d sources mixed into D ≥ d observations.

Learned: the mixing matrix A [D, d]; the noise σ is fixed (default 0.5, against a signal variance
of 2 per coordinate for the default scale of A: entries N(0, 1/d)).  The latent z is the source
vector s, a float tensor [*S, B, d].  The unit Laplace scale fixes the scale of A, so A is
identified up to a permutation and sign flips of its columns.

There is **no proposal**: ALWS regresses ∇θ log p(x, s) on x over sleep samples.  The Gaussian
likelihood with fixed σ is an exponential family in x, log p(x | s) = η(s)·S(x) − Ψ(s) + log h(x)
with S(x) = x, η(s) = A s / σ², Ψ(s) = ‖A s‖² / (2σ²) and log h(x) = −‖x‖²/(2σ²) − (D/2) log 2πσ²,
so ``target="auto"`` picks ALWS's exponential-family target (the paper's Algorithm 1), which only
regresses functions of s on x.

Measures of recovery, each invariant to permutation, sign and (for the Amari distance) scale:

- :func:`amari_distance` — the Amari index (Amari, Cichocki & Yang 1996, "A new learning algorithm
  for blind signal separation", NIPS 8) of P = W_est A_true, with W_est the unmixing matrix
  (the pseudo-inverse of an estimated mixing matrix): 0 exactly when P is a scaled permutation,
  at most 1.
- :func:`matched_cosine` — mean |cos| between matched columns of A_est and A_true, the matching
  the best permutation (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``).

The baseline is FastICA (Hyvärinen & Oja 2000, "Independent component analysis: algorithms and
applications", Neural Networks 13) from scikit-learn on the same data; its ``mixing_`` is compared
with A_true by the same two measures.

Run ``python examples/ica.py`` to generate data, train A by ALWS from a random start, fit FastICA,
print ``key: value`` lines and write ``ica.png`` (matched columns of A_true, ALWS and FastICA) in
``--out``.  ``wakesleep train --model examples/ica.py:ica --algorithm alws`` builds the model of
:func:`ica` (``--write-data FILE.npz`` writes the data for it).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

import wakesleep as ws
from wakesleep.lab.tables import key_lines

sys.path.insert(0, str(Path(__file__).resolve().parent))  # as gmm_pyro.py: loaded by path too (--model FILE.py:ica)
from circle import add_schedule_options, train_in_two_stages  # noqa: E402  the ALWS examples' two-stage schedule

#: Fixed observation noise σ (data units).
NOISE = 0.5


def random_mixing(dim: int, sources: int, seed: int) -> Tensor:
    """A [dim, sources] with iid N(0, 1/sources) entries (float32): each coordinate of A s then has
    variance 2 (the unit Laplace's variance).  Seeded; independent of the global RNG."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(dim, sources, generator=g) / math.sqrt(sources)


class ICAModel(nn.Module):
    """s ~ Laplace(0, 1)^d, x | s ~ N(A s, σ² I_D) (module docstring).

    Args:
        sources: d ≥ 1; dim: D ≥ 1 (the data width); noise: σ > 0, fixed;
        mixing: the initial A [D, d] (default: :func:`random_mixing` with ``seed``).

    Raises:
        ValueError: non-positive sizes or noise, or a ``mixing`` of another shape.
    """

    def __init__(self, sources: int, dim: int, noise: float = NOISE, mixing: Tensor | None = None, seed: int = 0):
        super().__init__()
        if sources < 1 or dim < 1 or not noise > 0:
            raise ValueError(f"need sources >= 1, dim >= 1 and noise > 0, got {sources!r}, {dim!r}, {noise!r}")
        if mixing is None:
            mixing = random_mixing(dim, sources, seed)
        if tuple(mixing.shape) != (dim, sources):
            raise ValueError(f"mixing must be [dim, sources] = [{dim}, {sources}], got {list(mixing.shape)}")
        self.sources, self.data_dim, self.noise = sources, dim, float(noise)
        self.mixing = nn.Parameter(mixing.detach().clone().float())

    def p_parameters(self) -> list[nn.Parameter]:
        return [self.mixing]

    def q_parameters(self) -> list[nn.Parameter]:
        """None: there is no proposal."""
        return []

    def log_prior(self, s: Tensor) -> Tensor:
        """log p(s) = Σ_i (−|s_i| − log 2) for s [*S, d]: [*S], nats (no parameters)."""
        return -s.abs().sum(-1) - self.sources * math.log(2.0)

    def log_joint(self, x: Tensor, s: Tensor) -> Tensor:
        """log p_θ(x, s) for x [B, D] and s [*S, B, d]: [*S, B], nats, differentiable in A."""
        r = x - s @ self.mixing.mT
        log_lik = -0.5 * r.square().sum(-1) / self.noise**2 - self.data_dim * (math.log(self.noise) + 0.5 * math.log(2 * math.pi))
        return self.log_prior(s) + log_lik

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """n draws: s [n, d], x [n, D]; no gradient."""
        with torch.no_grad():
            a = self.mixing
            # Laplace(0, 1) as the difference of two unit exponentials
            s = (
                torch.empty(n, self.sources, dtype=a.dtype, device=a.device).exponential_()
                - torch.empty(n, self.sources, dtype=a.dtype, device=a.device).exponential_()
            )
            return s, s @ a.mT + self.noise * torch.randn(n, self.data_dim, dtype=a.dtype, device=a.device)

    # exponential-family view of p(x | s) for ALWS: S(x) = x, η = A s / σ², Ψ = ‖A s‖² / (2σ²)
    def exponential_family(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """η(s) = A s / σ² [n, D] and Ψ(s) = ‖A s‖² / (2σ²) [n] for s [n, d]."""
        m = s @ self.mixing.mT
        return m / self.noise**2, 0.5 * m.square().sum(-1) / self.noise**2

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        """S(x) = x [n, D]."""
        return x


def ica(data_dim: int = 16, sources: int = 8) -> ICAModel:
    """The factory of ``--model examples/ica.py:ica``: d = ``sources`` Laplace sources into
    D = ``data_dim`` observations, A started at :func:`random_mixing` with seed 1 (the truth of
    :func:`make_data` uses seed 0)."""
    return ICAModel(sources, data_dim, seed=1)


def make_data(n: int, sources: int, dim: int, seed: int = 0, noise: float = NOISE) -> tuple[Tensor, Tensor]:
    """(x [n, D], A_true [D, d]) with A_true = :func:`random_mixing` (seed) and x from the model."""
    truth = ICAModel(sources, dim, noise, seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1000)
        return truth.sample(n)[1], truth.mixing.detach().clone()


# ------------------------------------------------------------------ measures


def amari_distance(w_est: Tensor | np.ndarray, a_true: Tensor | np.ndarray) -> float:
    """The Amari index of P = W_est A_true (Amari, Cichocki & Yang 1996), normalised to [0, 1]:

        [Σ_i (Σ_j |p_ij| / max_k |p_ik| − 1) + Σ_j (Σ_i |p_ij| / max_k |p_kj| − 1)] / (2 d (d − 1)).

    Args:
        w_est: an unmixing matrix [d, D] (e.g. ``np.linalg.pinv(A_est)``).
        a_true: the true mixing matrix [D, d].

    Returns:
        0 exactly when P is a permutation times a diagonal scaling (perfect separation up to
        permutation, sign and scale); larger is worse.  0 for d = 1.

    Raises:
        ValueError: shapes that do not multiply to a square matrix.
    """
    w, a = np.asarray(w_est, dtype=np.float64), np.asarray(a_true, dtype=np.float64)
    if w.ndim != 2 or a.ndim != 2 or w.shape[1] != a.shape[0] or w.shape[0] != a.shape[1]:
        raise ValueError(f"need W [d, D] and A [D, d], got {w.shape} and {a.shape}")
    p = np.abs(w @ a)
    d = p.shape[0]
    if d == 1:
        return 0.0
    rows = (p.sum(1) / p.max(1) - 1).sum()
    cols = (p.sum(0) / p.max(0) - 1).sum()
    return float((rows + cols) / (2 * d * (d - 1)))


def match_columns(a_est: Tensor | np.ndarray, a_true: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The permutation and signs that best match the columns of A_est [D, d] to A_true [D, d].

    Returns:
        (perm [d], cos [d]): column ``perm[j]`` of A_est matches column j of A_true, with signed
        cosine ``cos[j]`` (flip its sign by ``np.sign(cos[j])``).  The permutation maximises
        Σ_j |cos| (``scipy.optimize.linear_sum_assignment``).

    Raises:
        ValueError: shapes differ or are not 2-D.
    """
    e, t = np.asarray(a_est, dtype=np.float64), np.asarray(a_true, dtype=np.float64)
    if e.ndim != 2 or e.shape != t.shape:
        raise ValueError(f"need A_est and A_true of the same shape [D, d], got {e.shape} and {t.shape}")
    c = (e / np.linalg.norm(e, axis=0)).T @ (t / np.linalg.norm(t, axis=0))  # [d_est, d_true]
    rows, cols = linear_sum_assignment(-np.abs(c))
    perm = np.empty(t.shape[1], dtype=int)
    perm[cols] = rows
    return perm, c[perm, np.arange(t.shape[1])]


def matched_cosine(a_est: Tensor | np.ndarray, a_true: Tensor | np.ndarray) -> float:
    """Mean |cos| between the columns of A_true [D, d] and their matched columns of A_est [D, d]
    (:func:`match_columns`): 1 exactly when A_est is A_true with columns permuted, sign-flipped
    and rescaled.  In [0, 1]."""
    return float(np.abs(match_columns(a_est, a_true)[1]).mean())


def fastica_mixing(x: Tensor | np.ndarray, sources: int, seed: int = 0) -> np.ndarray:
    """FastICA's mixing matrix [D, d] on x [N, D] (scikit-learn, ``whiten="unit-variance"``,
    Hyvärinen & Oja 2000).  Its columns' scale follows unit-variance sources (not unit Laplace
    scale); both measures ignore scale."""
    from sklearn.decomposition import FastICA

    fit = FastICA(n_components=sources, whiten="unit-variance", random_state=seed, max_iter=1000).fit(np.asarray(x, dtype=np.float64))
    return fit.mixing_


def scores(a_est: Tensor | np.ndarray, a_true: Tensor | np.ndarray) -> dict[str, float]:
    """Amari distance (of pinv(A_est) A_true) and matched cosine of an estimate."""
    e = np.asarray(a_est, dtype=np.float64)
    return {"amari": amari_distance(np.linalg.pinv(e), a_true), "matched_cosine": matched_cosine(e, a_true)}


def plot_columns(a_true, estimates: dict[str, np.ndarray], path: str | Path, columns: int = 12) -> Path:
    """Figure: the first ``columns`` columns of A_true [D, d] (row 1) and, below, each estimate's
    matched, sign-aligned and norm-matched columns, as images when D is a square (16×16 patches)
    and as bars otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wakesleep.plots import _save_atomic

    t = np.asarray(a_true, dtype=np.float64)
    dim, d = t.shape
    k = min(columns, d)
    side = math.isqrt(dim)
    rows = {"true A": t[:, :k]}
    for name, est in estimates.items():
        perm, cos = match_columns(est, t)
        e = np.asarray(est, dtype=np.float64)[:, perm[:k]] * np.sign(cos[:k])
        rows[f"{name} (|cos| {np.abs(cos).mean():.3f})"] = e / np.linalg.norm(e, axis=0) * np.linalg.norm(t[:, :k], axis=0)
    fig, axes = plt.subplots(len(rows), k, figsize=(1.1 * k + 0.5, 1.25 * len(rows)), squeeze=False)
    vmax = np.abs(t).max()
    for r, (name, cols) in enumerate(rows.items()):
        for j in range(k):
            ax = axes[r, j]
            if side * side == dim:
                ax.imshow(cols[:, j].reshape(side, side), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            else:
                ax.bar(np.arange(dim), cols[:, j], color="C0")
                ax.set_ylim(-vmax, vmax)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name.split(" (")[0], fontsize=8)
        axes[r, k // 2].set_title(name, fontsize=8)
    fig.tight_layout()
    return _save_atomic(fig, path)


def main(argv=None) -> dict:
    """Generate ``--n`` points from a random true A (``--seed``), train A by ALWS from another
    random A (``--epochs`` at ``--lr``, then ``--fine-epochs`` at a tenth), fit FastICA on the same
    data, print and return the Amari distances and matched cosines (start, ALWS, FastICA) and the
    seconds of each fit, and write ``ica.png`` in ``--out``.  ``argv``: the command-line arguments
    (default ``sys.argv[1:]``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", type=int, default=8, help="d, Laplace sources")
    p.add_argument("--dim", type=int, default=16, help="D, observed dimensions (a square for image figures)")
    p.add_argument("--noise", type=float, default=NOISE, help="fixed observation noise σ")
    p.add_argument("--n", type=int, default=2000, help="training points")
    add_schedule_options(p, epochs=60, lr=3e-2)  # --lr: Adam rate of A
    p.add_argument("--seed", type=int, default=0, help="seed of the true A and data (the start uses seed + 1)")
    p.add_argument("--out", default="runs/ica", help="directory of the figure")
    p.add_argument("--write-data", default=None, metavar="FILE.npz", help="write train/valid/test splits (--n, 1000, 1000) and stop")
    a = p.parse_args(argv)
    if a.write_data:
        Path(a.write_data).parent.mkdir(parents=True, exist_ok=True)
        x, _ = make_data(a.n + 2000, a.sources, a.dim, a.seed, a.noise)
        np.savez(a.write_data, train=x[: a.n].numpy(), valid=x[a.n : a.n + 1000].numpy(), test=x[a.n + 1000 :].numpy())
        print(f"data: {a.write_data}")
        return {}
    torch.manual_seed(a.seed)
    x, a_true = make_data(a.n, a.sources, a.dim, a.seed, a.noise)
    model = ICAModel(a.sources, a.dim, a.noise, seed=a.seed + 1)
    start = scores(model.mixing.detach(), a_true)
    est = ws.ALWS(sleep_samples=a.sleep_samples, target=a.target, kernel="gaussian", krr="exact", lam=1e-3, q_update=None, seed=a.seed)
    t0 = time.process_time()
    train_in_two_stages(model, est, x, a)
    alws_seconds = time.process_time() - t0
    t0 = time.process_time()
    a_fast = fastica_mixing(x, a.sources, a.seed)
    fastica_seconds = time.process_time() - t0
    a_alws = model.mixing.detach().numpy()
    alws, fast = scores(a_alws, a_true), scores(a_fast, a_true)
    figure = plot_columns(a_true.numpy(), {"ALWS": a_alws, "FastICA": a_fast}, Path(a.out) / "ica.png")
    out = {
        "start_amari": start["amari"],
        "alws_amari": alws["amari"],
        "fastica_amari": fast["amari"],
        "start_matched_cosine": start["matched_cosine"],
        "alws_matched_cosine": alws["matched_cosine"],
        "fastica_matched_cosine": fast["matched_cosine"],
        "alws_cpu_seconds": alws_seconds,
        "fastica_cpu_seconds": fastica_seconds,
        "cpu_seconds": alws_seconds + fastica_seconds,
    }
    print(key_lines(out))
    print(f"figure: {figure}")
    return out


if __name__ == "__main__":
    main()
