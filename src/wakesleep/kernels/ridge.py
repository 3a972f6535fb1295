"""Kernel ridge regression for ALWS: exact (Cholesky), Nyström and random-Fourier-feature solvers.

A = (K_ss + λI)⁻¹ K_sw, Ĵ = Aᵀ t, with a learned log λ and the kernel-learning loss
``validation_loss`` (Wenliang et al. 2020, §3; ALGORITHMS.md §4).
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
from torch import Tensor, nn

from wakesleep.kernels.features import _as_2d, _check_dim
from wakesleep.kernels.stationary import StationaryKernel
from wakesleep.layers import register_learnable


class KernelRidgeError(ValueError):
    """A KRR linear system could not be factorised (not positive definite even after jitter)."""


class _SPDSolve(torch.autograd.Function):
    """X = M⁻¹ B for a symmetric positive definite M, given the lower Cholesky factor L of M
    (plus any jitter), computed elsewhere without gradient.

    The backward pass reuses L: dB = M⁻¹ G and dM = −(M⁻¹ G) Xᵀ, O(N² C) for B [N, C]. Autograd
    through ``torch.linalg.cholesky`` would instead cost O(N³) (triangular solves against the
    N × N gradient of L). Jitter added before factorising is a constant, so the gradient is the
    one of (M + jitter I)⁻¹ B with respect to M.
    """

    @staticmethod
    def forward(ctx, mat: Tensor, rhs: Tensor, chol: Tensor) -> Tensor:
        x = torch.cholesky_solve(rhs, chol)
        ctx.save_for_backward(chol, x)
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        chol, x = ctx.saved_tensors
        g = torch.cholesky_solve(grad, chol)
        d_mat = -(g @ x.mT) if ctx.needs_input_grad[0] else None
        return d_mat, (g if ctx.needs_input_grad[1] else None), None


def _spd_solve(mat: Tensor | None, rhs: Tensor, chol: Tensor) -> Tensor:
    """M⁻¹ rhs through ``_SPDSolve`` (``mat`` None: no gradient w.r.t. M is wanted)."""
    if mat is None or not torch.is_grad_enabled():
        return torch.cholesky_solve(rhs, chol)
    return _SPDSolve.apply(mat, rhs, chol)


Method = Literal["exact", "nystrom", "rff"]


class KernelRidge(nn.Module):
    """Kernel ridge regression for ALWS (Wenliang et al. 2020, §3; ALGORITHMS.md §4).

    Sleep inputs x_sleep [N, D], wake/query inputs [M, D]. The KRR weights are
    A = (K_ss + λI)⁻¹ K_sw [N, M] and the prediction for sleep targets t [N, C] is Aᵀ t [M, C].
    Targets and right-hand sides may also be 1-D ([N] / [M]); outputs then drop the last dim.

    Args:
        kernel: a ``StationaryKernel`` (registered; its bandwidth and feature map are learned).
        lam: initial ridge λ > 0 (not scaled by N). λ = 0 is allowed only with learn_lam=False.
        method: "exact" (Cholesky of K_ss + λI, O(N³/3 + N²(D + M))),
            "nystrom" (m = num_inducing inducing points among the sleep inputs, O(N m² + m³)),
            "rff" (random Fourier features, primal solve, O(N F² + F³) with F = num_features).
        num_inducing: m for "nystrom" (capped at N on each call). K_mm always gets jitter
            m·eps·mean diag (eps of the dtype), more if its Cholesky still fails.
        num_features: F for "rff"; must be even (F/2 frequencies, each giving a cos and a sin).
        learn_lam: if True ``log_lam`` is an ``nn.Parameter``, else a buffer.
        inducing: "random" (a fresh random subset of the sleep inputs on every call) or "first"
            (the first m sleep inputs) for "nystrom".
        generator: ``torch.Generator`` (CPU) for the Nyström subsets and the random-feature
            frequencies; default: a generator seeded with ``seed``.
        seed: seed of the default generator.
        max_jitter_tries: how many times a failed Cholesky is retried with jitter
            1e-6·mean|diag|, growing ×10 each time.

    Raises ``ValueError`` on bad arguments (``TypeError`` for a kernel that is not a
    ``StationaryKernel``; ``NotImplementedError`` for "rff" with a kernel lacking a spectral
    sampler). Solves raise ``KernelRidgeError`` (a ``ValueError``)
    when K + λI is not positive definite even with the largest jitter; the first successful retry
    with jitter issues a ``RuntimeWarning`` (once per instance).

    Gradients: all outputs are differentiable w.r.t. the kernel parameters, λ and the
    targets/right-hand side. For the ALWS model step A must be a constant: call ``solve`` under
    ``torch.no_grad()`` (or detach it) and contract with the targets that carry the θ-gradient,
    e.g. ``(krr.solve(xs, xw, R).detach() * t).sum()`` with R = ones[M, 1]/M gives
    mean_m Ĵ(x_m) for t [N, 1].

    Example (one ALWS iteration; ``t_*`` are the regression targets at the sleep samples)::

        >>> krr = KernelRidge(GaussianKernel(features=LinearFeatures(5, 3)), lam=1e-3)
        >>> x_s, x_v, x_w = torch.randn(200, 5), torch.randn(100, 5), torch.randn(16, 5)
        >>> _ = krr.kernel.init_bandwidth_(x_s)
        >>> t_s, t_v = x_s[:, :1].sin(), x_v[:, :1].sin()
        >>> krr.validation_loss(x_s, t_s, x_v, t_v).backward()   # kernel-learning step
        >>> with torch.no_grad():                                 # model step: A is constant
        ...     w = krr.solve(x_s, x_w, torch.full((16, 1), 1 / 16))
        >>> w.shape                                               # surrogate: (w * t_theta).sum()
        torch.Size([200, 1])
    """

    def __init__(
        self,
        kernel: StationaryKernel,
        lam: float = 1e-3,
        method: Method = "exact",
        num_inducing: int = 500,
        num_features: int = 1000,
        learn_lam: bool = True,
        inducing: Literal["random", "first"] = "random",
        generator: torch.Generator | None = None,
        seed: int = 0,
        max_jitter_tries: int = 4,
    ):
        super().__init__()
        if not isinstance(kernel, StationaryKernel):
            raise TypeError(f"kernel must be a StationaryKernel, got {type(kernel).__name__}")
        if method not in ("exact", "nystrom", "rff"):
            raise ValueError(f"method must be 'exact', 'nystrom' or 'rff', got {method!r}")
        if inducing not in ("random", "first"):
            raise ValueError(f"inducing must be 'random' or 'first', got {inducing!r}")
        if not math.isfinite(lam) or lam < 0 or (lam == 0 and learn_lam):
            raise ValueError(f"lam must be > 0 (or exactly 0 with learn_lam=False), got {lam!r}")
        _check_dim("num_inducing", num_inducing)
        _check_dim("num_features", num_features)
        if method == "rff" and num_features % 2:
            raise ValueError(f"num_features must be even for 'rff' (cos/sin pairs), got {num_features}")
        if max_jitter_tries < 0:
            raise ValueError(f"max_jitter_tries must be >= 0, got {max_jitter_tries}")
        self.kernel = kernel
        self.method = method
        self.num_inducing = num_inducing
        self.num_features = num_features
        self.inducing = inducing
        self.max_jitter_tries = max_jitter_tries
        self._generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self._warned_jitter = False
        register_learnable(self, "log_lam", torch.tensor(math.log(lam) if lam > 0 else -math.inf), learn_lam)
        # Unit-bandwidth frequencies, fixed after drawing; [F/2, feature dim] (empty until drawn
        # when the feature width is unknown at construction).
        self.register_buffer("rff_frequencies", torch.empty(0, 0))
        if method == "rff":
            dim = getattr(kernel.features, "out_dim", None)
            if dim is not None:
                self._draw_frequencies(dim)
            else:  # check now that the kernel has a spectral sampler
                kernel.spectral_frequencies(1, 1, torch.Generator().manual_seed(0))

    # ---- parameters -------------------------------------------------------------------------

    @property
    def lam(self) -> Tensor:
        """λ = exp(log_lam), a 0-d tensor (differentiable when learned)."""
        return self.log_lam.exp()

    def extra_repr(self) -> str:
        extra = {"nystrom": f", num_inducing={self.num_inducing}, inducing={self.inducing!r}", "rff": f", num_features={self.num_features}"}.get(
            self.method, ""
        )
        return f"method={self.method!r}{extra}"

    def _draw_frequencies(self, dim: int) -> None:
        freqs = self.kernel.spectral_frequencies(self.num_features // 2, dim, self._generator)
        self.rff_frequencies = freqs.to(device=self.log_lam.device, dtype=self.log_lam.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "rff_frequencies"
        if key in state_dict and self.rff_frequencies.shape != state_dict[key].shape:
            if self.rff_frequencies.numel() == 0:  # not yet drawn: adopt the saved frequencies
                self.rff_frequencies = torch.empty_like(state_dict[key], device=self.log_lam.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- linear algebra ---------------------------------------------------------------------

    def _cholesky(
        self,
        mat: Tensor,
        what: str,
        *,
        first_jitter: float = 1e-6,
        tries: int | None = None,
        warn: bool = True,
        fix: str = "increase lam (λ)",
    ) -> Tensor:
        """Lower Cholesky factor of the symmetric matrix ``mat``; if that fails, retry with
        jitter first_jitter·mean|diag| on the diagonal, growing ×10, ``tries`` times."""
        L, info = torch.linalg.cholesky_ex(mat)
        if not bool(info.any()):
            return L
        if not bool(torch.isfinite(mat).all()):
            raise KernelRidgeError(
                f"{what} contains NaN or inf (check the inputs, bandwidth {self.kernel.bandwidth.item():.3g} and lam (λ) = {self.lam.item():.3g})"
            )
        tries = self.max_jitter_tries if tries is None else tries
        scale = mat.detach().diagonal().abs().mean().clamp_min(torch.finfo(mat.dtype).tiny)
        eye = torch.eye(mat.shape[0], dtype=mat.dtype, device=mat.device)
        jitter = first_jitter * scale
        for _ in range(tries):
            L, info = torch.linalg.cholesky_ex(mat + jitter * eye)
            if not bool(info.any()):
                if warn and not self._warned_jitter:
                    warnings.warn(
                        f"{what} is not positive definite with lam (λ) = {self.lam.item():.3g}; "
                        f"added jitter {jitter.item():.3g} to its diagonal. Consider a larger lam.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                    self._warned_jitter = True
                return L
            jitter = jitter * 10.0
        last = (jitter / 10).item() if tries else 0.0
        raise KernelRidgeError(
            f"{what} is not positive definite with lam (λ) = {self.lam.item():.3g}, even after adding jitter up to {last:.3g} to its diagonal; {fix}."
        )

    def _add_lam(self, mat: Tensor) -> Tensor:
        """mat + λI for a freshly computed square ``mat``, without a dense identity (these N × N
        passes are memory-bound); in place when no gradient is being recorded."""
        lam = self.lam.to(mat.dtype)
        if torch.is_grad_enabled() and (mat.requires_grad or lam.requires_grad):
            mat = mat.clone()
        mat.diagonal().add_(lam)
        return mat

    def _check(self, x_sleep: Tensor, x_query: Tensor, other: Tensor, rows: int, name: str, chol: Tensor | tuple[Tensor, Tensor] | None = None):
        if chol is not None and self.method != "exact":
            raise ValueError(f"chol (a reused Cholesky factor) is for method='exact', not {self.method!r}")
        _as_2d("x_sleep", x_sleep)
        _as_2d("x_query" if name == "targets" else "x_wake", x_query)
        if x_sleep.shape[1] != x_query.shape[1]:
            raise ValueError(f"sleep and wake/query inputs differ in width: {x_sleep.shape[1]} vs {x_query.shape[1]}")
        if other is not None:
            if other.dim() not in (1, 2) or other.shape[0] != rows:
                raise ValueError(f"{name} must have shape [{rows}] or [{rows}, C], got {tuple(other.shape)}")

    def _primal_features(self, x_sleep: Tensor, x_query: Tensor) -> tuple[Tensor, Tensor]:
        """Explicit features Φ_s [N, F], Φ_q [M, F] with ΦΦᵀ ≈ K for "nystrom" and "rff"."""
        fs, fq = self.kernel.featurize(x_sleep, x_query)
        if self.method == "rff":
            if self.rff_frequencies.numel() == 0:
                self._draw_frequencies(fs.shape[1])
            omega = self.rff_frequencies
            if omega.shape[1] != fs.shape[1]:
                raise ValueError(f"random-feature frequencies have width {omega.shape[1]} but the kernel features have width {fs.shape[1]}")
            omega = omega.to(fs.dtype) / self.kernel.bandwidth.to(fs.dtype)
            norm = math.sqrt(omega.shape[0])

            def phi(f: Tensor) -> Tensor:
                proj = f @ omega.mT
                return torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1) / norm

            return phi(fs), phi(fq)
        # Nyström: Φ = K_·m L⁻ᵀ with L Lᵀ = K_mm (+ jitter if needed), so ΦΦᵀ = K_·m K_mm⁻¹ K_m·.
        n = fs.shape[0]
        m = min(self.num_inducing, n)
        if self.inducing == "first" or m == n:
            fm = fs[:m]
        else:
            idx = torch.randperm(n, generator=self._generator)[:m].to(fs.device)
            fm = fs[idx]
        k_mm = self.kernel.gram_features(fm)
        # K_mm is near-singular whenever inducing points are close: always add jitter
        # m·eps·mean diag (the roundoff level of an m×m Cholesky), more if that fails (no warning).
        rel = m * torch.finfo(k_mm.dtype).eps
        jitter = rel * k_mm.detach().diagonal().abs().mean()
        L = self._cholesky(
            k_mm + jitter * torch.eye(m, dtype=k_mm.dtype, device=k_mm.device),
            "K_mm",
            first_jitter=10 * rel,
            tries=8,
            warn=False,
            fix="use fewer inducing points or a larger bandwidth",
        )
        phi_s = torch.linalg.solve_triangular(L, self.kernel.gram_features(fm, fs), upper=False).mT
        phi_q = torch.linalg.solve_triangular(L, self.kernel.gram_features(fm, fq), upper=False).mT
        return phi_s, phi_q

    def _factor(self, mat: Tensor, what: str) -> tuple[Tensor, Tensor]:
        """(mat, its Cholesky factor computed without gradient), for ``_spd_solve``."""
        with torch.no_grad():
            return mat, self._cholesky(mat.detach(), what)

    def _primal_factor(self, phi_s: Tensor) -> tuple[Tensor, Tensor]:
        gram = phi_s.mT @ phi_s
        return self._factor(self._add_lam(gram), "ΦᵀΦ + λI")

    def _exact_factor(
        self, x_sleep: Tensor, x_query: Tensor, chol: Tensor | tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        """(K_ss + λI or None, its Cholesky factor, K_sq). With ``chol`` given and gradients
        off (or given as the pair (K_ss + λI, L)), K_ss is not formed again."""
        fs, fq = self.kernel.featurize(x_sleep, x_query)
        k_sq = self.kernel.gram_features(fs, fq)
        mat = None
        if isinstance(chol, tuple):
            mat, chol = chol
        if chol is not None:
            if chol.shape != (fs.shape[0], fs.shape[0]):
                raise ValueError(f"chol must be the [{fs.shape[0]}, {fs.shape[0]}] factor from cholesky(x_sleep), got {tuple(chol.shape)}")
            if mat is not None or not torch.is_grad_enabled():
                return mat, chol, k_sq
        mat = self._add_lam(self.kernel.gram_features(fs))
        if chol is not None:
            return mat, chol, k_sq
        mat, L = self._factor(mat, "K_ss + λI")
        return mat, L, k_sq

    def cholesky(self, x_sleep: Tensor, with_matrix: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Lower Cholesky factor L of K_ss + λI [N, N] (with jitter if needed), computed without
        gradient, for reuse by several exact solves on the same sleep inputs and kernel
        parameters (argument ``chol`` of ``solve``/``weights``/``predict``/``validation_loss``;
        ALWS's kernel and model steps share one factorisation, O(N³/3)). The caller must not
        change the kernel parameters or the sleep inputs between this call and the solves.

        With ``with_matrix=True`` returns the pair (K_ss + λI, L), the matrix carrying the
        gradient w.r.t. the kernel parameters and λ (when gradients are on): passed as ``chol``,
        differentiable solves then do not recompute K_ss (each pair serves one backward pass).

        Raises ``ValueError`` unless method == "exact", or if the feature map has batch norm
        (the sleep features then depend on the query batch); ``KernelRidgeError`` as ``solve``.
        """
        _as_2d("x_sleep", x_sleep)
        if self.method != "exact":
            raise ValueError(f"cholesky() is for method='exact', not {self.method!r}")
        if self.kernel._joint_features():
            raise ValueError(
                "cholesky() cannot be reused with batch-norm features (sleep features depend on the query batch); call solve/predict without chol"
            )
        with torch.set_grad_enabled(with_matrix and torch.is_grad_enabled()):
            (fs,) = self.kernel.featurize(x_sleep)
            mat, L = self._factor(self._add_lam(self.kernel.gram_features(fs)), "K_ss + λI")
        return (mat, L) if with_matrix else L

    @staticmethod
    def _as_cols(t: Tensor) -> tuple[Tensor, bool]:
        return (t[:, None], True) if t.dim() == 1 else (t, False)

    # ---- public API -------------------------------------------------------------------------

    def solve(self, x_sleep: Tensor, x_wake: Tensor, rhs: Tensor, chol: Tensor | tuple[Tensor, Tensor] | None = None) -> Tensor:
        """A @ rhs for A = (K_ss + λI)⁻¹ K_sw, without forming A.

        Shapes: x_sleep [N, D], x_wake [M, D], rhs [M, C] or [M] -> [N, C] or [N].
        Cost: exact O(N³/3 + N²D + NMD + NMC) (K_sw @ rhs first, then one Cholesky solve);
        nystrom O(N m² + m³ + M m C); rff O(N F² + F³ + (N + M) F D).
        For the ALWS model step with mean_m Ĵ(x_m) use rhs = ones[M, 1] / M (or the wake
        sufficient statistics / M) and treat the result as a constant (see class docstring).
        ``chol``: optional factor from ``cholesky(x_sleep)`` (exact only; L or the pair
        (K_ss + λI, L)), reused instead of factorising again. Raises ``ValueError`` on mismatched shapes, ``KernelRidgeError`` if
        not factorisable.
        """
        self._check(x_sleep, x_wake, rhs, x_wake.shape[0], "rhs", chol)
        r, squeeze = self._as_cols(rhs)
        if self.method == "exact":
            mat, L, k_sw = self._exact_factor(x_sleep, x_wake, chol)
            out = _spd_solve(mat, k_sw @ r.to(k_sw.dtype), L)
        else:
            phi_s, phi_w = self._primal_features(x_sleep, x_wake)
            mat, L = self._primal_factor(phi_s)
            out = phi_s @ _spd_solve(mat, phi_w.mT @ r.to(phi_w.dtype), L)
        return out[:, 0] if squeeze else out

    def weights(self, x_sleep: Tensor, x_wake: Tensor, chol: Tensor | tuple[Tensor, Tensor] | None = None) -> Tensor:
        """KRR weights A [N, M] with A[n, m] = α_n(x_m), so Ĵ(x_m) = Σ_n A[n, m] t_n.

        Shapes: x_sleep [N, D], x_wake [M, D] -> [N, M]. Cost: exact O(N³/3 + N² M);
        nystrom/rff O(N m² + m³ + N M m) with m = number of inducing points / features.
        ``chol`` as in ``solve``. Raises as ``solve``.
        """
        self._check(x_sleep, x_wake, None, 0, "", chol)
        if self.method == "exact":
            mat, L, k_sw = self._exact_factor(x_sleep, x_wake, chol)
            return _spd_solve(mat, k_sw, L)
        phi_s, phi_w = self._primal_features(x_sleep, x_wake)
        mat, L = self._primal_factor(phi_s)
        return phi_s @ _spd_solve(mat, phi_w.mT, L)

    def predict(self, x_sleep: Tensor, targets: Tensor, x_query: Tensor, chol: Tensor | tuple[Tensor, Tensor] | None = None) -> Tensor:
        """KRR prediction Ĵ(x_query) = Aᵀ targets, fitted on (x_sleep, targets).

        Shapes: x_sleep [N, D], targets [N, C] or [N], x_query [M, D] -> [M, C] or [M].
        Cost: exact O(N³/3 + N²C + N M (D + C)); nystrom/rff as ``solve``.
        Differentiable w.r.t. kernel parameters, λ and targets; the exact path's backward
        reuses the forward Cholesky factor (O(N² C), no O(N³) term). ``chol`` as in ``solve``.
        Raises as ``solve``.
        """
        self._check(x_sleep, x_query, targets, x_sleep.shape[0], "targets", chol)
        t, squeeze = self._as_cols(targets)
        if self.method == "exact":
            mat, L, k_sq = self._exact_factor(x_sleep, x_query, chol)
            out = k_sq.mT @ _spd_solve(mat, t.to(k_sq.dtype), L)
        else:
            phi_s, phi_q = self._primal_features(x_sleep, x_query)
            mat, L = self._primal_factor(phi_s)
            out = phi_q @ _spd_solve(mat, phi_s.mT @ t.to(phi_s.dtype), L)
        return out[:, 0] if squeeze else out

    def validation_loss(
        self,
        x_sleep: Tensor,
        t_sleep: Tensor,
        x_val: Tensor,
        t_val: Tensor,
        chol: Tensor | tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Kernel-learning loss of ALWS: mean over validation rows of ‖Ĵ(x_val) − t_val‖².

        Ĵ is the KRR fit on (x_sleep, t_sleep); both target sets are detached, so the gradient
        reaches only the kernel parameters (log bandwidth, log λ, feature network). The error is
        per sample, not the error of the mean prediction (a defect of the original code).

        Shapes: x_sleep [N, D], t_sleep [N, C] or [N], x_val [V, D], t_val [V, C] or [V]
        (same trailing shape as t_sleep) -> scalar. ``chol`` as in ``solve``. Raises
        ``ValueError`` on mismatched shapes.
        """
        t_sleep = t_sleep.detach()
        t_val = t_val.detach()
        _as_2d("x_val", x_val)
        if t_val.shape != (x_val.shape[0],) + tuple(t_sleep.shape[1:]):
            raise ValueError(f"t_val must have shape {(x_val.shape[0],) + tuple(t_sleep.shape[1:])}, got {tuple(t_val.shape)}")
        pred = self.predict(x_sleep, t_sleep, x_val, chol)
        err = (pred - t_val.to(pred.dtype)).square()
        return err.sum(-1).mean() if err.dim() == 2 else err.mean()
