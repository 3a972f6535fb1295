"""What a user reaches for first (issue 23): every estimator at the top level, compare's config
format where a user looks for it, the exact log-likelihood beside the estimate, no ``nan`` for a
one-seed standard error, and a missing-member message that names the setting that would not need it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import torch
from cli_helpers import run

import wakesleep as ws
from wakesleep.estimators import ESTIMATORS
from wakesleep.lab.compare import config_format, parse_config
from wakesleep.lab.tables import markdown_table
from wakesleep.models import ModelContractError
from wakesleep.runs import load_run

ROOT = Path(__file__).resolve().parents[1]


def test_every_registered_estimator_is_at_the_top_level():
    for name, cls in ESTIMATORS.items():
        assert getattr(ws, cls.__name__, None) is cls, f"ws.{cls.__name__} ({name!r}) is not wakesleep's {cls.__name__}"
        assert cls.__name__ in ws.__all__
    assert ws.WS is ws.WakeSleep
    for name in ("VIMCO", "NVIL", "TVO", "MemoisedWakeSleep", "Reinforce"):
        assert hasattr(ws, name)


def test_compare_help_shows_the_config_format():
    code, out, _ = run(["compare", "--help"])
    assert code == 0
    for line in ("[data]", "[model]", "[train]", "[evaluate]", "[[estimators]]", 'spec = "examples/gmm.py:mixture"', "test_k = 5000"):
        assert line in out, line
    assert config_format() in out  # as written, line for line


def test_your_own_model_documents_compare_and_its_example_parses(monkeypatch):
    page = (ROOT / "docs" / "your-own-model.md").read_text()
    assert "wakesleep compare" in page and "wakesleep compare --help" in page
    blocks = re.findall(r"```toml\n(.*?)```", page, flags=re.S)
    assert blocks, "docs/your-own-model.md shows no compare config"
    monkeypatch.chdir(ROOT)
    for block in blocks:
        cfg = parse_config(tomllib.loads(block), "docs/your-own-model.md")
        assert cfg.model["spec"].endswith("examples/gmm.py:mixture") and len(cfg.estimators) == 2


def test_evaluate_prints_the_exact_log_likelihood_beside_the_estimate(trained):
    code, out, err = run(["evaluate", str(trained), "--k", "5", "--no-progress"])  # 5 binary latents: 32 states, exact by enumeration
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("test log-likelihood"))
    estimate, exact = re.search(r"log-likelihood: (-?[\d.]+) ± .*exact: (-?[\d.]+) nats", line).groups()
    model = load_run(trained)[0]
    data = ws.data.digits()
    assert float(exact) == pytest.approx(ws.exact_log_likelihood(model, data.test).mean, abs=1e-3)
    assert float(estimate) <= float(exact) + 1.0  # a K=5 estimate lies below log p(x) but for noise


def test_a_one_seed_comparison_shows_a_dash_for_the_standard_error():
    row = {"label": "WS", "settings": "{}", "seeds": 1, "test_log_likelihood": -30.0, "stderr_seeds": float("nan")}
    row |= {"test_k": 10, "test_n": 20, "clock": "process", "train_seconds": 1.0, "epochs": 1.0}
    table = markdown_table([row])
    assert "nan" not in table and "| –" in table
    assert "| 0.50 |" in markdown_table([{**row, "seeds": 2, "stderr_seeds": 0.5}])


class NoLogProposal(torch.nn.Module):
    """A model with a proposal but no ``log_proposal``: RWS trains it with q_update='wake' alone."""

    def __init__(self):
        super().__init__()
        self.p, self.q = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))

    def sample(self, n):
        z = torch.distributions.Categorical(logits=self.p).sample((n,))
        return z, torch.distributions.Normal(z.float(), 1.0).sample().unsqueeze(-1)

    def log_joint(self, x, z):
        return torch.distributions.Categorical(logits=self.p).log_prob(z) + torch.distributions.Normal(z.float(), 1.0).log_prob(x[..., 0])

    def propose(self, x, k):
        q = torch.distributions.Categorical(logits=self.q.expand(x.shape[0], 2))
        z = q.sample((k,))
        return z, q.log_prob(z)

    def p_parameters(self):
        return [self.p]

    def q_parameters(self):
        return [self.q]


def test_a_missing_log_proposal_says_wake_phi_would_not_need_it():
    x = torch.randn(20, 1)
    for q_update in ("sleep", "both"):
        with pytest.raises(
            ModelContractError, match=r"lacks log_proposal .*q_update='wake'.*would not need log_proposal.*log q that propose returns"
        ):
            ws.train(NoLogProposal(), ws.RWS(k=2, q_update=q_update), x, epochs=1, progress=False)
    fit = ws.train(NoLogProposal(), ws.RWS(k=2, q_update="wake"), x, epochs=1, progress=False)  # as the hint says
    assert fit.history
    with pytest.raises(ModelContractError) as e:  # defensive sampling needs log_proposal whatever q_update is: no hint there
        ws.train(NoLogProposal(), ws.RWS(k=2, q_update="both", defensive=0.2), x, epochs=1, progress=False)
    assert "would not need" not in str(e.value)
