"""A DCGAN-style image generator with 16 Gaussian latents, as a user's own model on the model
contract, trainable by ALWS, the VAE and RWS with the same generator (Wenliang, Moskovitz,
Kanagawa & Sahani 2020, "Amortised learning by wake-sleep", ICML, §5.4; ALGORITHMS.md §7.4).

    z ~ N(0, I₁₆),   ℓ(z) = G_θ(z) ∈ ℝ^{28×28} (logits),
    binary:  x | z ~ Bernoulli(σ(ℓ(z)))                        (per pixel),
    grey:    x | z ~ N(σ(ℓ(z)), s² I₇₈₄),  s = 0.01 + softplus(ρ) learned, one for all pixels.

G_θ (DCGAN-style, Radford, Metz & Chintala 2016, without batch normalisation, so that a sample's
density does not depend on the other samples in its batch): Linear(16 → 2w·7·7), ReLU,
ConvTranspose(2w → w, 4×4, stride 2) to 14×14, ReLU, ConvTranspose(w → 1, 4×4, stride 2) to
28×28; ``width`` w (the paper's code is not recoverable; w = 64 is DCGAN-like, smaller w is
cheaper on a CPU).  The grey-level mean σ(ℓ) lies in (0, 1), so the means are images that FID
can score; a single s avoids the degenerate per-pixel variances of MNIST's always-black border.

Both likelihoods are exponential families in x (ALWS's exponential-family target, the paper's
Algorithm 1): binary η = ℓ, S(x) = x, Ψ = Σ softplus(ℓ); grey η = (μ/s², −1/(2s²)), S(x) = (x, ‖x‖²),
Ψ = ‖μ‖²/(2s²) + D log s + (D/2) log 2π with μ = σ(ℓ), D = 784 (log h(x) = 0).

The proposal q_φ(z | x) = N(m_φ(x), diag e^{2 v_φ(x)}) (for RWS, the VAE, and importance-sampled
evaluation; ALWS does not use it): ``encoder="conv"``: Conv(1 → w, 4×4, stride 2), ReLU,
Conv(w → 2w, 4×4, stride 2), ReLU, Linear(2w·7·7 → 32); ``encoder="mlp"``: 784 → 400 → 32
(tanh).  Reparameterisable (VAE, IWAE).

Shapes (the contract, ``wakesleep.models.contract``): x [B, 784]; z a tensor [*S, B, 16];
``log_joint``/``log_proposal`` [*S, B] in nats.  ``sample_mean(n)`` gives E[x | z] [n, 784]
(what ``wakesleep sample`` draws).

    wakesleep train --model examples/dcgan.py:binary --dataset binarized-mnist --algorithm vae
    wakesleep train --model examples/dcgan.py:grey --dataset mnist-gray --algorithm rws

``experiments/alws_images.py`` trains it by ALWS, the VAE and RWS and scores the samples by
FID and KID (:mod:`wakesleep.lab.quality`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from wakesleep.models.distributions import isotropic_normal_exponential_family, isotropic_normal_statistics

LATENTS = 16
PIXELS = 784
LIKELIHOODS = ("bernoulli", "gaussian")
ENCODERS = ("conv", "mlp")


class DCGANModel(nn.Module):
    """The DCGAN-style generator with its proposal (module docstring).

    Args:
        likelihood: ``"bernoulli"`` (binary images) or ``"gaussian"`` (grey levels in [0, 1]).
        width: w, channels of the 14×14 layer (2w at 7×7).
        encoder: ``"conv"`` or ``"mlp"``, the proposal's network.
        noise: the grey-level model's initial s (> 0.01).

    Raises:
        ValueError: an unknown likelihood or encoder, width < 1, or noise ≤ 0.01.
    """

    data_dim = PIXELS
    reparameterizable = True
    has_exponential_family = True

    def __init__(self, likelihood: str = "bernoulli", width: int = 64, encoder: str = "conv", noise: float = 0.2):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        if not (isinstance(width, int) and width >= 1):
            raise ValueError(f"width must be an integer >= 1, got {width!r}")
        if not noise > 0.01:
            raise ValueError(f"noise (the grey-level model's initial s) must be > 0.01, got {noise!r}")
        self.likelihood, self.width, self.encoder_name = likelihood, width, encoder
        self.binary_data = likelihood == "bernoulli"
        w = width
        self.generator = nn.Sequential(
            nn.Linear(LATENTS, 2 * w * 49),
            nn.ReLU(),
            nn.Unflatten(1, (2 * w, 7, 7)),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(w, 1, 4, stride=2, padding=1),
            nn.Flatten(),
        )
        # s = 0.01 + softplus(ρ): one noise scale for all pixels (the grey-level model only)
        self.noise_raw = nn.Parameter(torch.tensor(math.log(math.expm1(noise - 0.01))), requires_grad=likelihood == "gaussian")
        if encoder == "conv":
            self.encoder = nn.Sequential(
                nn.Unflatten(1, (1, 28, 28)),
                nn.Conv2d(1, w, 4, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(w, 2 * w, 4, stride=2, padding=1),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(2 * w * 49, 2 * LATENTS),
            )
        else:
            self.encoder = nn.Sequential(nn.Linear(PIXELS, 400), nn.Tanh(), nn.Linear(400, 2 * LATENTS))

    # ------------------------------------------------------------ parameters
    def p_parameters(self) -> list[nn.Parameter]:
        """θ: the generator (and s for the grey-level model)."""
        return list(self.generator.parameters()) + ([self.noise_raw] if self.likelihood == "gaussian" else [])

    def q_parameters(self) -> list[nn.Parameter]:
        """φ: the encoder."""
        return list(self.encoder.parameters())

    @property
    def noise(self) -> Tensor:
        """s, the grey-level model's pixel noise scale (0-d)."""
        return 0.01 + F.softplus(self.noise_raw)

    # ------------------------------------------------------------ generator
    def logits(self, z: Tensor) -> Tensor:
        """ℓ(z) [*S, 784] for z [*S, 16]."""
        lead = z.shape[:-1]
        return self.generator(z.reshape(-1, LATENTS)).reshape(*lead, PIXELS)

    def log_prior(self, z: Tensor) -> Tensor:
        """log N(z; 0, I) [*S] for z [*S, 16], nats."""
        return -0.5 * z.square().sum(-1) - 0.5 * LATENTS * math.log(2 * math.pi)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x | z) [*S, B] for x [B, 784], z [*S, B, 16], nats."""
        logits = self.logits(z)
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        s = self.noise
        return -0.5 * (x - torch.sigmoid(logits)).square().sum(-1) / s**2 - PIXELS * (torch.log(s) + 0.5 * math.log(2 * math.pi))

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x, z) [*S, B] for x [B, 784], z [*S, B, 16], nats."""
        return self.log_prior(z) + self.log_likelihood(x, z)

    def mean(self, z: Tensor) -> Tensor:
        """E[x | z] = σ(ℓ(z)) [*S, 784]."""
        return torch.sigmoid(self.logits(z))

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """n draws: z [n, 16], x [n, 784] (binary, or grey levels with Gaussian noise); no gradient."""
        with torch.no_grad():
            z = torch.randn(n, LATENTS, device=self.noise_raw.device, dtype=self.noise_raw.dtype)
            m = self.mean(z)
            x = torch.bernoulli(m) if self.likelihood == "bernoulli" else m + self.noise * torch.randn_like(m)
            return z, x

    def sample_mean(self, n: int) -> Tensor:
        """E[x | z] [n, 784] for n draws z ~ N(0, I), in (0, 1); no gradient."""
        with torch.no_grad():
            return self.mean(torch.randn(n, LATENTS, device=self.noise_raw.device, dtype=self.noise_raw.dtype))

    # ------------------------------------------------------------ exponential family (ALWS)
    def exponential_family(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(η [n, S], Ψ [n]) of p(x | z) for z [n, 16] (module docstring): S = 784 (binary) or 785 (grey)."""
        logits = self.logits(z)
        if self.likelihood == "bernoulli":
            return logits, F.softplus(logits).sum(-1)
        return isotropic_normal_exponential_family(torch.sigmoid(logits), torch.log(self.noise))

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        """S(x): x [n, 784] (binary) or (x, ‖x‖²) [n, 785] (grey)."""
        if self.likelihood == "bernoulli":
            return x
        return isotropic_normal_statistics(x)

    # ------------------------------------------------------------ proposal
    def _q(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m, v = self.encoder(x).chunk(2, -1)
        return m, v.clamp(-8.0, 4.0)

    def propose(self, x: Tensor, k: int, reparameterize: bool = False) -> tuple[Tensor, Tensor]:
        """K draws z ~ q_φ(z | x): z [K, B, 16] (detached unless ``reparameterize``), log q [K, B]
        (nats, differentiable in φ)."""
        m, v = self._q(x)
        eps = torch.randn(k, *m.shape, device=m.device, dtype=m.dtype)
        z = m + v.exp() * eps
        if not reparameterize:
            z = z.detach()
        return z, self._log_normal(z, m, v)

    def log_proposal(self, x: Tensor, z: Tensor) -> Tensor:
        """log q_φ(z | x) [*S, B] for x [B, 784], z [*S, B, 16], nats."""
        m, v = self._q(x)
        return self._log_normal(z, m, v)

    @staticmethod
    def _log_normal(z: Tensor, m: Tensor, v: Tensor) -> Tensor:
        return (-0.5 * ((z - m) / v.exp()).square() - v - 0.5 * math.log(2 * math.pi)).sum(-1)


def _check_dim(data_dim: int) -> None:
    if data_dim != PIXELS:
        raise ValueError(f"the DCGAN model draws 28×28 images: data width 784, got {data_dim}")


def binary(data_dim: int = PIXELS, width: int = 64, encoder: str = "conv") -> DCGANModel:
    """``--model examples/dcgan.py:binary``: the Bernoulli model (binarised MNIST).

    Raises:
        ValueError: data_dim ≠ 784, or bad settings.
    """
    _check_dim(data_dim)
    return DCGANModel("bernoulli", width, encoder)


def grey(data_dim: int = PIXELS, width: int = 64, encoder: str = "conv") -> DCGANModel:
    """``--model examples/dcgan.py:grey``: the Gaussian model (grey-level MNIST scaled to [0, 1]).

    Raises:
        ValueError: data_dim ≠ 784, or bad settings.
    """
    _check_dim(data_dim)
    return DCGANModel("gaussian", width, encoder)
