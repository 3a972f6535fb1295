"""A latent angle on the circle, as a user's own model without a proposal, trained by amortised
learning by wake-sleep (ALWS; Wenliang, Moskovitz, Kanagawa & Sahani 2020, "Amortised learning by
wake-sleep", ICML; §5.2 there learns a latent on the circle, with Gabor patches at the angle a,
of which this is a small version whose likelihood can be computed exactly).

    a ~ von Mises(μ, κ),   x | a ~ N(r (cos a, sin a), s² I₂):   a noisy point at radius r.

Learned: μ and κ (through :class:`wakesleep.layers.CirclePrior`'s natural parameters
ν = κ (sin μ, cos μ), so μ = atan2(ν₀, ν₁) and κ = ‖ν‖), the radius r and the noise s (as logs).
Data x [B, 2]; the latent z is the angle a itself, a float tensor [*S, B] in radians.

There is **no proposal**: the model cannot be trained by RWS or evaluated by importance sampling
with its own q; ALWS regresses ∇θ log p(x, z) on x over sleep samples instead, and needs only
``sample``, ``log_joint`` and ``p_parameters`` (plus, for its exponential-family target, which
``target="auto"`` picks, ``log_prior``, ``exponential_family`` and ``sufficient_statistics``: the
likelihood is Gaussian, an exponential family in x with S(x) = (x₁, x₂, ‖x‖²)).

log p_θ(x) is exact by quadrature over a (:meth:`CircleModel.exact_log_marginal`): the integrand
p(a) p(x | a) is smooth and 2π-periodic, so the trapezoid rule on G equally spaced angles converges
exponentially in G (Trefethen & Weideman 2014, "The exponentially convergent trapezoidal rule",
SIAM Review 56(3), §3).  Here the integrand is C·exp(c cos(a − φ)) with c ≤ κ + r‖x‖/s², and the
rule's relative error with G nodes is 2 Σ_j I_{jG}(c)/I₀(c) ≈ 2 exp(−G²/(2c)) (I the modified
Bessel functions): for G = 2000 below 1e-80 while c < 10⁴ (c ≈ 27 for the true parameters), 1e-9
at c = 10⁵ (a noise s hundreds of times below r).  The same form gives log p(x) in closed form,
−(‖x‖² + r²)/(2s²) − log(2π s²) + log I₀(c) − log I₀(κ) with c = ‖κ (cos μ, sin μ) + r x / s²‖,
which the tests use as an independent check (:func:`closed_form_log_marginal`).

Run ``python examples/circle.py`` to train by ALWS from a start away from the truth and print the
true and recovered parameters and the exact log-likelihood before and after as ``key: value``
lines.  ``wakesleep train --model examples/circle.py:circle --algorithm alws`` builds the model
of :func:`circle`.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import Tensor, nn

import wakesleep as ws
from wakesleep.lab.tables import key_lines
from wakesleep.layers import CirclePrior

#: Default number of quadrature angles.
GRID = 2000
TRUE = {"mu": 1.0, "kappa": 2.0, "r": 2.0, "s": 0.4}
START = {"mu": -1.5, "kappa": 0.5, "r": 1.0, "s": 1.0}


class CircleModel(nn.Module):
    """a ~ von Mises(μ, κ), x | a ~ N(r (cos a, sin a), s² I) (module docstring).

    Args:
        mu: initial mean direction (radians); kappa: initial concentration ≥ 0;
        r: initial radius > 0; s: initial noise scale > 0.

    Raises:
        ValueError: kappa < 0, or r or s not positive.
    """

    data_dim = 2

    def __init__(self, mu: float = START["mu"], kappa: float = START["kappa"], r: float = START["r"], s: float = START["s"]):
        super().__init__()
        if not kappa >= 0 or not r > 0 or not s > 0:
            raise ValueError(f"need kappa >= 0, r > 0 and s > 0, got kappa={kappa!r}, r={r!r}, s={s!r}")
        self.prior = CirclePrior(learn=True)
        self.log_r = nn.Parameter(torch.tensor(math.log(r)))
        self.log_s = nn.Parameter(torch.tensor(math.log(s)))
        self.set_parameters(mu=mu, kappa=kappa)

    def set_parameters(self, mu: float | None = None, kappa: float | None = None, r: float | None = None, s: float | None = None) -> None:
        """Set any of μ and κ (both or neither), r and s, in place.

        Raises:
            ValueError: only one of μ and κ.
        """
        if (mu is None) != (kappa is None):
            raise ValueError("set mu and kappa together (they are the natural parameters ν = κ (sin μ, cos μ))")
        with torch.no_grad():
            if mu is not None:
                self.prior.natural.copy_(torch.tensor([kappa * math.sin(mu), kappa * math.cos(mu)]))
            if r is not None:
                self.log_r.fill_(math.log(r))
            if s is not None:
                self.log_s.fill_(math.log(s))

    def parameters_dict(self) -> dict[str, float]:
        """μ (radians in (−π, π]), κ, r and s as floats."""
        nu = self.prior.natural.detach()
        return {"mu": math.atan2(nu[0].item(), nu[1].item()), "kappa": nu.norm().item(), "r": self.log_r.exp().item(), "s": self.log_s.exp().item()}

    def p_parameters(self) -> list[nn.Parameter]:
        return [self.prior.natural, self.log_r, self.log_s]

    def q_parameters(self) -> list[nn.Parameter]:
        """None: there is no proposal (wakesleep.train builds its optimiser's φ group from this)."""
        return []

    # ------------------------------------------------------------ densities
    def log_prior(self, a: Tensor) -> Tensor:
        """log p_θ(a) for angles a [*S] (von Mises density in radians), [*S], nats."""
        return self.prior.log_prob(torch.stack([torch.sin(a), torch.cos(a)], -1))

    def _mean(self, a: Tensor) -> Tensor:
        return self.log_r.exp() * torch.stack([torch.cos(a), torch.sin(a)], -1)

    def log_joint(self, x: Tensor, a: Tensor) -> Tensor:
        """log p_θ(x, a) for x [B, 2] and a [*S, B], [*S, B], nats."""
        s2 = torch.exp(2 * self.log_s)
        log_lik = -0.5 * (x - self._mean(a)).square().sum(-1) / s2 - 2 * self.log_s - math.log(2 * math.pi)
        return self.log_prior(a) + log_lik

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """n draws: a [n] (radians), x [n, 2]; no gradient."""
        with torch.no_grad():
            a = self.prior.angle_dist().sample((n,)).to(self.log_r.dtype)
            return a, self._mean(a) + self.log_s.exp() * torch.randn(n, 2, dtype=a.dtype, device=a.device)

    # exponential-family view of p(x | a) for ALWS: log p(x | a) = η(a)·S(x) − Ψ(a), h(x) = 1
    def exponential_family(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """η(a) = (r cos a / s², r sin a / s², −1/(2s²)) [n, 3] and Ψ(a) = r²/(2s²) + log(2π s²) [n]."""
        s2 = torch.exp(2 * self.log_s)
        m = self._mean(a)
        eta = torch.cat([m / s2, (-0.5 / s2).expand(*a.shape, 1)], -1)
        psi = (torch.exp(2 * self.log_r) / (2 * s2) + 2 * self.log_s + math.log(2 * math.pi)).expand(a.shape)
        return eta, psi

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        """S(x) = (x₁, x₂, ‖x‖²) [n, 3]."""
        return torch.cat([x, x.square().sum(-1, keepdim=True)], -1)

    # ------------------------------------------------------------ exact evaluation
    def exact_log_marginal(self, x: Tensor, grid: int = GRID) -> Tensor:
        """log p_θ(x) [B] for x [B, 2] by the trapezoid rule on ``grid`` equally spaced angles
        (exponentially convergent for this periodic, analytic integrand; module docstring), nats,
        differentiable in θ.  Memory: [grid, B].

        Raises:
            ValueError: x not [B, 2], or grid < 2.
        """
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"x must be [B, 2], got shape {list(x.shape)}")
        if grid < 2:
            raise ValueError(f"grid must be >= 2, got {grid!r}")
        a = torch.arange(grid, dtype=x.dtype, device=x.device) * (2 * math.pi / grid) - math.pi
        log_joint = self.log_joint(x, a[:, None].expand(grid, x.shape[0]))
        return torch.logsumexp(log_joint, 0) + math.log(2 * math.pi / grid)


def closed_form_log_marginal(model: CircleModel, x: Tensor) -> Tensor:
    """log p_θ(x) [B] in closed form (module docstring): the integral over a of a von Mises kernel,
    2π I₀(c); log I₀(c) = log i0e(c) + c for stability.  Nats."""
    nu = model.prior.natural
    r, s2 = model.log_r.exp(), torch.exp(2 * model.log_s)
    # ν·(sin a, cos a) = (ν₁, ν₀)·(cos a, sin a): the prior's pull in the likelihood's coordinates
    c = (torch.stack([nu[1], nu[0]]) + r * x / s2).norm(dim=-1)
    kappa = nu.norm()
    log_i0 = lambda v: torch.log(torch.special.i0e(v)) + v  # noqa: E731
    return -(x.square().sum(-1) + r * r) / (2 * s2) - torch.log(2 * math.pi * s2) + log_i0(c) - log_i0(kappa)


def true_circle() -> CircleModel:
    """The true model: μ = 1 rad, κ = 2, r = 2, s = 0.4."""
    return CircleModel(**TRUE)


def make_data(n: int, seed: int = 0) -> Tensor:
    """n points x [n, 2] from :func:`true_circle`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return true_circle().sample(n)[1]


def maximum_likelihood(x: Tensor, start: CircleModel | None = None, steps: int = 200) -> CircleModel:
    """The maximum-likelihood fit to x [N, 2] (float64, L-BFGS on the exact log-likelihood in
    closed form, from ``start`` or the truth): what a perfect learner reaches on these data,
    so that a learned model's error can be told apart from the data's sampling error."""
    model = CircleModel(**(start.parameters_dict() if start is not None else TRUE)).double()
    xd = x.double()
    opt = torch.optim.LBFGS(model.p_parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -closed_form_log_marginal(model, xd).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def circle(data_dim: int = 2) -> CircleModel:
    """The factory of ``--model examples/circle.py:circle``: the model at its start (μ = −1.5,
    κ = 0.5, r = 1, s = 1).

    Raises:
        ValueError: data_dim ≠ 2.
    """
    if data_dim != 2:
        raise ValueError(f"the circle model's data are points in the plane: width 2, got {data_dim}")
    return CircleModel()


def add_schedule_options(p: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    """The options of :func:`train_in_two_stages` (and ALWS's sleep samples and target), with the
    example's own ``--epochs`` and ``--lr`` defaults."""
    p.add_argument("--epochs", type=int, default=epochs, help="epochs at --lr")
    p.add_argument("--fine-epochs", type=int, default=10, help="then epochs at --lr / 10 (less Adam noise in the end point)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--sleep-samples", type=int, default=1000, help="ALWS sleep samples per step")
    p.add_argument("--lr", type=float, default=lr, help="Adam rate of θ")
    p.add_argument("--lr-kernel", type=float, default=1e-2, help="Adam rate of the kernel's bandwidth and λ")
    p.add_argument("--target", default="auto", choices=["auto", "generic", "exp_family"])


def train_in_two_stages(model, est, x: Tensor, a: argparse.Namespace) -> None:
    """ALWS training as the ALWS examples run it: ``a.epochs`` at ``a.lr`` (θ) and ``a.lr_kernel``
    (the kernel), then ``a.fine_epochs`` at a tenth of both (less Adam noise in the end point);
    batches of ``a.batch_size``, seeded by ``a.seed``; x [N, D].  The second call starts a fresh
    Adam at the lower rate; the estimator keeps its kernel."""
    for epochs, scale in ((a.epochs, 1.0), (a.fine_epochs, 0.1)):
        if epochs > 0:
            ws.train(
                model,
                est,
                x,
                None,
                epochs=epochs,
                batch_size=a.batch_size,
                lr_p=a.lr * scale,
                lr_estimator=a.lr_kernel * scale,
                patience=None,
                progress=False,
                seed=a.seed + (scale < 1),
            )


def main(argv=None) -> dict:
    """Train by ALWS (no proposal: ``q_update=None``) from the start of :func:`circle`: ``--epochs``
    at ``--lr``, then ``--fine-epochs`` at a tenth of it.  Print and return the true, starting,
    learned and maximum-likelihood (on the training data) μ (radians), κ, r and s, and the exact
    mean log-likelihoods (nats) on the training data (learned, MLE and their gap) and on test data
    (true, start, learned).  ``argv``: the command-line arguments (default ``sys.argv[1:]``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="training points")
    p.add_argument("--n-test", type=int, default=1000, help="test points")
    add_schedule_options(p, epochs=40, lr=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--write-data",
        default=None,
        metavar="FILE.npz",
        help="write train/valid/test splits (--n, 1000, --n-test) for `wakesleep train --dataset FILE.npz` and stop",
    )
    a = p.parse_args(argv)
    if a.write_data:
        from pathlib import Path

        import numpy as np

        Path(a.write_data).parent.mkdir(parents=True, exist_ok=True)

        splits = {"train": (a.n, a.seed), "valid": (1000, a.seed + 2), "test": (a.n_test, a.seed + 1)}
        np.savez(a.write_data, **{k: make_data(n, s).numpy() for k, (n, s) in splits.items()})
        print(f"data: {a.write_data}")
        return {}
    start_time = time.perf_counter()
    torch.manual_seed(a.seed)
    x, x_test = make_data(a.n, a.seed), make_data(a.n_test, a.seed + 1)
    truth, model = true_circle(), circle()
    before = {"exact_log_likelihood_start": ws.exact_log_likelihood(model, x_test).mean}
    start = model.parameters_dict()
    est = ws.ALWS(sleep_samples=a.sleep_samples, target=a.target, lam=1e-2, valid_samples=500, q_update=None, seed=a.seed)
    train_in_two_stages(model, est, x, a)
    mle = maximum_likelihood(x)
    with torch.no_grad():  # on the training data, where the MLE is the best any learner can do
        train_ll = {
            "exact_log_likelihood_train": closed_form_log_marginal(model, x).mean().item(),
            "exact_log_likelihood_train_mle": closed_form_log_marginal(mle, x.double()).mean().item(),
        }
        train_ll["exact_log_likelihood_train_gap"] = train_ll["exact_log_likelihood_train_mle"] - train_ll["exact_log_likelihood_train"]
    out = {
        **{f"{k}_true": v for k, v in truth.parameters_dict().items()},
        **{f"{k}_start": v for k, v in start.items()},
        **model.parameters_dict(),
        **{f"{k}_mle": v for k, v in mle.parameters_dict().items()},
        **train_ll,
        "exact_log_likelihood_true": ws.exact_log_likelihood(truth, x_test).mean,
        **before,
        "exact_log_likelihood": ws.exact_log_likelihood(model, x_test).mean,
        "exact_log_likelihood_stderr": ws.exact_log_likelihood(model, x_test).stderr,
        "seconds": time.perf_counter() - start_time,
    }
    print(key_lines(out))
    return out


if __name__ == "__main__":
    main()
