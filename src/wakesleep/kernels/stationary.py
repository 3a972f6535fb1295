"""Stationary kernels on distances between features: k(a, b) = κ(‖φ(a) − φ(b)‖ / σ), learned bandwidth σ.

``GaussianKernel`` and ``MaternKernel`` (ν ∈ {1/2, 3/2, 5/2}), with their spectral densities for
random Fourier features (Wenliang et al. 2020, §3 and Appendix).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from wakesleep.kernels.features import IdentityFeatures, _as_2d
from wakesleep.layers import register_learnable


class StationaryKernel(nn.Module):
    """Base class: k(a, b) = κ(‖φ(a) − φ(b)‖ / σ) for a feature map φ and learned bandwidth σ.

    Args:
        features: feature map module (default ``IdentityFeatures()``); its parameters are
            registered as part of the kernel.
        bandwidth: initial σ > 0 (see ``init_bandwidth_`` for the median heuristic).
        learn_bandwidth: if True ``log_bandwidth`` is an ``nn.Parameter``, else a buffer.

    Call ``kernel(a [N, D], b [M, D] | None) -> Gram [N, M]`` (b = None means b = a).
    Subclasses implement ``profile(sq)`` (κ as a function of the scaled squared distance) and
    ``spectral_frequencies`` (for random Fourier features).
    """

    def __init__(
        self,
        features: nn.Module | None = None,
        bandwidth: float = 1.0,
        learn_bandwidth: bool = True,
    ):
        super().__init__()
        if not bandwidth > 0 or not math.isfinite(bandwidth):
            raise ValueError(f"bandwidth must be positive and finite, got {bandwidth!r}")
        self.features = features if features is not None else IdentityFeatures()
        register_learnable(self, "log_bandwidth", torch.tensor(math.log(bandwidth)), learn_bandwidth)

    @property
    def bandwidth(self) -> Tensor:
        """σ = exp(log_bandwidth), a 0-d tensor (differentiable)."""
        return self.log_bandwidth.exp()

    def _joint_features(self) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.features.modules())

    def featurize(self, *xs: Tensor) -> tuple[Tensor, ...]:
        """φ of each input [N_i, D] -> [N_i, F]. If the feature map contains batch norm, all
        inputs go through in one pass so that they share the same normalisation."""
        if len(xs) > 1 and self._joint_features():
            out = self.features(torch.cat(xs, dim=0))
            return tuple(out.split([x.shape[0] for x in xs], dim=0))
        return tuple(self.features(x) for x in xs)

    def scaled_sqdist(self, fa: Tensor, fb: Tensor | None = None) -> Tensor:
        """‖fa_i − fb_j‖² / σ², clamped ≥ 0. fa [N, F], fb [M, F] or None (= fa) -> [N, M].

        Uses the matrix-product expansion after centring (cancellation is then relative to the
        spread of the points, not their offset); for fb = None the norms are read off the Gram
        diagonal, so identical rows get distance exactly 0.
        """
        inv = 1.0 / self.bandwidth
        center = fa.detach().mean(dim=0, keepdim=True)  # distances are translation invariant
        a = (fa - center) * inv
        if fb is None:
            gram = a @ a.mT
            norms = gram.diagonal()
            sq = norms[:, None] + norms[None, :] - 2.0 * gram
        else:
            b = (fb - center) * inv
            sq = (a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * (a @ b.mT)
        return sq.clamp_min(0.0)

    def profile(self, sq: Tensor) -> Tensor:
        """κ as a function of the scaled squared distance r² = ‖Δφ‖²/σ²."""
        raise NotImplementedError

    def gram_features(self, fa: Tensor, fb: Tensor | None = None) -> Tensor:
        """Gram matrix from features: fa [N, F], fb [M, F] or None (= fa) -> [N, M]."""
        return self.profile(self.scaled_sqdist(fa, fb))

    def forward(self, a: Tensor, b: Tensor | None = None) -> Tensor:
        """Gram matrix k(a, b): a [N, D], b [M, D] or None (= a) -> [N, M].

        Raises ``ValueError`` for inputs that are not non-empty 2-D tensors of equal width.
        """
        _as_2d("a", a)
        if b is None:
            (fa,) = self.featurize(a)
            return self.gram_features(fa)
        _as_2d("b", b)
        if a.shape[1] != b.shape[1]:
            raise ValueError(f"a and b differ in width: {a.shape[1]} vs {b.shape[1]}")
        fa, fb = self.featurize(a, b)
        return self.gram_features(fa, fb)

    def spectral_frequencies(self, num: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
        """``num`` frequencies [num, dim] from the kernel's spectral density at unit bandwidth
        (Bochner's theorem): κ(‖δ‖) = E_ω cos(ω·δ). Divide by σ for bandwidth σ. Float64, CPU."""
        raise NotImplementedError(f"{type(self).__name__} has no spectral sampler")

    @torch.no_grad()
    def init_bandwidth_(self, x: Tensor, max_points: int = 1000, generator: torch.Generator | None = None) -> StationaryKernel:
        """Median heuristic: set σ to the median pairwise distance between features of distinct
        points of x [N, D]. If N > ``max_points`` only the points
        ``x[torch.randperm(N, generator=generator)[:max_points]]`` are used (generator default:
        one seeded 0), so the cost is O(max_points² F). Returns self.

        Raises ``ValueError`` if x has fewer than 2 points or the median distance is 0 or not
        finite (e.g. most points identical).
        """
        _as_2d("x", x)
        if x.shape[0] < 2:
            raise ValueError("init_bandwidth_ needs at least 2 points")
        if x.shape[0] > max_points:
            g = generator if generator is not None else torch.Generator().manual_seed(0)
            idx = torch.randperm(x.shape[0], generator=g)[:max_points].to(x.device)
            x = x[idx]
        (f,) = self.featurize(x)
        f = f - f.mean(dim=0, keepdim=True)
        gram = f @ f.mT
        norms = gram.diagonal()
        sq = (norms[:, None] + norms[None, :] - 2.0 * gram).clamp_min(0.0)
        iu = torch.triu_indices(f.shape[0], f.shape[0], offset=1, device=f.device)
        med = torch.quantile(sq[iu[0], iu[1]].sqrt().double(), 0.5).item()
        if not (med > 0 and math.isfinite(med)):
            raise ValueError(
                f"median pairwise feature distance is {med}; cannot set the bandwidth (are most points identical?) - pass bandwidth= explicitly"
            )
        self.log_bandwidth.fill_(math.log(med))
        return self


class GaussianKernel(StationaryKernel):
    """Gaussian (RBF) kernel k(a, b) = exp(−‖φ(a) − φ(b)‖² / (2σ²)).

    Spectral density at unit bandwidth: ω ~ N(0, I). See ``StationaryKernel`` for arguments.
    """

    def profile(self, sq: Tensor) -> Tensor:
        return torch.exp(-0.5 * sq)

    def spectral_frequencies(self, num, dim, generator=None):
        return torch.randn(num, dim, generator=generator, dtype=torch.float64)


class MaternKernel(StationaryKernel):
    """Matérn kernel with smoothness ν ∈ {0.5, 1.5, 2.5} on r = ‖φ(a) − φ(b)‖ / σ:

        ν = 1/2: exp(−r);  ν = 3/2: (1 + √3 r) e^{−√3 r};  ν = 5/2: (1 + √5 r + 5r²/3) e^{−√5 r}.

    r is computed as sqrt(r² + eps) (eps = 1e-12) so that gradients are finite at zero distance.
    Spectral density at unit bandwidth: multivariate Student-t with 2ν degrees of freedom,
    ω = z · sqrt(2ν / u), z ~ N(0, I), u ~ χ²(2ν).

    Raises ``ValueError`` for other ν. Other arguments as ``StationaryKernel``.
    """

    EPS = 1e-12

    def __init__(
        self,
        nu: float = 1.5,
        features: nn.Module | None = None,
        bandwidth: float = 1.0,
        learn_bandwidth: bool = True,
    ):
        if nu not in (0.5, 1.5, 2.5):
            raise ValueError(f"MaternKernel supports nu in {{0.5, 1.5, 2.5}}, got {nu!r}")
        super().__init__(features, bandwidth, learn_bandwidth)
        self.nu = float(nu)

    def profile(self, sq: Tensor) -> Tensor:
        r = torch.sqrt(sq + self.EPS)
        if self.nu == 0.5:
            return torch.exp(-r)
        if self.nu == 1.5:
            s = math.sqrt(3.0) * r
            return (1.0 + s) * torch.exp(-s)
        s = math.sqrt(5.0) * r
        return (1.0 + s + s * s / 3.0) * torch.exp(-s)

    def spectral_frequencies(self, num, dim, generator=None):
        df = int(round(2 * self.nu))  # 1, 3 or 5: χ²(df) as a sum of df squared normals
        z = torch.randn(num, dim, generator=generator, dtype=torch.float64)
        u = torch.randn(num, df, generator=generator, dtype=torch.float64).square().sum(-1)
        return z * torch.sqrt(df / u)[:, None]

    def extra_repr(self) -> str:
        return f"nu={self.nu}"
