"""Kernels and kernel ridge regression (KRR) for amortised learning by wake-sleep (ALWS).

Source: Wenliang, Moskovitz, Kanagawa & Sahani, "Amortised Learning by Wake-Sleep", ICML 2020,
arXiv 2002.09737, Section 3 and Appendix (kernels, kernel learning). See also
``reference/ALGORITHMS.md`` §4.

ALWS regresses a scalar (or a few) sleep-sample target(s) t(z_n, x_n) on x_n with KRR and
differentiates the prediction at the wake points. With sleep inputs ``X_s`` [N, D] and wake inputs
``X_w`` [M, D], the KRR weights are::

    A = (K_ss + λ I)⁻¹ K_sw                       [N, M]
    Ĵ(X_w) = Aᵀ t                                 [M, C]   for targets t [N, C]

λ is *not* scaled by N (as in the paper). Pieces:

* feature maps ``IdentityFeatures``, ``LinearFeatures``, ``MLPFeatures`` (learned, optional
  batch norm);
* stationary kernels on distances between features: ``GaussianKernel`` and ``MaternKernel``
  (ν ∈ {1/2, 3/2, 5/2}), each with a learned log-bandwidth;
* ``KernelRidge`` with an exact (Cholesky), Nyström, or random-Fourier-feature (primal) solver, a
  learned log λ, and the kernel-learning loss ``validation_loss``.

Every learnable quantity is a registered parameter (the original research code forgot to register
its random-feature network, so it was never trained), and the validation loss is the mean of the
per-sample squared errors (not the squared error of the mean prediction).
"""

from wakesleep.kernels.features import IdentityFeatures, LinearFeatures, MLPFeatures
from wakesleep.kernels.ridge import KernelRidge, KernelRidgeError
from wakesleep.kernels.stationary import GaussianKernel, MaternKernel, StationaryKernel

__all__ = [
    "IdentityFeatures",
    "LinearFeatures",
    "MLPFeatures",
    "StationaryKernel",
    "GaussianKernel",
    "MaternKernel",
    "KernelRidge",
    "KernelRidgeError",
]

#: The docstring examples of the re-exported classes, run by ``doctest.testmod(wakesleep.kernels)``.
__test__ = {"KernelRidge": KernelRidge}
