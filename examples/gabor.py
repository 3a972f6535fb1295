"""A latent on the circle generating 16×16 Gabor patches through a convolutional generator, as a
user's own model without a proposal, trained by amortised learning by wake-sleep (ALWS; Wenliang,
Moskovitz, Kanagawa & Sahani 2020, "Amortised learning by wake-sleep", ICML, §5.2; ALGORITHMS.md
§7.2: "decoding a sweep of angles must reproduce the sweep of orientations").

    a ~ U[−π, π),   z = (sin a, cos a),   x | a ~ N(g_θ(z), σ² I_256):   a 16×16 patch.

g_θ is a small convolutional generator (:class:`ConvGenerator`: 2 → 64 → 32×4×4, two stride-2
transposed convolutions to 16×16); σ is learned (as log σ).  The prior is fixed (uniform angle).
The latent z is stored as the angle a itself, a float tensor [*S, B] in radians; the generator
reads (sin a, cos a).

**The data** are true Gabor patches at uniformly random orientations plus N(0, ``NOISE``²) pixel noise
(:func:`gabor_patches`): G_a(u, v) = exp(−(u² + v²)/(2 s²)) sin(2π f (u cos a + v sin a)) on the
pixel grid u, v ∈ {−7.5, …, 7.5}, s = 3 px, f = 1/6 cycles per pixel.  The *odd* (sine) phase makes
the orientation defined modulo 2π: G_{a+π} = −G_a, a different patch, so the measured orientation
is an angle in [−π, π), not a line orientation modulo π.

**Orientation measure** (:func:`measure_orientation`): the angle of the bank of clean Gabors at
``bank`` equally spaced angles (default 3600, 0.1°) whose normalised correlation with the patch is
largest.  On clean Gabors it returns the true angle to within half a bank step.

**Identifiability**: the latent's origin and direction are not identified (a ↦ ±a + c gives the same
marginal p(x) with a uniform prior), so the learned generator may be rotated or reflected relative
to the truth.  :func:`align_angles` fits the best reflection s ∈ {+1, −1} and offset c (circular
mean of φ − s a) and reports the residual error after it, in degrees.

There is **no proposal**.  The Gaussian likelihood is an exponential family in x,
log p(x | a) = η(a)·S(x) − Ψ(a) with S(x) = (x, ‖x‖²), η(a) = (g(a)/σ², −1/(2σ²)),
Ψ(a) = ‖g(a)‖²/(2σ²) + D log σ + (D/2) log 2π and h(x) = 1, so ``target="auto"`` picks ALWS's
exponential-family target (the paper's Algorithm 1).

Run ``python examples/gabor.py --out DIR`` to train, write ``gabor.png`` (rows of true and decoded
patches over a sweep of angles, and the decoded orientation against the angle) and print ``key: value``
lines.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn

import wakesleep as ws
from wakesleep.io import atomic_save_figure
from wakesleep.lab.tables import key_lines
from wakesleep.models.distributions import isotropic_normal_exponential_family, isotropic_normal_statistics

SIZE = 16
SIGMA_PX = 3.0
FREQ = 1.0 / 6.0
#: Pixel noise of the data (the Gabor's peak amplitude is about 0.8).
NOISE = 0.1


def gabor_patches(a: Tensor, size: int = SIZE, sigma: float = SIGMA_PX, freq: float = FREQ) -> Tensor:
    """Clean odd-phase Gabor patches at angles a [*S] (radians): [*S, size²] (row-major size × size),
    G_a(u, v) = exp(−(u² + v²)/(2 sigma²)) sin(2π freq (u cos a + v sin a)), u the column and v the
    row offset from the centre (module docstring)."""
    c = torch.arange(size, dtype=a.dtype, device=a.device) - (size - 1) / 2
    v, u = torch.meshgrid(c, c, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    proj = u * torch.cos(a)[..., None] + v * torch.sin(a)[..., None]
    return torch.exp(-(u * u + v * v) / (2 * sigma**2)) * torch.sin(2 * math.pi * freq * proj)


def make_data(n: int, seed: int = 0, noise: float = NOISE) -> tuple[Tensor, Tensor]:
    """n noisy Gabor patches: (a [n] uniform on [−π, π), x [n, 256] = G_a + N(0, noise²)).  Seeded,
    independent of the global generator."""
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(n, generator=g) * 2 - 1) * math.pi
    return a, gabor_patches(a) + noise * torch.randn(n, SIZE * SIZE, generator=g)


def measure_orientation(x: Tensor, bank: int = 3600) -> Tensor:
    """The orientation (radians in [−π, π)) of each patch x [B, 256]: the angle of the clean Gabor,
    among ``bank`` equally spaced angles, with the largest normalised correlation (module docstring).

    Raises:
        ValueError: x not [B, 256], or bank < 4.
    """
    if x.ndim != 2 or x.shape[1] != SIZE * SIZE:
        raise ValueError(f"x must be [B, {SIZE * SIZE}] patches, got shape {list(x.shape)}")
    if bank < 4:
        raise ValueError(f"bank must be >= 4 angles, got {bank!r}")
    angles = torch.arange(bank, dtype=torch.float64) * (2 * math.pi / bank) - math.pi
    g = gabor_patches(angles)
    g = g / g.norm(dim=1, keepdim=True)
    xd = x.detach().to(torch.float64)
    score = (xd / xd.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ g.T
    return angles[score.argmax(1)].to(x.dtype)


def wrap(d: Tensor) -> Tensor:
    """Angles wrapped to [−π, π)."""
    return torch.remainder(d + math.pi, 2 * math.pi) - math.pi


def align_angles(a: Tensor, phi: Tensor) -> dict:
    """The best reflection s ∈ {+1, −1} and offset c with φ ≈ s a + c (mod 2π), for true angles
    a [n] and measured angles φ [n]: c is the circular mean of φ − s a, s the sign whose residuals
    have the smaller mean square.  Returns s, c (radians) and the residuals wrap(φ − s a − c) [n]
    (radians), with their RMS, mean absolute and max absolute values in degrees."""
    best = None
    for s in (1.0, -1.0):
        d = wrap(phi - s * a)
        c = torch.atan2(torch.sin(d).mean(), torch.cos(d).mean())
        r = wrap(d - c)
        rms = r.square().mean().sqrt()
        if best is None or rms < best["rms"]:
            best = {"sign": s, "offset": c.item(), "residual": r, "rms": rms}
    r = best["residual"]
    deg = 180 / math.pi
    return {
        "sign": best["sign"],
        "offset": best["offset"],
        "residual": r,
        "rms_deg": r.square().mean().sqrt().item() * deg,
        "mae_deg": r.abs().mean().item() * deg,
        "max_deg": r.abs().max().item() * deg,
    }


class ConvGenerator(nn.Module):
    """g(z): z [n, 2] → patches [n, 256]: Linear(2, 64), ReLU, Linear(64, 32·4·4), ReLU,
    ConvTranspose2d(32, 16, 4, stride 2, padding 1) (8×8), ReLU, ConvTranspose2d(16, 1, 4, 2, 1) (16×16)."""

    def __init__(self, hidden: int = 64, channels: int = 32):
        super().__init__()
        self.channels = channels
        self.fc = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, channels * 16), nn.ReLU())
        self.conv = nn.Sequential(
            nn.ConvTranspose2d(channels, channels // 2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(channels // 2, 1, 4, stride=2, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        h = self.fc(z.reshape(-1, 2)).reshape(-1, self.channels, 4, 4)
        return self.conv(h).reshape(*lead, SIZE * SIZE)


class GaborModel(nn.Module):
    """a ~ U[−π, π), x | a ~ N(g_θ(sin a, cos a), σ² I_256) (module docstring).

    Args:
        noise: initial σ > 0; hidden, channels: sizes of :class:`ConvGenerator`.

    Raises:
        ValueError: noise not positive.
    """

    data_dim = SIZE * SIZE

    def __init__(self, noise: float = 0.5, hidden: int = 64, channels: int = 32):
        super().__init__()
        if not noise > 0:
            raise ValueError(f"noise must be > 0, got {noise!r}")
        self.generator = ConvGenerator(hidden, channels)
        self.log_s = nn.Parameter(torch.tensor(math.log(noise)))

    def p_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters()) + [self.log_s]

    def q_parameters(self) -> list[nn.Parameter]:
        """None: there is no proposal."""
        return []

    def mean(self, a: Tensor) -> Tensor:
        """g_θ(sin a, cos a) [*S, 256] for angles a [*S]."""
        return self.generator(torch.stack([torch.sin(a), torch.cos(a)], -1))

    def log_prior(self, a: Tensor) -> Tensor:
        """log p(a) = −log 2π for every a [*S] (uniform, fixed), [*S], nats."""
        return torch.full_like(a, -math.log(2 * math.pi))

    def log_joint(self, x: Tensor, a: Tensor) -> Tensor:
        """log p_θ(x, a) [*S, B] for x [B, 256] and a [*S, B] (radians), nats."""
        d = x.shape[-1]
        s2 = torch.exp(2 * self.log_s)
        log_lik = -0.5 * (x - self.mean(a)).square().sum(-1) / s2 - d * self.log_s - 0.5 * d * math.log(2 * math.pi)
        return self.log_prior(a) + log_lik

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """n draws: a [n] (radians, uniform), x [n, 256]; no gradient."""
        with torch.no_grad():
            a = (torch.rand(n, dtype=self.log_s.dtype, device=self.log_s.device) * 2 - 1) * math.pi
            return a, self.mean(a) + self.log_s.exp() * torch.randn(n, SIZE * SIZE, dtype=a.dtype, device=a.device)

    def exponential_family(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """η(a) = (g(a)/σ², −1/(2σ²)) [n, 257] and Ψ(a) = ‖g(a)‖²/(2σ²) + D log σ + (D/2) log 2π [n]."""
        return isotropic_normal_exponential_family(self.mean(a), self.log_s)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        """S(x) = (x, ‖x‖²) [n, 257]."""
        return isotropic_normal_statistics(x)


def gabor(data_dim: int = SIZE * SIZE) -> GaborModel:
    """The factory of ``--model examples/gabor.py:gabor``: a fresh model (σ = 0.5).

    Raises:
        ValueError: data_dim ≠ 256.
    """
    if data_dim != SIZE * SIZE:
        raise ValueError(f"the Gabor model's data are 16×16 patches: width 256, got {data_dim}")
    return GaborModel()


def sweep_error(model: GaborModel, n: int = 360) -> tuple[Tensor, Tensor, dict]:
    """Decode n equally spaced angles, measure each decoded patch's orientation and align
    (:func:`align_angles`): (a [n], φ [n], the alignment)."""
    a = torch.arange(n, dtype=torch.float32) * (2 * math.pi / n) - math.pi
    with torch.no_grad():
        phi = measure_orientation(model.mean(a))
    return a, phi, align_angles(a, phi)


def plot(model: GaborModel, path: Path, fit: dict, cols: int = 12) -> Path:
    """Rows of true and decoded patches over a sweep of angles (the decoded angle mapped by the
    fitted reflection and offset, so that columns correspond), and the decoded orientation against
    the angle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = torch.arange(cols, dtype=torch.float32) * (2 * math.pi / cols) - math.pi
    # the latent that should decode to orientation a under the fitted map φ = s·latent + c
    latent = fit["sign"] * (a - fit["offset"])
    with torch.no_grad():
        true, dec = gabor_patches(a), model.mean(latent)
    a_s, phi, _ = sweep_error(model)
    fig = plt.figure(figsize=(cols * 0.8, 4.6))
    gs = fig.add_gridspec(3, cols, height_ratios=[1, 1, 2.2])
    lim = max(true.abs().max().item(), dec.abs().max().item())
    for j in range(cols):
        for i, (img, name) in enumerate(((true, "true"), (dec, "decoded"))):
            ax = fig.add_subplot(gs[i, j])
            ax.imshow(img[j].reshape(SIZE, SIZE).numpy(), cmap="gray", vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if i == 0:
                ax.set_title(f"{math.degrees(a[j].item()):.0f}°", fontsize=7)
    ax = fig.add_subplot(gs[2, :])
    deg = 180 / math.pi
    ax.plot(a_s.numpy() * deg, phi.numpy() * deg, ".", ms=2, label="decoded orientation φ")
    ax.plot(a_s.numpy() * deg, wrap(fit["sign"] * a_s + fit["offset"]).numpy() * deg, "-", lw=0.8, label=f"fit φ = {fit['sign']:+.0f}·a + c")
    ax.set_xlabel("latent angle a (degrees)")
    ax.set_ylabel("φ (degrees)")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"residual after best rotation+reflection: RMS {fit['rms_deg']:.2f}°, max {fit['max_deg']:.2f}°", fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=80)  # whole or not at all: an interrupted run leaves no half-written PNG
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    """Train by ALWS (exact kernel ridge regression by default, no proposal) on noisy Gabor patches; print the orientation
    error of the decoded sweep after the best rotation+reflection, and write the figure."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="training patches")
    p.add_argument("--steps", type=int, default=400, help="ALWS steps (each: one wake batch)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--sleep-samples", type=int, default=2000)
    p.add_argument("--krr", default="exact", choices=["exact", "rff", "nystrom"], help="kernel ridge regression: exact, random features, Nyström")
    p.add_argument("--features", type=int, default=500, help="random Fourier features of the kernel (--krr rff)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lr-kernel", type=float, default=1e-2)
    p.add_argument("--max-seconds", type=float, default=None, help="CPU-time budget of training (process clock)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/gabor")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    t0 = time.process_time()
    torch.manual_seed(a.seed)
    _, x = make_data(a.n, a.seed)
    a_test, x_test = make_data(1000, a.seed + 1)
    model = GaborModel()
    _, _, fit0 = sweep_error(model)
    est = ws.ALWS(sleep_samples=a.sleep_samples, target="auto", krr=a.krr, num_features=a.features, lam=1e-3, valid_samples=500, seed=a.seed)
    steps_per_epoch = max(1, a.n // a.batch_size)
    epochs = max(1, math.ceil(a.steps / steps_per_epoch))
    result = ws.train(
        model,
        est,
        x,
        None,
        epochs=epochs,
        batch_size=a.batch_size,
        lr_p=a.lr,
        lr_estimator=a.lr_kernel,
        patience=None,
        progress=not a.no_progress,
        seed=a.seed,
        max_seconds=a.max_seconds,
        clock="process",
    )
    _, _, fit = sweep_error(model)
    # the data's own floor: the measure on noisy true patches
    data_fit = align_angles(a_test, measure_orientation(x_test))
    figure = plot(model, Path(a.out) / "gabor.png", fit)
    out = {
        "epochs_done": len(result.history),
        "steps_per_epoch": steps_per_epoch,
        "stopped": result.stopped,
        "sleep_samples": a.sleep_samples,
        "noise_learned": model.log_s.exp().item(),
        "noise_true": NOISE,
        "orientation_rms_deg_start": fit0["rms_deg"],
        "orientation_rms_deg": fit["rms_deg"],
        "orientation_mae_deg": fit["mae_deg"],
        "orientation_max_deg": fit["max_deg"],
        "orientation_sign": fit["sign"],
        "orientation_offset_deg": math.degrees(fit["offset"]),
        "data_orientation_rms_deg": data_fit["rms_deg"],
        "cpu_seconds": time.process_time() - t0,
    }
    print(f"figure: {figure}")
    print(key_lines(out))
    return out


if __name__ == "__main__":
    main()
