"""Non-negative (beta–gamma) matrix factorisation of binarised MNIST as a user's own model, trained by
amortised learning by wake-sleep (ALWS; Wenliang, Moskovitz, Kanagawa & Sahani 2020, "Amortised
learning by wake-sleep", ICML; its matrix-factorisation experiment, ALGORITHMS.md §7.5), against a
VAE with the same generator.

    z ~ U(0, 1)^K  (Beta(1, 1), the paper's beta prior at a = b = 1),
    W ≥ 0 [K, D] with a Gamma(0.9, rate 0.3) prior on each entry,
    x | z ~ Bernoulli(σ(logit(z) W + b))    (D = 784 pixels, K = 100 factors).

The latent is carried in **logit space**, u = logit(z) ∈ R^K, a float tensor [*S, B, K]: the prior
of u is the push-forward of U(0, 1) through logit, the standard logistic density
log p(u) = Σ_k [log σ(u_k) + log σ(−u_k)] = −Σ_k [softplus(u_k) + softplus(−u_k)] (the Jacobian
|dz/du| = σ(u)σ(−u) of z = σ(u) times the unit density of z).  The model is the same; numbers stay
finite where z would round to 0 or 1.

θ = (W, b) with W = softplus(w_raw) ≥ 0 (the softplus parametrisation keeps W non-negative; no
projection).  The Gamma prior on W makes the learning MAP in W: the objective per datapoint is

    (1/N) Σ_i log p_θ(x_i) + (1/N) log p(W),   log p(W) = Σ_kd log Gamma(W_kd; 0.9, rate 0.3),

with N the training-set size; :class:`WithWeightPrior` adds −log p(W)/N to any estimator's loss
(ALWS's and the VAE's alike), so the θ-gradient is the estimator's data term plus the exact prior
term.  log p(W) is the density in W (not in w_raw: no Jacobian term, MAP of W itself).

The Bernoulli likelihood is an exponential family in x, log p(x | u) = η(u)·x − Ψ(u) with
η(u) = u W + b (the logits) and Ψ(u) = Σ_d softplus(η_d), so ALWS uses its exponential-family
target (the paper's Algorithm 1; ``target="auto"``).

The VAE's proposal q_φ(u | x) = N(μ_φ(x), diag σ_φ(x)²) (an MLP encoder 784 → 200 tanh → 2K),
reparameterised, i.e. a logit-normal proposal for z.

Evaluation (:func:`map_latents`, :func:`pixel_errors`): for each test digit, u* = argmax_u
log p_θ(x, u) = log p(x | u) + log p(u), the MAP in logit-z space *including* the Jacobian of the
logit (the logistic log-density above), found by Adam gradient ascent from u = 0 (z = ½); the
reconstruction is the Bernoulli mean p̂ = σ(u* W + b).  Errors against the clean digit per pixel:
mean |x − p̂| (``mae``), mean (x − p̂)² (``mse``) and the rate of wrong pixels after thresholding p̂
at ½ (``err01``).  Denoising: a fraction ``--flip`` of each test digit's pixels, chosen uniformly at
random, is flipped (0 ↔ 1); MAP on the noisy digit; error against the clean one.

Run ``python examples/nmf.py`` to train both (``--epochs`` for ALWS, ``--vae-epochs`` for the VAE),
evaluate on ``--n-test`` test digits and write ``nmf.png`` (clean, reconstructions, noisy, denoised)
and ``nmf_factors.png`` (the first 20 rows of W as images) in ``--out``; the headline numbers print as
``key: value`` lines.  :func:`nmf` is the factory for ``--model examples/nmf.py:nmf`` (the model
passes the contract's shape checks; the command line has no option for the Gamma MAP term).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

import wakesleep as ws
from wakesleep.estimators.base import Estimator, EstimatorOutput
from wakesleep.lab.tables import key_lines

sys.path.insert(0, str(Path(__file__).resolve().parent))  # as ica.py: loaded by path too (--model FILE.py:nmf)
from circle import add_schedule_options, train_in_two_stages  # noqa: E402  the ALWS examples' two-stage schedule

#: The Gamma prior of each entry of W: shape and rate (ALGORITHMS.md §7.5).
GAMMA_SHAPE, GAMMA_RATE = 0.9, 0.3


def logistic_log_density(u: Tensor) -> Tensor:
    """log p(u) = Σ_k [log σ(u_k) + log σ(−u_k)] for u = logit(z), z ~ U(0, 1)^K: [*S], nats."""
    return -(F.softplus(u) + F.softplus(-u)).sum(-1)


class NMFModel(nn.Module):
    """The beta–gamma factorisation of the module docstring, with a logit-normal proposal.

    Args:
        factors: K ≥ 1; dim: D ≥ 1 (pixels); hidden: the encoder's hidden width;
        w_scale: W starts at entries of about this size (softplus of N(softplus⁻¹(w_scale), 0.1²));
        bias: the initial b [D] (default 0; :func:`main` starts it at the logit of the pixel means).

    Raises:
        ValueError: non-positive sizes, or a ``bias`` of another shape.
    """

    reparameterizable = True
    binary_data = True

    def __init__(self, factors: int = 100, dim: int = 784, hidden: int = 200, w_scale: float = 0.05, bias: Tensor | None = None, seed: int = 0):
        super().__init__()
        if factors < 1 or dim < 1 or hidden < 1 or not w_scale > 0:
            raise ValueError(f"need factors, dim, hidden >= 1 and w_scale > 0, got {factors!r}, {dim!r}, {hidden!r}, {w_scale!r}")
        if bias is not None and tuple(bias.shape) != (dim,):
            raise ValueError(f"bias must be [dim] = [{dim}], got {list(bias.shape)}")
        g = torch.Generator().manual_seed(seed)
        self.factors, self.data_dim = factors, dim
        start = math.log(math.expm1(w_scale))  # softplus⁻¹
        self.w_raw = nn.Parameter(start + 0.1 * torch.randn(factors, dim, generator=g))
        self.bias = nn.Parameter(torch.zeros(dim) if bias is None else bias.detach().clone().float())
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * factors))

    @property
    def weights(self) -> Tensor:
        """W = softplus(w_raw) [K, D], ≥ 0."""
        return F.softplus(self.w_raw)

    def p_parameters(self) -> list[nn.Parameter]:
        return [self.w_raw, self.bias]

    def q_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def log_weight_prior(self) -> Tensor:
        """log p(W) = Σ_kd log Gamma(W_kd; 0.9, rate 0.3), a scalar in nats (density in W)."""
        w = self.weights
        a, r = GAMMA_SHAPE, GAMMA_RATE
        return (a * math.log(r) - math.lgamma(a) + (a - 1) * w.log() - r * w).sum()

    def logits(self, u: Tensor) -> Tensor:
        """η(u) = u W + b for u [*S, K]: [*S, D]."""
        return u @ self.weights + self.bias

    def log_prior(self, u: Tensor) -> Tensor:
        """The logistic log-density of u = logit(z) (:func:`logistic_log_density`): [*S]."""
        return logistic_log_density(u)

    def log_likelihood(self, x: Tensor, u: Tensor) -> Tensor:
        """log p(x | u) = Σ_d [x_d η_d − softplus(η_d)] for x [B, D], u [*S, B, K]: [*S, B]."""
        eta = self.logits(u)
        return (x * eta - F.softplus(eta)).sum(-1)

    def log_joint(self, x: Tensor, u: Tensor) -> Tensor:
        """log p_θ(x, u) for x [B, D] and u [*S, B, K]: [*S, B], nats, differentiable in θ."""
        return self.log_prior(u) + self.log_likelihood(x, u)

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """n draws: u [n, K] (u = logit z, z ~ U(0, 1)^K), x [n, D] in {0, 1}; no gradient."""
        with torch.no_grad():
            z = torch.rand(n, self.factors, dtype=self.bias.dtype, device=self.bias.device).clamp(1e-7, 1 - 1e-7)
            u = torch.logit(z)
            return u, torch.bernoulli(torch.sigmoid(self.logits(u)))

    # exponential-family view for ALWS: S(x) = x, η = u W + b, Ψ = Σ softplus(η)
    def exponential_family(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """η(u) [n, D] and Ψ(u) = Σ_d softplus(η_d) [n] for u [n, K]."""
        eta = self.logits(u)
        return eta, F.softplus(eta).sum(-1)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        """S(x) = x [n, D]."""
        return x

    # proposal q_φ(u | x) = N(μ(x), diag σ(x)²): logit-normal in z
    def _q(self, x: Tensor) -> torch.distributions.Normal:
        mu, log_sigma = self.encoder(x).chunk(2, dim=-1)
        return torch.distributions.Normal(mu, log_sigma.clamp(-7.0, 3.0).exp())

    def propose(self, x: Tensor, k: int, reparameterize: bool = False) -> tuple[Tensor, Tensor]:
        """K particles u [K, B, K_factors] from q_φ(u | x) and log q [K, B] (u detached unless
        ``reparameterize``)."""
        q = self._q(x)
        u = q.rsample((k,)) if reparameterize else q.sample((k,))
        return u, q.log_prob(u).sum(-1)

    def log_proposal(self, x: Tensor, u: Tensor) -> Tensor:
        """log q_φ(u | x) for x [B, D], u [*S, B, K]: [*S, B]."""
        return self._q(x).log_prob(u).sum(-1)


def nmf(factors: int = 100, data_dim: int = 784) -> NMFModel:
    """The factory of ``--model examples/nmf.py:nmf``: K = ``factors``, D = ``data_dim``, seed 0."""
    return NMFModel(factors, data_dim)


class WithWeightPrior(Estimator):
    """An estimator's loss plus the MAP term of the model's parameter prior: loss − log p(W) / N.

    ``inner``'s loss is a mean over the batch of −(its estimate of log p_θ(x)); adding −log p(W)/N
    (N = ``n_train``, the training-set size) makes the gradient that of −[(1/N) Σ_i log p_θ(x_i)
    + (1/N) log p(W)], the negative log-posterior of θ per datapoint.  Recorded as
    ``log_weight_prior`` (nats, the whole sum).

    Raises:
        ValueError: ``n_train`` < 1; on use, a model without ``log_weight_prior()``.
    """

    def __init__(self, inner: Estimator, n_train: int):
        super().__init__()
        if not isinstance(n_train, int) or n_train < 1:
            raise ValueError(f"n_train must be a positive integer (the training-set size), got {n_train!r}")
        self.inner, self.n_train, self.name = inner, n_train, inner.name

    def requires(self, model) -> tuple[str, ...]:
        return self.inner.requires(model)

    def check_model(self, model) -> None:
        if not callable(getattr(model, "log_weight_prior", None)):
            raise ValueError(f"{type(model).__name__} has no log_weight_prior(): use the inner estimator alone")
        self.inner.check_model(model)

    def settings(self) -> dict:
        return {**self.inner.settings(), "n_train": self.n_train}

    def forward(self, model, x: Tensor) -> EstimatorOutput:
        self.check_model(model)
        out = self.inner(model, x)
        lp = model.log_weight_prior()
        return EstimatorOutput(out.loss - lp / self.n_train, {**out.metrics, "log_weight_prior": lp.detach()})


# ------------------------------------------------------------------ evaluation


def map_latents(model: NMFModel, x: Tensor, steps: int = 300, lr: float = 0.05, progress: bool = False) -> Tensor:
    """u* ≈ argmax_u log p_θ(x, u) for each row of x [B, D] (logit-z space, the logistic prior's
    Jacobian included): Adam on −Σ_b log p_θ(x_b, u_b) from u = 0, ``steps`` steps at rate ``lr``.
    θ is not changed.  Returns u* [B, K] (detached).

    Raises:
        ValueError: steps < 1 or lr ≤ 0.
    """
    if steps < 1 or not lr > 0:
        raise ValueError(f"need steps >= 1 and lr > 0, got {steps!r}, {lr!r}")
    u = torch.zeros(x.shape[0], model.factors, dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.Adam([u], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in tqdm(range(steps), desc="MAP latents", disable=not progress, leave=False):
        loss = -model.log_joint(x, u).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    return u.detach()


def flip_pixels(x: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """x [B, D] in {0, 1} with round(fraction · D) pixels of each row, chosen uniformly without
    replacement (seeded), flipped 0 ↔ 1.

    Raises:
        ValueError: fraction outside [0, 1].
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    g = torch.Generator().manual_seed(seed)
    b, d = x.shape
    m = round(fraction * d)
    idx = torch.rand(b, d, generator=g).argsort(-1)[:, :m]
    mask = torch.zeros(b, d, dtype=torch.bool).scatter_(1, idx, True).to(x.device)
    return torch.where(mask, 1 - x, x)


def pixel_errors(clean: Tensor, p_hat: Tensor) -> dict[str, tuple[float, float]]:
    """Per-pixel errors of reconstructions p̂ [B, D] (Bernoulli means) against clean x [B, D]:
    ``mae`` mean |x − p̂|, ``mse`` mean (x − p̂)², ``err01`` mean [x ≠ (p̂ > ½)], each as
    (mean over digits, its standard error over digits)."""
    per = {
        "mae": (clean - p_hat).abs().mean(-1),
        "mse": (clean - p_hat).square().mean(-1),
        "err01": (clean != (p_hat > 0.5).to(clean.dtype)).to(clean.dtype).mean(-1),
    }
    n = clean.shape[0]
    return {k: (v.mean().item(), v.std().item() / math.sqrt(n) if n > 1 else float("nan")) for k, v in per.items()}


def evaluate(model: NMFModel, clean: Tensor, flip: float, steps: int, seed: int = 0, progress: bool = False) -> dict:
    """Reconstruction and denoising errors (:func:`pixel_errors`) with MAP latents; also returns the
    reconstructions (``recon``, ``denoised``) and the noisy digits (``noisy``) for the figure."""
    noisy = flip_pixels(clean, flip, seed)
    u_clean = map_latents(model, clean, steps, progress=progress)
    u_noisy = map_latents(model, noisy, steps, progress=progress)
    with torch.no_grad():
        recon, denoised = torch.sigmoid(model.logits(u_clean)), torch.sigmoid(model.logits(u_noisy))
    return {
        "recon": recon,
        "denoised": denoised,
        "noisy": noisy,
        "recon_err": pixel_errors(clean, recon),
        "denoise_err": pixel_errors(clean, denoised),
        "noisy_err": pixel_errors(clean, noisy),
    }


def plot_digits(rows: dict[str, Tensor], path: str | Path, n: int = 10) -> Path:
    """Figure: one row of ``n`` 28×28 digits per entry of ``rows`` ([B, 784] each), labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wakesleep.plots import _save_atomic

    fig, axes = plt.subplots(len(rows), n, figsize=(0.9 * n + 1.6, 0.95 * len(rows)), squeeze=False)
    for r, (name, imgs) in enumerate(rows.items()):
        for j in range(n):
            ax = axes[r, j]
            ax.imshow(imgs[j].detach().cpu().numpy().reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return _save_atomic(fig, path)


def plot_factors(models: dict[str, NMFModel], path: str | Path, n: int = 20) -> Path:
    """Figure: the first ``n`` rows of W (each a 28×28 image, scaled to its own maximum) per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wakesleep.plots import _save_atomic

    n = min(n, *(m.factors for m in models.values()))
    fig, axes = plt.subplots(len(models), n, figsize=(0.8 * n + 1.0, 0.95 * len(models)), squeeze=False)
    for r, (name, m) in enumerate(models.items()):
        w = m.weights.detach().cpu().numpy()
        for j in range(n):
            ax = axes[r, j]
            ax.imshow(w[j].reshape(28, 28), cmap="gray_r", vmin=0, vmax=max(w[j].max(), 1e-8))
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return _save_atomic(fig, path)


def load_binarized(data_dir: str | None, n_train: int, n_test: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The first ``n_train`` training images (the training split is shuffled) and ``n_test`` test
    images drawn without replacement by a generator seeded by ``seed`` (this file's test split is
    in runs of the same digit, so its first rows are nearly all zeros) of ``binarized_mnist.npz``
    in ``data_dir`` (else ``$WAKESLEEP_DATA_DIR``), float32 {0, 1}.

    Raises:
        FileNotFoundError: no such file (the message names where it looked and the fix).
    """
    from wakesleep.data import resolve_data_dir

    path = resolve_data_dir(data_dir) / "binarized_mnist.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: pass --data-dir or set WAKESLEEP_DATA_DIR to the directory that holds binarized_mnist.npz")
    with np.load(path) as d:
        test = d["test"]
        rows = np.random.default_rng(seed).choice(test.shape[0], size=min(n_test, test.shape[0]), replace=False)
        return torch.from_numpy(d["train"][:n_train].astype(np.float32)), torch.from_numpy(test[rows].astype(np.float32))


def main(argv=None) -> dict:
    """Train the factorisation by ALWS and by a VAE from the same start on ``--n-train`` binarised
    MNIST images, evaluate both by MAP reconstruction and denoising of ``--n-test`` test digits, print
    and return the errors, write the figures.  ``argv``: the command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--factors", type=int, default=100, help="K, latent factors")
    p.add_argument("--n-train", type=int, default=5000, help="training images (the first of the training split)")
    p.add_argument("--n-test", type=int, default=500, help="test digits for the errors")
    add_schedule_options(p, epochs=4, lr=1e-2)  # --lr: Adam rate of θ (ALWS)
    p.add_argument("--vae-epochs", type=int, default=None, help="VAE epochs (default: --epochs + --fine-epochs, all at --vae-lr)")
    p.add_argument("--vae-lr", type=float, default=1e-3, help="Adam rate of θ and φ for the VAE")
    p.add_argument("--flip", type=float, default=0.1, help="fraction of pixels flipped for denoising")
    p.add_argument("--map-steps", type=int, default=300, help="Adam steps of the MAP latent search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="directory of binarized_mnist.npz (default $WAKESLEEP_DATA_DIR)")
    p.add_argument("--out", default="runs/nmf", help="directory of the figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    x, x_test = load_binarized(a.data_dir, a.n_train, a.n_test, a.seed)
    bias = torch.logit(x.mean(0).clamp(1e-3, 1 - 1e-3))

    def fresh() -> NMFModel:
        return NMFModel(a.factors, x.shape[1], bias=bias, seed=a.seed)

    out: dict = {}
    models = {}
    start = evaluate(fresh(), x_test, a.flip, a.map_steps, seed=a.seed)
    out["start_recon_mae"], out["start_denoise_mae"] = start["recon_err"]["mae"][0], start["denoise_err"]["mae"][0]
    t0 = time.process_time()
    alws_model = fresh()
    alws = ws.ALWS(sleep_samples=a.sleep_samples, target=a.target, kernel="gaussian", krr="exact", lam=1e-3, q_update=None, seed=a.seed)
    train_in_two_stages(alws_model, WithWeightPrior(alws, a.n_train), x, a)
    out["alws_train_cpu_seconds"] = time.process_time() - t0
    models["ALWS"] = alws_model
    t0 = time.process_time()
    vae_model = fresh()
    vae_epochs = a.vae_epochs if a.vae_epochs is not None else a.epochs + a.fine_epochs
    ws.train(
        vae_model,
        WithWeightPrior(ws.VAE(), a.n_train),
        x,
        None,
        epochs=vae_epochs,
        batch_size=a.batch_size,
        lr_p=a.vae_lr,
        lr_q=a.vae_lr,
        patience=None,
        progress=not a.no_progress,
        seed=a.seed,
    )
    out["vae_train_cpu_seconds"] = time.process_time() - t0
    models["VAE"] = vae_model
    rows = {"clean": x_test}
    noisy = None
    for name, m in models.items():
        r = evaluate(m, x_test, a.flip, a.map_steps, seed=a.seed, progress=not a.no_progress)
        key = name.lower()
        for what in ("recon_err", "denoise_err"):
            for metric, (mean, se) in r[what].items():
                out[f"{key}_{what.split('_')[0]}_{metric}"] = mean
                out[f"{key}_{what.split('_')[0]}_{metric}_se"] = se
        rows[f"{name} recon."] = r["recon"]
        noisy = r["noisy"]
        rows[f"{name} denoised"] = r["denoised"]
        if name == "VAE":  # the encoder's mean as the latent, for reference (not MAP)
            with torch.no_grad():
                u_enc = vae_model._q(x_test).mean
                out["vae_encoder_recon_mae"] = pixel_errors(x_test, torch.sigmoid(vae_model.logits(u_enc)))["mae"][0]
    out["noisy_input_err01"] = pixel_errors(x_test, noisy)["err01"][0]
    order = ["clean", "ALWS recon.", "VAE recon."]
    rows = {k: rows[k] for k in order} | {
        f"noisy ({a.flip:g} flipped)": noisy,
        "ALWS denoised": rows["ALWS denoised"],
        "VAE denoised": rows["VAE denoised"],
    }
    figure = plot_digits(rows, Path(a.out) / "nmf.png")
    factors = plot_factors(models, Path(a.out) / "nmf_factors.png")
    print(key_lines(out))
    print(f"figure: {figure}")
    print(f"figure_factors: {factors}")
    return out


if __name__ == "__main__":
    main()
