"""RELAX: an unbiased gradient estimator for discrete latents with a learned control variate.

Grathwohl, Choi, Wu, Roeder & Duvenaud (ICLR 2018), "Backpropagation through the void: optimizing
control variates for black-box gradient estimation" (Algorithm 2, discrete variables), building on
REBAR (Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein, NeurIPS 2017) and the Concrete relaxation
(:mod:`wakesleep.estimators.concrete`, whose helpers this uses).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from wakesleep.estimators.base import EstimatorOutput, ParticleEstimator, check_positive_float, check_positive_int
from wakesleep.estimators.concrete import HINTS, conditional_noise, discrete_latent, hard, log_mass, probs, relax, sample_noise
from wakesleep.models.contract import RELAXATION, device_dtype


class RELAX(ParticleEstimator):
    r"""RELAX for the ELBO: a score-function estimator with a control variate c_ψ of the relaxed
    sample, unbiased for any ψ, and ψ trained to minimise the φ-gradient's variance.

    For each of K draws per datapoint: s = l + noise (:func:`~wakesleep.estimators.concrete.sample_noise`,
    l = q_φ's logits), b = H(s) ~ q_φ(b | x), s̃ ~ p(s | H(s) = b) (the conditional noise), and the
    learning signal f(b) = log p_θ(x, b) − log q_φ(b | x) (detached):

    - θ ascends ∇θ log p_θ(x, b) (as REINFORCE);
    - φ ascends, through the logits l, ĝ_l = [f(b) − c_ψ(s̃)] ∇_l log q(b | l) + ∇_l c_ψ(s) − ∇_l c_ψ(s̃),
      where ∇_l c_ψ is the total derivative through s = s(l, ε) and s̃ = s̃(l, b, ε̃) (Grathwohl et al.
      2018, eq. 7 and Algorithm 2).  Since s and s̃ have the same distribution, the last two terms
      cancel in expectation: ĝ is unbiased for ∇_l of E_q[f(b)] (the direct term −∇φ log q of the
      ELBO's gradient, zero-mean, is dropped as in REINFORCE);
    - ψ descends ∇ψ ‖ĝ_l‖² (mean over the batch): E ĝ does not depend on ψ, so this is ∇ψ of the
      estimator's variance (their Algorithm 2, "ĝ_φ ← ∂ĝ_θ²/∂φ"), taken for the logits' gradient.

    The control variate (theirs for discrete latents, REBAR's term plus a network):
    c_ψ(s) = η · f_λ(z̃) + r_ρ(z̃, x), z̃ = σ(s/λ) or softmax(s/λ) the relaxed point at a learned
    temperature λ, f_λ the ELBO's integrand at z̃ with the mass functions' multilinear extension
    (log p_θ(x | z̃) + Σ z̃·log π_p − Σ z̃·log π_q, Tucker et al. 2017), and r_ρ an MLP of the relaxed
    point and x (tanh, ``control_hidden`` units; none for 0).  ψ = (η, log λ, ρ), the estimator's own
    parameters, stepped by the trainer's ``lr_estimator``.

    One surrogate for the trainer's single backward: −mean_b log p_θ(x, b) (θ), − Σ sg(ĝ_l)·l / B (φ,
    through l's graph) and Σ sg(∇ψ V)·ψ (ψ; each of the last two with zero value).  ĝ_l and ∇ψ V are
    computed inside :meth:`forward` by ``torch.autograd.grad`` on a detached copy of l, so that θ and φ
    receive nothing from the control variate's own graph.

    Args:
        k: draws per datapoint (≥ 1), averaged.
        temperature: λ's starting value (> 0).
        control_hidden: hidden units of r_ρ (0: REBAR's control variate η f_λ alone).
        latent_dim: r_ρ's input width from the latent (its number of elements); when it or
            data_dim is ``None`` the network is built by :meth:`prepare` (the trainer calls it
            before the first step) or at the first call, from the model and the data.
        data_dim: r_ρ's input width from x (D).

    Raises:
        ValueError: for k < 1, temperature ≤ 0, control_hidden < 0; on use, a model without one
            factorial discrete latent layer.

    Metrics: ``objective`` (the ELBO estimate mean f(b), nats per datapoint), ``gradient_variance``
    (V, the mean squared norm of ĝ_l), ``temperature`` (λ), ``eta`` (η).
    """

    name = "relax"
    #: What the φ-update estimates (read by :mod:`wakesleep.lab.diagnostics`): ∇φ ELBO.
    q_update = "elbo"
    k_label = "k (samples)"

    def __init__(self, k: int = 1, temperature: float = 0.5, control_hidden: int = 50, latent_dim: int | None = None, data_dim: int | None = None):
        super().__init__(k)
        check_positive_float("temperature", temperature)
        self.temperature = float(temperature)
        self.control_hidden = check_positive_int("control_hidden", control_hidden, 0)
        self.latent_dim = None if latent_dim is None else check_positive_int("latent_dim", latent_dim)
        self.data_dim = None if data_dim is None else check_positive_int("data_dim", data_dim)
        self.eta = nn.Parameter(torch.ones(()))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(self.temperature)))
        self.network = None
        if self.control_hidden and self.latent_dim and self.data_dim:
            self._build(self.latent_dim, self.data_dim)

    def settings(self) -> dict:
        return {
            **super().settings(),
            "temperature": self.temperature,
            "control_hidden": self.control_hidden,
            "latent_dim": self.latent_dim,
            "data_dim": self.data_dim,
        }

    def requires(self, model) -> tuple[str, ...]:
        """``proposal_distribution``, ``prior_distribution``, ``log_likelihood`` and both parameter groups."""
        return RELAXATION

    def member_hints(self) -> dict[str, str]:
        return HINTS

    def _build(self, latent_dim: int, data_dim: int, device=None, dtype=None) -> None:
        h = self.control_hidden
        self.network = nn.Sequential(nn.Linear(latent_dim + data_dim, h), nn.Tanh(), nn.Linear(h, 1)).to(device=device, dtype=dtype)
        self.latent_dim, self.data_dim = latent_dim, data_dim

    def prepare(self, model, train_data: Tensor) -> None:
        """Build r_ρ for the model's latent width and the data's (before the trainer's optimiser exists)."""
        if self.control_hidden and self.network is None:
            with torch.no_grad():
                _, q_logits, _ = discrete_latent(model, train_data[:1])
            self._build(q_logits[0].numel(), train_data.shape[1], *device_dtype(model))

    def control(self, model, x: Tensor, kind: str, s: Tensor, q_logits: Tensor, p_logits: Tensor) -> Tensor:
        """c_ψ(s) [K, B] (see the class docstring), with ∇ in s, q_logits and ψ."""
        _, z = relax(kind, s, self.log_temperature.exp())
        c = self.eta * (model.log_likelihood(x, z) + log_mass(kind, p_logits, z) - log_mass(kind, q_logits, z))
        if self.network is not None:
            w = self.network[0].weight
            inp = torch.cat([z.flatten(2), x.expand(*z.shape[:2], -1)], -1).to(w.dtype)
            c = c + self.network(inp)[..., 0].to(c.dtype)
        return c

    def forward(self, model, x: Tensor) -> EstimatorOutput:
        if self.control_hidden and self.network is None:
            self.prepare(model, x)
        kind, q_logits, p_logits = discrete_latent(model, x)
        l = q_logits.detach().requires_grad_(torch.is_grad_enabled())  # noqa: E741 - the logits, a leaf of their own
        s = sample_noise(kind, l, self.k)  # [K, B, *E], ∇ in l
        b = hard(kind, s)
        log_p = model.log_likelihood(x, b) + log_mass(kind, p_logits, b)  # [K, B], ∇θ
        f = (log_p - log_mass(kind, q_logits, b)).detach()
        metrics = {"objective": f.mean()}
        if not torch.is_grad_enabled():
            return EstimatorOutput(-log_p.mean(), metrics)
        s_cond = conditional_noise(kind, l, b)
        p_fixed = p_logits.detach()
        c, c_cond = self.control(model, x, kind, s, l, p_fixed), self.control(model, x, kind, s_cond, l, p_fixed)
        score = b - probs(kind, l.detach())  # ∇_l log q(b | l), [K, B, *E]
        signal = (f - c_cond).view(*f.shape, *[1] * (score.dim() - 2))
        pathwise = torch.autograd.grad((c - c_cond).sum(), l, create_graph=True)[0]
        g = ((signal * score).sum(0) + pathwise) / self.k  # ĝ_l per datapoint, [B, *E]
        variance = g.pow(2).flatten(1).sum(-1).mean()
        own = [p for p in self.parameters() if p.requires_grad]
        g_psi = torch.autograd.grad(variance, own, allow_unused=True)
        loss = -log_p.mean() - (g.detach() * (q_logits - q_logits.detach())).sum() / x.shape[0]
        loss = loss + sum(((gp * (p - p.detach())).sum() for gp, p in zip(g_psi, own) if gp is not None), loss.new_zeros(()))
        metrics.update(gradient_variance=variance.detach(), temperature=self.log_temperature.detach().exp(), eta=self.eta.detach())
        return EstimatorOutput(loss, metrics)
