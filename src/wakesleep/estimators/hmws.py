"""Hybrid memoised wake-sleep (Le, Collins, Hewitt, Ellis, Siddharth, Gershman & Tenenbaum, ICLR 2022,
arXiv 2107.06393)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from wakesleep.estimators.base import EstimatorOutput, check_positive_int
from wakesleep.estimators.mws import LatentMemory, select_distinct_top
from wakesleep.estimators.rws import Q_UPDATES, phi_loss
from wakesleep.estimators.ws import sleep_phase_loss
from wakesleep.importance import live_normalised_weights, log_mean_exp, mean_live_effective_sample_size
from wakesleep.models.contract import HYBRID, tree_map

#: q(d | x)'s wake weights ω over the held d (:meth:`HybridMemoisedWakeSleep.discrete_weights`).
MEMORY_WEIGHTINGS = ("posterior", "uniform", "authors")


class HybridMemoisedWakeSleep(LatentMemory):
    r"""Hybrid memoised wake-sleep (HMWS): memoised wake-sleep for latents z = (d, c) with a discrete
    part d and a continuous part c.  The memory holds discrete values only; each is scored by an
    importance-sampled marginal over c.

    The model declares the split (:data:`wakesleep.models.contract.HYBRID`): log p_θ(x, (d, c)),
    q_φ(d | x) (``propose_discrete``, ``log_proposal_discrete``) and q_φ(c | d, x)
    (``propose_continuous``).  For datapoint x with memory Q (at most M distinct d), each step (as
    the authors' ``get_cmws_5_loss`` does it, step by step):

    1. propose d'_1..d'_R ~ q_φ(d | x) (R = ``k``, detached) and merge them with Q;
    2. for every candidate d_i draw c_i1..c_iK ~ q_φ(c | d_i, x) (K = ``continuous_k``, detached),
       w_ik = p_θ(d_i, c_ik, x) / q_φ(c_ik | d_i, x), and score d_i by
       log p̂(d_i, x) = log (1/K) Σ_k w_ik (an unbiased estimate of p_θ(d_i, x) = ∫ p_θ(d_i, c, x) dc);
    3. keep the M distinct d of highest log p̂(d, x) as the new Q (each step re-draws the particles
       and re-scores the held values with the current θ and φ);
    4. with the weights normalised over memory and particles together, v_ik = w_ik / Σ_{j∈Q, l} w_jl,
       and ω_i = Σ_k v_ik = p̂(d_i, x) / Σ_{j∈Q} p̂(d_j, x) (the memory's posterior over d; all detached):

       - θ ascends Σ_{i∈Q} Σ_k v_ik ∇θ log p_θ(d_i, c_ik, x)  (= Σ_i ω_i ∇θ log p̂(d_i, x), i.e.
         ∇θ log Σ_{i∈Q} p̂(d_i, x) with the particles fixed; → ∇θ log p_θ(x) as Q covers every d of
         non-zero mass and K → ∞);
       - wake-φ (``"wake"``): q(d | x) ascends Σ_{i∈Q} ω_i ∇φ log q_φ(d_i | x) (MWS's memory update,
         −∇φ KL(ω ‖ q_φ(d | x))), and q(c | d, x) ascends (1/|Q|) Σ_{i∈Q} Σ_k w̄_ik ∇φ log q_φ(c_ik | d_i, x),
         w̄_ik = w_ik / Σ_l w_il (RWS's wake-φ for each held d, −∇φ KL(p_θ(c | d_i, x) ‖ q_φ(c | d_i, x)),
         averaged over the memory as the authors' code does);
       - sleep-φ (``"sleep"``): ascend ∇φ log q_φ(d̃, c̃ | x̃), (d̃, c̃, x̃) ~ p_θ (``log_proposal`` of the pair);
         ``q_update="both"`` averages the two (their runs use ``insomnia=0.5``, the same).

    Source: Le et al. (2022) and their code tuananhle7/hmws (``cmws/losses.py``, ``get_cmws_5_loss``,
    the variant their sweeps call HMWS).  Departures, stated: (i) their code weights log q(d_i | x)
    by logsumexp_k v_ik, the log-sum-exp of the normalised weights rather than their sum; we use
    ω_i = Σ_k v_ik, the memory's posterior weight of d_i (their variable is named ω too), by default,
    and theirs with ``memory_weighting="authors"``; (ii) their memory starts as M
    distinct draws from the prior p(d), ours empty, filled from q(d | x)'s proposals (as this
    library's MWS does: a datapoint holds fewer than M values until that many distinct ones of
    non-zero p̂ have been proposed); (iii) their sleep phase draws K·B samples a step, ours
    ``sleep_batch`` (default B), as RWS's and MWS's here.  "Distinct", the memory's
    buffers, checkpoints, resume and torchrun's exchange are MWS's (:class:`LatentMemory`,
    :class:`~wakesleep.estimators.mws.MemoisedWakeSleep`): d is any pytree of tensors, and a d with
    p̂(d, x) = 0 is never kept.  Losses are means over the batch.  Without ``index`` (a direct call)
    the memory of that call is the top M of its own R proposals, and nothing is kept.  The paper
    itself was not read here (only its code): the equations follow the code, with the departures above.

    Args:
        k: R, discrete proposals from q(d | x) per datapoint per step (≥ 1).
        continuous_k: K, continuous particles from q(c | d, x) per discrete value (≥ 1).
        memory_size: M, discrete values kept per datapoint (≥ 1).
        q_update: ``"wake"`` (from the memory), ``"sleep"`` or ``"both"``.
        sleep_batch: sleep samples per step (default: the data batch size).
        memory_weighting: q(d | x)'s wake weights over the memory, ``"posterior"`` (default),
            ``"uniform"`` or ``"authors"`` (:meth:`discrete_weights`).

    Raises:
        ValueError: for k, continuous_k or memory_size < 1, an unknown q_update or memory_weighting, or a call with
            ``index`` before :meth:`prepare`.

    Metrics: ``objective`` = mean_b log Σ_{i∈Q_b} p̂(d_i, x_b) (nats per datapoint; its expectation
    is a lower bound on log p_θ(x)), ``ess`` = mean effective sample size of v over memory and
    particles, ``memory_filled`` = mean number of discrete values held, ``dead_datapoints``.
    """

    name = "hmws"

    def __init__(
        self,
        k: int = 5,
        continuous_k: int = 5,
        memory_size: int = 10,
        q_update: str = "both",
        sleep_batch: int | None = None,
        memory_weighting: str = "posterior",
    ):
        super().__init__()
        if memory_weighting not in MEMORY_WEIGHTINGS:
            raise ValueError(
                f"memory_weighting must be one of {MEMORY_WEIGHTINGS} (q(d | x)'s wake weights over the memory), got {memory_weighting!r}"
            )
        self.memory_weighting = memory_weighting
        self.k = check_positive_int("k (discrete proposals)", k)
        self.continuous_k = check_positive_int("continuous_k (continuous particles)", continuous_k)
        self.memory_size = check_positive_int("memory_size (M)", memory_size)
        if q_update not in Q_UPDATES:
            raise ValueError(f"q_update must be one of {Q_UPDATES} (wake: from the memory), got {q_update!r}")
        self.q_update = q_update
        self.sleep_batch = None if sleep_batch is None else check_positive_int("sleep_batch", sleep_batch)
        self._spec = None  # the discrete latents' pytree structure, known after prepare

    def settings(self) -> dict:
        return {
            "k": self.k,
            "continuous_k": self.continuous_k,
            "memory_size": self.memory_size,
            "q_update": self.q_update,
            "sleep_batch": self.sleep_batch,
            "memory_weighting": self.memory_weighting,
        }

    def requires(self, model) -> tuple[str, ...]:
        """The hybrid members (``propose_discrete``, ``log_proposal_discrete``, ``propose_continuous``),
        ``log_joint``, both parameter groups; ``sample`` and ``log_proposal`` unless q_update="wake"."""
        return HYBRID + ("log_joint", "p_parameters", "q_parameters") + (() if self.q_update == "wake" else ("sample", "log_proposal"))

    def member_hints(self) -> dict[str, str]:
        """A model without the hybrid members: MWS for latents that are all discrete; ``sample`` and
        ``log_proposal`` are the sleep phase's alone."""
        hints = {"propose_discrete": "For latents without a continuous part, memoised wake-sleep (--algorithm mws) needs only propose"}
        if self.q_update != "wake":
            hint = "HybridMemoisedWakeSleep(q_update='wake') (--q-update wake) would not need it: its φ-update uses the memory alone"
            hints.update(sample=hint, log_proposal=hint)
        return hints

    def memory_probe(self, model, x: Tensor):
        """One discrete proposal of ``model`` for x [1, D]: HMWS remembers d alone."""
        return model.propose_discrete(x, 1)[0]

    def marginal_scores(self, model, x: Tensor, d) -> tuple[Tensor, Tensor, Tensor]:
        """K continuous particles for every discrete value d (leaves [C, B, …]): ``(log_p, log_q_c,
        log_p_hat)``, log p_θ(d, c_k, x) [K, C, B] with ∇θ, log q_φ(c_k | d, x) [K, C, B] with ∇φ, and
        log p̂(d, x) = log (1/K) Σ_k w_k [C, B] detached, nats."""
        c, log_q_c = model.propose_continuous(x, d, self.continuous_k)
        d_k = tree_map(lambda v: v.expand(self.continuous_k, *v.shape), d)
        log_p = model.log_joint(x, (d_k, c))
        log_p_hat = log_mean_exp(log_p.detach() - log_q_c.detach())
        return log_p, log_q_c, log_p_hat

    def discrete_weights(self, v: Tensor, keep: Tensor) -> Tensor:
        """q(d | x)'s wake weights ω [M', B] over the held d, detached, from the weights v [K, M', B]
        normalised over memory and particles (zero at empty slots; ``keep`` [M', B] is False there);
        wake-φ ascends Σ_i ω_i ∇φ log q_φ(d_i | x).  By ``memory_weighting``:

        - ``"posterior"`` (default): ω_i = Σ_k v_ik, the memory's posterior weight of d_i (sums to 1):
          −∇φ KL(ω ‖ q_φ(d | x)), MWS's memory update.
        - ``"uniform"``: ω_i = 1/|Q| for every held d (sums to 1).
        - ``"authors"``: ω_i = logsumexp_k v_ik, the authors' code (``get_cmws_5_loss``): a log-sum-exp
          of numbers in [0, 1], so every held d gets between log K and log K + 1 (about uniform,
          summing to about M·log K).

        On Le et al.'s time series (``docs/results.md``, 4 seeds, 300 iterations) ``"authors"`` and
        ``"uniform"`` trained a better (p, q) pair than ``"posterior"``, which collapses q(d | x) onto
        the best held d; the default stays the posterior, the update this docstring derives.
        """
        if self.memory_weighting == "uniform":
            return keep.to(v.dtype) / keep.sum(0).clamp_min(1)
        if self.memory_weighting == "authors":
            return torch.logsumexp(v, 0).masked_fill(~keep, 0.0)
        return v.sum(0)

    def forward(self, model, x: Tensor, index: Tensor | None = None) -> EstimatorOutput:
        b = x.shape[0]
        proposals, _ = model.propose_discrete(x, self.k)  # [R, B, …], detached
        values, spec = pytree.tree_flatten(proposals)
        values, filled = self.candidates(values, index, b)  # [M + R, B, …], [M + R, B]
        log_p, log_q_c, log_p_hat = self.marginal_scores(model, x, pytree.tree_unflatten(values, spec))
        with torch.no_grad():
            keep, top = select_distinct_top(values, filled, log_p_hat, self.memory_size)  # [M', B] each
        cols = torch.arange(b, device=x.device)
        kept = [v[top, cols] for v in values]  # [M', B, …]
        log_p, log_q_c = log_p[:, top, cols], log_q_c[:, top, cols]  # [K, M', B]
        log_w = (log_p.detach() - log_q_c.detach()).masked_fill(~keep, -torch.inf)  # empty slots weigh nothing
        v, dead = live_normalised_weights(log_w.flatten(0, 1))  # over memory and particles together
        v = v.view_as(log_w)
        loss = -torch.where(v != 0, v * log_p, 0.0).sum((0, 1)).mean()
        if self.q_update != "sleep":
            omega = self.discrete_weights(v, keep)  # [M', B]
            log_q_d = model.log_proposal_discrete(x, pytree.tree_unflatten(kept, spec))  # [M', B], ∇φ
            wake_d = -torch.where(omega != 0, omega * log_q_d, 0.0).sum(0)
            w_c, _ = live_normalised_weights(log_w)  # per held value, over its K particles
            per_value = -torch.where(w_c != 0, w_c * log_q_c, 0.0).sum(0)  # [M', B]
            wake_c = (per_value * keep).sum(0) / keep.sum(0).clamp_min(1)
            wake_phi = (wake_d + wake_c).mean()
        else:
            wake_phi = None
        sleep_phi = sleep_phase_loss(model, self.sleep_batch or b) if self.q_update != "wake" else None
        loss = loss + phi_loss(self.q_update, wake_phi, sleep_phi)
        if index is not None:
            self.remember(index, kept, keep)
        with torch.no_grad():
            objective = torch.logsumexp(log_p_hat[top, cols].masked_fill(~keep, -torch.inf), 0).mean()
            ess, n_dead = mean_live_effective_sample_size(v.flatten(0, 1), dead)
        metrics = {"objective": objective, "ess": ess, "memory_filled": keep.sum(0).to(log_p.dtype).mean(), "dead_datapoints": n_dead}
        return EstimatorOutput(loss, metrics)
