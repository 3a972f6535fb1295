"""Amortised learning by wake-sleep (Wenliang, Moskovitz, Kanagawa & Sahani, ICML 2020, arXiv 2002.09737)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from wakesleep.estimators.base import Estimator, EstimatorOutput, check_positive_int
from wakesleep.estimators.ws import sleep_phase_loss
from wakesleep.kernels import GaussianKernel, IdentityFeatures, KernelRidge, MaternKernel, MLPFeatures
from wakesleep.models.contract import EXPONENTIAL_FAMILY, GENERATIVE, check_model, has_proposal, supports_exponential_family

TARGETS = ("auto", "generic", "exp_family")
KERNELS = ("gaussian", "matern12", "matern32", "matern52")
KRR_METHODS = ("exact", "nystrom", "rff")
FEATURES = ("identity", "mlp")
Q_UPDATES = (None, "sleep")


def build_kernel_ridge(
    kernel: str = "gaussian",
    krr: str = "exact",
    lam: float = 1e-3,
    num_features: int = 1000,
    num_inducing: int = 500,
    features: str = "identity",
    data_dim: int | None = None,
    feature_dim: int = 32,
    feature_hidden: Sequence[int] = (256,),
    learn: bool = True,
    seed: int = 0,
) -> KernelRidge:
    """A :class:`~wakesleep.kernels.KernelRidge` from names (the command line's choices).

    Args:
        kernel: ``"gaussian"`` or ``"matern12"``/``"matern32"``/``"matern52"`` (ν = ½, 3/2, 5/2).
        krr: ``"exact"`` (Cholesky), ``"nystrom"`` (``num_inducing`` points) or ``"rff"``
            (``num_features`` random Fourier features, solved in the primal).
        lam: initial ridge λ > 0 (not scaled by N; the paper starts at 1e-3, 1e-2 for 2-D data).
        features: ``"identity"`` (distances between the x themselves) or ``"mlp"`` (a learned
            network ``data_dim → feature_hidden → feature_dim``).
        learn: learn log-bandwidth, log λ and the feature network (else all fixed).
        seed: seed of the generator for random features and Nyström subsets.

    Raises:
        ValueError: an unknown name, or ``features="mlp"`` without ``data_dim``.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if krr not in KRR_METHODS:
        raise ValueError(f"krr must be one of {KRR_METHODS}, got {krr!r}")
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    if features == "mlp":
        if data_dim is None:
            raise ValueError("features='mlp' needs data_dim (the width D of x) to build the network")
        fmap = MLPFeatures(check_positive_int("data_dim", data_dim), tuple(feature_hidden), feature_dim)
        if not learn:
            fmap.requires_grad_(False)
    else:
        fmap = IdentityFeatures(data_dim)
    if kernel == "gaussian":
        k = GaussianKernel(features=fmap, learn_bandwidth=learn)
    else:
        k = MaternKernel({"matern12": 0.5, "matern32": 1.5, "matern52": 2.5}[kernel], features=fmap, learn_bandwidth=learn)
    return KernelRidge(k, lam=lam, method=krr, num_features=num_features, num_inducing=num_inducing, learn_lam=learn, seed=seed)


#: The kernel ridge regression's settings (name -> parameter) that ALWS takes: build_kernel_ridge's
#: parameters but ``learn`` (ALWS's ``learn_kernel``) and ``seed`` (ALWS's own).
KERNEL_PARAMETERS = {n: p for n, p in inspect.signature(build_kernel_ridge).parameters.items() if n not in ("learn", "seed")}


def exp_family_prediction(
    krr: KernelRidge,
    x_sleep: Tensor,
    targets: Tensor,
    x_query: Tensor,
    stats_query: Tensor,
    chol: Tensor | tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Ĵ(x_q) = [Σ_n α_n(x_q) η_n]·S(x_q) − Σ_n α_n(x_q) c_n, the exponential-family prediction.

    Args:
        targets: [N, S + 1], the columns (η_n, c_n) at the sleep samples.
        stats_query: S(x_q) [Q, S].

    Returns:
        [Q], differentiable w.r.t. the kernel parameters (and the targets).  For the exact
        method with fewer query points than target columns the weights [N, Q] are formed
        (O(N² Q)) instead of solving for S + 1 columns (O(N² S)).
    """
    if krr.method == "exact" and x_query.shape[0] < targets.shape[1]:
        a = krr.weights(x_sleep, x_query, chol)  # [N, Q]
        return ((targets[:, :-1] @ stats_query.mT) * a).sum(0) - a.mT @ targets[:, -1]
    pred = krr.predict(x_sleep, targets, x_query, chol)
    return (pred[:, :-1] * stats_query).sum(-1) - pred[:, -1]


class ALWS(Estimator):
    r"""Amortised learning by wake-sleep: θ learned by kernel regression on sleep samples, no q.

    Fisher's identity ∇θ log p_θ(x) = E_{p_θ(z|x)}[∇θ log p_θ(x, z)] is a conditional expectation
    given x, hence the least-squares regression of ∇θ log p_θ(x, z) on x under p_θ.  Kernel ridge
    regression is linear in its targets, so it commutes with ∇θ: regress the *scalar*
    t_θ(z, x) on x over N sleep samples (z_n, x_n) ~ p_θ (drawn without gradient),

        A = (K_ss + λI)⁻¹ K_sw  [N, M]  (detached),      Ĵ_θ(x_m) = Σ_n A[n, m] t_θ(z_n, x_n),

    and ascend mean_m Ĵ_θ(x_m) over the wake batch x_1..x_M (Wenliang et al. 2020, §3;
    ALGORITHMS.md §4).  Targets:

    - ``"generic"``: t = log p_θ(x_n, z_n);
    - ``"exp_family"`` (the paper's Algorithm 1, proposed for lower variance; on factor analysis
      we measured lower bias, and lower spread only once the kernel is learned: docs/results.md),
      for p_θ(x | z) = h(x) exp(η_θ(z)·S(x) − Ψ_θ(z)):
      ``Ĵ_θ(x_m) = [Σ_n A[n, m] η_θ(z_n)]·S(x_m) − Σ_n A[n, m] [Ψ_θ(z_n) − log p_θ(z_n)]``
      (only functions of z are regressed; the wake point's exact S(x_m) multiplies them;
      log h(x) is dropped).  The prior's parameters learn through log p_θ(z_n).
    - ``"auto"``: ``"exp_family"`` when the model offers that view, else ``"generic"``.

    mean_m Ĵ is computed as Σ_n W_n · t_n with W = A R, R = 1/M (generic) or [S(x_w), 1]/M
    (exponential family), by one solve against R (A is formed only when it is the smaller
    object); for exact KRR the Cholesky factor of K_ss + λI is shared with the kernel step.

    Kernel learning (same loss, other parameters): on a fresh validation sleep set
    (z_v, x_v) ~ p_θ of ``valid_samples`` points, the mean over v of the per-sample squared error
    (Ĵ(x_v) − t_v)², where t_v is the known value log p_θ(x_v, z_v) (minus log h(x_v) for the
    exponential-family target), with the sleep-set targets detached; its gradient reaches only
    log σ, log λ and the feature network.  The trainer steps these with ``lr_estimator``.
    Unlike the paper's code, which steps the kernel before the model, both gradients come from
    the kernel of this step, so a kernel update takes effect at the next step.

    The bandwidth σ is set by the median heuristic on the first call's sleep samples.
    θ never receives gradient from q; with ``q_update="sleep"`` and a model with a proposal
    (``HelmholtzMachine``), the loss also holds the wake-sleep sleep-phase loss for φ
    (``sleep_phase_loss``, ALGORITHMS.md §4 last item), so that importance-sampled
    log-likelihoods (``wakesleep evaluate``) work for ALWS-trained models.

    Args:
        sleep_samples: N, sleep samples per step (the paper uses 1000–5000).
        target: ``"auto"``, ``"generic"`` or ``"exp_family"``.
        kernel: the kernel ridge regression, with ``krr``, ``lam``, ``num_features``, ``num_inducing``,
            ``features``, ``data_dim``, ``feature_dim``, ``feature_hidden`` and ``seed``: the settings
            of :func:`build_kernel_ridge`.
        valid_samples: V, validation sleep samples for the kernel step.
        learn_kernel: take the kernel step (else σ, λ and the features stay fixed).
        q_update: ``None`` (φ untouched) or ``"sleep"``.
        q_batch: sleep samples for the φ update (default: the wake batch size).
        kernel_ridge: a ready :class:`~wakesleep.kernels.KernelRidge` to use instead of
            building one (then ``settings()`` cannot rebuild it).

    Raises:
        ValueError: bad settings; on use, a model without the exponential-family view for
            ``target="exp_family"``, ``q_update="sleep"`` for a model without a proposal, or
            kernel parameters on another device/dtype than the data.
        wakesleep.models.contract.ModelContractError: on use (a ``TypeError``), a model that lacks a
            member this estimator needs (:meth:`requires`).
        wakesleep.kernels.KernelRidgeError: K_ss + λI not positive definite even with jitter.

    Metrics: ``wake_log_joint`` = mean_m Ĵ(x_m) (nats; estimates E_{p(z|x)} log p(x, z), not
    log p(x)), ``kernel_loss`` (validation squared error, nats²), ``bandwidth``, ``lam``, and
    ``sleep_log_q`` with ``q_update="sleep"``.
    """

    name = "alws"

    def __init__(
        self,
        sleep_samples: int = 2000,
        target: str = "auto",
        valid_samples: int = 500,
        learn_kernel: bool = True,
        q_update: str | None = None,
        q_batch: int | None = None,
        seed: int = 0,
        kernel_ridge: KernelRidge | None = None,
        **kernel,
    ):
        # The kernel's settings are build_kernel_ridge's parameters, written once there; the
        # class's __signature__ (below the class) lists them, so that the registry sees them.
        unknown = sorted(set(kernel) - set(KERNEL_PARAMETERS))
        if unknown:
            raise TypeError(f"ALWS got unexpected keyword argument(s) {unknown}")
        kernel = {name: kernel.get(name, p.default) for name, p in KERNEL_PARAMETERS.items()}
        super().__init__()
        self.sleep_samples = check_positive_int("sleep_samples", sleep_samples, 2)
        self.valid_samples = check_positive_int("valid_samples", valid_samples)
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if q_update not in Q_UPDATES:
            raise ValueError(f"q_update must be None or 'sleep', got {q_update!r}")
        self.target, self.q_update, self.learn_kernel = target, q_update, bool(learn_kernel)
        self.q_batch = None if q_batch is None else check_positive_int("q_batch", q_batch)
        self._settings = {
            "sleep_samples": sleep_samples,
            "target": target,
            **kernel,
            "feature_hidden": list(kernel["feature_hidden"]),
            "valid_samples": valid_samples,
            "learn_kernel": learn_kernel,
            "q_update": q_update,
            "q_batch": q_batch,
            "seed": seed,
        }
        if kernel_ridge is None:
            kernel_ridge = build_kernel_ridge(**kernel, learn=self.learn_kernel, seed=seed)
        elif not isinstance(kernel_ridge, KernelRidge):
            raise TypeError(f"kernel_ridge must be a KernelRidge, got {type(kernel_ridge).__name__}")
        self.krr = kernel_ridge
        # Saved with the estimator so that a resumed run keeps its learned bandwidth.
        self.register_buffer("bandwidth_initialised", torch.tensor(False))

    def settings(self) -> dict:
        return dict(self._settings)

    def for_checks(self) -> ALWS:
        """A copy with at most 64 sleep samples (or the Nyström inducing points' number) and 16
        validation samples: the same gradient paths, without a full kernel solve."""
        probe = super().for_checks()
        probe.sleep_samples = min(self.sleep_samples, max(64, int(self._settings.get("num_inducing") or 0)))
        probe.valid_samples = min(self.valid_samples, 16)
        return probe

    # ------------------------------------------------------------------ checks
    def resolved_target(self, model) -> str:
        """The target used for ``model``: ``"generic"`` or ``"exp_family"``."""
        if self.target == "auto":
            return "exp_family" if supports_exponential_family(model) else "generic"
        return self.target

    def requires(self, model) -> tuple[str, ...]:
        """The generative members; for the exponential-family target ``log_prior``,
        ``exponential_family`` and ``sufficient_statistics``; with ``q_update="sleep"`` the proposal's
        ``log_proposal`` and ``q_parameters``."""
        need = GENERATIVE
        if self.resolved_target(model) == "exp_family":
            need += EXPONENTIAL_FAMILY
        if self.q_update == "sleep":
            need += ("log_proposal", "q_parameters")
        return need

    def check_model(self, model) -> None:
        target = self.resolved_target(model)
        if target == "exp_family" and getattr(model, "has_exponential_family", True) is False:
            lik = getattr(model, "likelihood_name", None) or type(model).__name__
            raise ValueError(
                f"target='exp_family' needs exponential_family(z) and sufficient_statistics(x), which {lik} does not offer: use target='generic'"
            )
        check_model(model, self.requires(model), f"ALWS(target={target!r}, q_update={self.q_update!r})")
        if self.q_update == "sleep" and not (has_proposal(model) and list(model.q_parameters())):
            raise ValueError(f"q_update='sleep' needs a model with a proposal q(z | x); {type(model).__name__} has none: use q_update=None")

    def _check_device(self, x: Tensor) -> None:
        for name, p in self.krr.named_parameters():
            if p.dtype != x.dtype or p.device != x.device:
                raise ValueError(
                    f"ALWS's kernel parameter {name} is {p.dtype} on {p.device} but the data is {x.dtype} on "
                    f"{x.device}: move the estimator with estimator.to(x.device, x.dtype)"
                )

    # ------------------------------------------------------------------ pieces
    def targets(self, model, zs: Sequence[Tensor], x: Tensor, target: str) -> Tensor:
        """Regression targets at sleep samples, with gradient w.r.t. θ:
        generic: log p(x, z) [N, 1]; exp_family: (η(z), Ψ(z) − log p(z)) [N, S + 1]."""
        if target == "generic":
            return model.log_joint(x, zs)[:, None]
        eta, psi = model.exponential_family(zs)
        return torch.cat([eta, (psi - model.log_prior(zs))[:, None]], dim=1)

    def model_surrogate(
        self, model, x_wake: Tensor, x_sleep: Tensor, t_sleep: Tensor, target: str, chol: Tensor | tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """mean_m Ĵ_θ(x_m) over the wake batch x_wake [M, D], with A detached: a scalar whose
        θ-gradient is the ALWS gradient estimate (nats).

        ``t_sleep``: the targets at the sleep samples x_sleep [N, D], from :meth:`targets`;
        ``chol``: optional factor from ``self.krr.cholesky(x_sleep)`` (L or the pair)."""
        t = t_sleep
        m = x_wake.shape[0]
        with torch.no_grad():
            if target == "generic":
                rhs = x_wake.new_full((m, 1), 1.0 / m)
            else:
                stats = model.sufficient_statistics(x_wake)
                rhs = torch.cat([stats, stats.new_ones(m, 1)], dim=1) / m
            if self.krr.method == "exact" and m < rhs.shape[1]:
                w = self.krr.weights(x_sleep, x_wake, chol) @ rhs  # A [N, M] is the smaller object
            else:
                w = self.krr.solve(x_sleep, x_wake, rhs, chol)  # [N, C]
        if target == "generic":
            return (w * t).sum()
        return (w[:, :-1] * t[:, :-1]).sum() - (w[:, -1] * t[:, -1]).sum()

    def kernel_loss(
        self,
        model,
        zs: Sequence[Tensor],
        x_sleep: Tensor,
        t_sleep: Tensor,
        zs_val: Sequence[Tensor],
        x_val: Tensor,
        target: str,
        chol: Tensor | tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Mean over validation samples of (Ĵ(x_v) − t_v)² (nats²), gradient only to the kernel.

        ``t_sleep``: the targets at the sleep samples (from :meth:`targets`; detached here)."""
        with torch.no_grad():
            if target == "generic":
                t_val = model.log_joint(x_val, zs_val)
            else:
                eta, psi = model.exponential_family(zs_val)
                stats_val = model.sufficient_statistics(x_val)
                t_val = (eta * stats_val).sum(-1) - psi + model.log_prior(zs_val)
        if target == "generic":
            return self.krr.validation_loss(x_sleep, t_sleep[:, 0], x_val, t_val, chol)
        pred = exp_family_prediction(self.krr, x_sleep, t_sleep.detach(), x_val, stats_val, chol)
        return (pred - t_val).square().mean()

    # ------------------------------------------------------------------ forward
    def forward(self, model, x: Tensor) -> EstimatorOutput:
        self.check_model(model)
        self._check_device(x)
        with torch.no_grad():
            zs, x_sleep = model.sample(self.sleep_samples)
            zs_val, x_val = model.sample(self.valid_samples) if self.learn_kernel else (None, None)
        return self.loss_from_samples(model, x, zs, x_sleep, zs_val, x_val)

    def loss_from_samples(
        self, model, x: Tensor, zs: Sequence[Tensor], x_sleep: Tensor, zs_val: Sequence[Tensor] | None = None, x_val: Tensor | None = None
    ) -> EstimatorOutput:
        """The loss of :meth:`forward` for the wake batch x [M, D] and given sleep samples
        (zs = [z_1 [N, d_1], …], x_sleep [N, D]) and validation samples (zs_val, x_val [V, D];
        unused, and may be None, without kernel learning), e.g. to compare kernel methods on the
        same draws.  Sets the bandwidth by the median heuristic on x_sleep if not yet done.  Unlike
        :meth:`forward` it does not check the model or the devices.

        Returns:
            :class:`EstimatorOutput`: the scalar loss (nats) and the metrics of :meth:`forward`.

        Raises:
            ValueError: kernel learning without validation samples.
            wakesleep.kernels.KernelRidgeError: the regularised kernel matrix is not positive definite even with jitter.
        """
        if self.learn_kernel and x_val is None:
            raise ValueError("kernel learning needs validation samples (zs_val, x_val); pass them or build ALWS(learn_kernel=False)")
        target = self.resolved_target(model)
        if not bool(self.bandwidth_initialised):
            self.krr.kernel.init_bandwidth_(x_sleep)
            self.bandwidth_initialised.fill_(True)
        chol = None
        if self.krr.method == "exact" and not self.krr.kernel._joint_features():
            # one factorisation (and one K_ss, with its graph for the kernel step) for both steps
            chol = self.krr.cholesky(x_sleep, with_matrix=self.learn_kernel)
        t_sleep = self.targets(model, zs, x_sleep, target)
        metrics = {}
        loss = x.new_zeros(())
        if self.learn_kernel:
            k_loss = self.kernel_loss(model, zs, x_sleep, t_sleep.detach(), zs_val, x_val, target, chol)
            loss = loss + k_loss
            metrics["kernel_loss"] = k_loss.detach()
        j = self.model_surrogate(model, x, x_sleep, t_sleep, target, chol)
        loss = loss - j
        metrics["wake_log_joint"] = j.detach()
        metrics["bandwidth"] = self.krr.kernel.bandwidth.detach()
        metrics["lam"] = self.krr.lam.detach()
        if self.q_update == "sleep":
            sleep = sleep_phase_loss(model, self.q_batch or x.shape[0])
            loss = loss + sleep
            metrics["sleep_log_q"] = -sleep.detach()
        return EstimatorOutput(loss, metrics)


_own = [p for p in inspect.signature(ALWS.__init__).parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD]
ALWS.__signature__ = inspect.Signature(_own[:2] + list(KERNEL_PARAMETERS.values()) + _own[2:])
del _own


def train_proposal(
    model,
    steps: int = 1000,
    batch_size: int = 100,
    lr: float = 1e-3,
    progress: bool = True,
) -> list[float]:
    """Fit the proposal q_φ(z | x) of a trained model by sleep-phase updates only (θ fixed):
    Adam on ``model.q_parameters()`` minimising ``sleep_phase_loss`` (ALGORITHMS.md §4, last item:
    the proposal changes only the variance of the importance-sampled log-likelihood, not its mean).

    Args:
        model: a model with a proposal (``HelmholtzMachine``).
        steps: Adam steps (≥ 1); batch_size: sleep samples per step (≥ 1); lr: Adam rate (> 0).

    Returns:
        The loss per step, −mean log q(z̃ | x̃) (nats).

    Raises:
        ValueError: bad arguments, or a model without proposal parameters.
    """
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    params = list(model.q_parameters()) if hasattr(model, "q_parameters") else []
    if not params or not hasattr(model, "log_proposal"):
        raise ValueError(f"{type(model).__name__} has no proposal q(z | x) to train")
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in tqdm(range(steps), desc="sleep-phase proposal", disable=not progress, leave=False):
        loss = sleep_phase_loss(model, batch_size)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
