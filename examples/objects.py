"""A random number of objects, written by hand: a variable-size latent carried as padded tensors
with a mask, so that every estimator, evaluation and MWS's memory handle it as any tensor latent.

The program draws objects in a loop until a random stop, then observes how many of each type it
sees, with noise:

    n = 0;  while n < N_MAX and Bernoulli(s):  t_n ~ Cat(π);  n += 1
    x_j ~ Poisson(c_j + ε),   c_j = #{i < n : t_i = j},   j = 0..2,

so P(n) = s^n (1 − s) for n < N_MAX and s^N_MAX at the cap.  Learned: s (as a logit) and π (as
logits); ε = 0.2 is fixed.  z is a dict {``count``: long [*S, B], ``types``: long [*S, B, N_MAX]}:
the types past the count are padding, always 0, so that two equal latents have equal tensors (MWS
tells memory entries apart by their values), and every density masks them out
(``arange(N_MAX) < count``).  The proposal q(n | x) Π_{i<n} q(t_i | x, i) reads x through a small
MLP.  The 121 latent states can be listed (:meth:`Objects.enumerate_latents`), so log p(x) is exact.

Run ``python examples/objects.py`` to train RWS from a wrong start on data from a true model and
print, as ``key: value`` lines, the learned parameters' errors and exact log-likelihoods.
``wakesleep train --model examples/objects.py:objects`` builds the model of :func:`objects`.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Poisson

import wakesleep as ws
from wakesleep.lab.tables import key_lines

N_MAX, TYPES, NOISE = 4, 3, 0.2


class Objects(nn.Module):
    """The objects model and its proposal (float64 by ``.double()``, float32 by default).

    Args:
        hidden: units of the proposal's MLP.
    """

    data_dim = TYPES

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.stop_logit = nn.Parameter(torch.tensor(0.0))  # logit of s, the chance to draw another object
        self.type_logits = nn.Parameter(torch.zeros(TYPES))
        self.net = nn.Sequential(nn.Linear(TYPES, hidden), nn.Tanh(), nn.Linear(hidden, N_MAX + 1 + N_MAX * TYPES))

    def p_parameters(self) -> list[nn.Parameter]:
        return [self.stop_logit, self.type_logits]

    def q_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    # ------------------------------------------------------------ generative model
    def log_prior(self, z: dict) -> Tensor:
        """log p(n) + Σ_{i<n} log π_{t_i}, [*S, B] for z leaves [*S, B(, N_MAX)], nats."""
        n, types = z["count"], z["types"]
        live = torch.arange(N_MAX, device=n.device) < n[..., None]  # the mask of real objects
        log_s, log_stop = nn.functional.logsigmoid(self.stop_logit), nn.functional.logsigmoid(-self.stop_logit)
        log_n = n * log_s + torch.where(n < N_MAX, log_stop, 0.0)
        return log_n + torch.where(live, torch.log_softmax(self.type_logits, 0)[types], 0.0).sum(-1)

    def _rates(self, z: dict) -> Tensor:
        live = torch.arange(N_MAX, device=z["count"].device) < z["count"][..., None]
        return (nn.functional.one_hot(z["types"], TYPES) * live[..., None]).sum(-2).to(self.stop_logit.dtype) + NOISE

    def log_joint(self, x: Tensor, z: dict) -> Tensor:
        """log p(x, z), [*S, B] for x [B, 3] (counts) and z leaves [*S, B(, N_MAX)], nats."""
        return self.log_prior(z) + Poisson(self._rates(z)).log_prob(x).sum(-1)

    def sample(self, n: int) -> tuple[dict, Tensor]:
        """n runs of the loop: z, x [n, 3]; no gradient."""
        with torch.no_grad():
            count = torch.zeros(n, dtype=torch.long)
            types = torch.zeros(n, N_MAX, dtype=torch.long)
            going = torch.ones(n, dtype=torch.bool)
            for i in range(N_MAX):  # another object while the coin says so
                going &= torch.rand(n) < torch.sigmoid(self.stop_logit)
                types[:, i] = torch.where(going, Categorical(logits=self.type_logits).sample((n,)), 0)
                count += going.long()
            z = {"count": count, "types": types}
            return z, Poisson(self._rates(z)).sample()

    def enumerate_latents(self) -> dict:
        """Every latent state once (121: Σ_n 3^n for n ≤ 4): leaves [121] and [121, N_MAX]."""
        counts, rows = [], []
        for n in range(N_MAX + 1):
            for t in torch.cartesian_prod(*[torch.arange(TYPES)] * n).reshape(-1, n) if n else torch.zeros(1, 0, dtype=torch.long):
                counts.append(n)
                rows.append(torch.cat([t, torch.zeros(N_MAX - n, dtype=torch.long)]))
        return {"count": torch.tensor(counts), "types": torch.stack(rows)}

    # ------------------------------------------------------------ proposal
    def _logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(torch.log1p(x))
        return out[..., : N_MAX + 1], out[..., N_MAX + 1 :].unflatten(-1, (N_MAX, TYPES))

    def log_proposal(self, x: Tensor, z: dict) -> Tensor:
        """log q(n | x) + Σ_{i<n} log q(t_i | x, i), [*S, B], nats."""
        count_logits, type_logits = self._logits(x)
        live = torch.arange(N_MAX, device=x.device) < z["count"][..., None]
        log_t = Categorical(logits=type_logits).log_prob(z["types"])  # [*S, B, N_MAX]
        return Categorical(logits=count_logits).log_prob(z["count"]) + torch.where(live, log_t, 0.0).sum(-1)

    def propose(self, x: Tensor, k: int) -> tuple[dict, Tensor]:
        """K latents per datapoint: leaves [K, B(, N_MAX)] (types past the count set to 0), log q [K, B]."""
        count_logits, type_logits = self._logits(x)
        with torch.no_grad():
            count = Categorical(logits=count_logits).sample((k,))
            types = Categorical(logits=type_logits).sample((k,))
            types = torch.where(torch.arange(N_MAX) < count[..., None], types, 0)  # canonical padding
        z = {"count": count, "types": types}
        return z, self.log_proposal(x, z)


def objects(**kwargs) -> Objects:
    """The factory for ``--model examples/objects.py:objects``."""
    return Objects(**kwargs)


def truth() -> Objects:
    """The true model: s = 0.6 (1.5 objects on average), π = (0.6, 0.3, 0.1)."""
    model = Objects()
    with torch.no_grad():
        model.stop_logit.fill_(torch.logit(torch.tensor(0.6)).item())
        model.type_logits.copy_(torch.tensor([0.6, 0.3, 0.1]).log())
    return model


def errors(model: Objects, true: Objects) -> dict[str, float]:
    """|s − s*| and ‖π − π*‖ of a model against the truth."""
    s, s_true = torch.sigmoid(model.stop_logit), torch.sigmoid(true.stop_logit)
    pi, pi_true = torch.softmax(model.type_logits, 0), torch.softmax(true.type_logits, 0)
    return {"stop_error": (s - s_true).abs().item(), "type_error": (pi - pi_true).norm().item()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="training datapoints")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--k", type=int, default=10, help="RWS particles")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    true = truth()
    data, test = true.sample(args.n)[1], true.sample(500)[1]
    model = Objects()
    with torch.no_grad():
        model.type_logits.copy_(torch.tensor([0.1, 0.3, 0.6]).log())  # a wrong start
    before = errors(model, true)
    ws.train(model, ws.RWS(k=args.k), data, None, epochs=args.epochs, batch_size=50, lr_p=1e-2, lr_q=3e-2, progress=False)
    after = errors(model, true)
    exact = lambda m: ws.evaluate.exact_log_marginal(m, test).mean().item()  # noqa: E731
    with torch.no_grad():
        print(key_lines({**{f"{k}_before": v for k, v in before.items()}, **after, "test_ll_learned": exact(model), "test_ll_true": exact(true)}))


if __name__ == "__main__":
    main()
