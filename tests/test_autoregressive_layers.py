"""NADE and fDARN layers (issue 13, item 6): exact normalisation over every state of a small layer,
sampling frequencies against the log-probabilities (χ²), particle-first shapes, the autoregressive
property, and Helmholtz machines built of them: exact log p(x) against importance sampling, RWS
training, the config round trip and the command line."""

from __future__ import annotations

import json

import pytest
import torch
from scipy.stats import chisquare
from test_cli_errors import run  # the command line in-process: (exit status, stdout, stderr)

import wakesleep as ws
from wakesleep import fused
from wakesleep.data import load_dataset
from wakesleep.lab.compare import ConfigError, parse_config
from wakesleep.lab.compare import build_model as compare_model
from wakesleep.layers import BernoulliLayer, DARNLayer, NADELayer, NADEPrior
from wakesleep.models import HelmholtzMachine
from wakesleep.models.exact import exact_sleep_phi_target, flat_grad
from wakesleep.models.helmholtz import binary_states
from wakesleep.training import TrainConfig, build_optimizer, train_step

D_IN, D_OUT = 3, 4
LAYERS = {"darn": lambda: DARNLayer(D_IN, D_OUT), "nade": lambda: NADELayer(D_IN, D_OUT, hidden=6), "darn_mlp": lambda: DARNLayer(D_IN, D_OUT, (5,))}


def small(name: str, seed: int = 0):
    """A float64 layer with weights large enough that the units depend strongly on each other."""
    torch.manual_seed(seed)
    layer = LAYERS[name]().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(3.0)
    parents = torch.randn(3, D_IN, dtype=torch.float64)  # a few parent values
    return layer, parents


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_probabilities_over_all_states_sum_to_one(name):
    layer, parents = small(name)
    states = binary_states(D_OUT, torch.float64)  # [16, 4]
    lp = layer.log_prob(states[:, None, :], parents)  # [16, 3]: every state against every parent
    assert lp.shape == (2**D_OUT, 3)
    torch.testing.assert_close(lp.exp().sum(0), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-10)
    assert (lp.exp().max(0).values < 0.9).all()  # not a degenerate layer: the test has states to tell apart


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_sampling_frequencies_match_log_prob(name):
    """χ² goodness of fit of N = 20000 draws, vectorised over particles and parents, per parent.

    Threshold p > 1e-3: for a correct sampler the p-value is uniform, so a false failure has chance
    1e-3 per parent; the fixed seed makes the outcome deterministic (it passes or fails every run).
    A sampler off by one unit's conditioning gives p-values near 0 at this N.
    """
    layer, parents = small(name)
    n = 20000
    torch.manual_seed(1)
    value, log_q = layer.sample_and_log_prob(parents, (n,))  # [N, 3, 4], [N, 3]
    assert value.shape == (n, 3, D_OUT) and log_q.shape == (n, 3)
    states = binary_states(D_OUT, torch.float64)
    index = (value * 2 ** torch.arange(D_OUT - 1, -1, -1, dtype=torch.float64)).sum(-1).long()  # state number, counting order
    probs = layer.log_prob(states[:, None, :], parents).exp().detach()  # [16, 3]
    torch.testing.assert_close(log_q, layer.log_prob(value, parents))  # the log-density returned is the draw's
    for b in range(parents.shape[0]):
        counts = torch.bincount(index[:, b], minlength=2**D_OUT).double()
        expected = n * probs[:, b] / probs[:, b].sum()
        assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3, (b, counts, expected)
    # sample() draws from the same distribution: its first unit's frequency (one binomial, 4 SE)
    torch.manual_seed(2)
    first = layer.sample(parents.expand(n, -1, -1))[..., 0].mean(0)
    p1 = probs[states[:, 0] == 1].sum(0)
    assert ((first - p1).abs() < 4 * (p1 * (1 - p1) / n).sqrt()).all()


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_shapes_particles_first(name):
    layer, _ = small(name)
    k, b = 5, 7
    parent = torch.randn(b, D_IN, dtype=torch.float64)
    value, log_q = layer.sample_and_log_prob(parent, (k,))
    assert value.shape == (k, b, D_OUT) and log_q.shape == (k, b)
    assert not value.requires_grad and log_q.requires_grad  # detached draw, score-function log-density
    assert set(value.unique().tolist()) <= {0.0, 1.0}
    parents_k = torch.randn(k, b, D_IN, dtype=torch.float64)
    assert layer.sample(parents_k).shape == (k, b, D_OUT)
    assert layer.log_prob(value, parents_k).shape == (k, b)
    assert layer.log_prob(value[0], parents_k).shape == (k, b)  # a value [B, out] broadcast against parents [K, B, in]
    assert layer.mean(parent).shape == (b, D_OUT)
    with pytest.raises(ValueError, match="cannot be reparameterised"):
        layer.sample(parent, reparameterize=True)
    with pytest.raises(NotImplementedError, match="autoregressive"):
        layer.dist(parent)
    assert layer.discrete and layer.binary and not hasattr(layer, "exponential_family")


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_unit_i_depends_only_on_the_units_before_it(name):
    layer, parents = small(name)
    torch.manual_seed(3)
    value = (torch.rand(3, D_OUT, dtype=torch.float64) < 0.5).double()
    logits = layer.conditional_logits(value, parents)
    for j in range(D_OUT):
        flipped = value.clone()
        flipped[:, j] = 1 - flipped[:, j]
        other = layer.conditional_logits(flipped, parents)
        assert torch.equal(other[:, : j + 1], logits[:, : j + 1]), j  # exactly: no rounding leak either
        if j < D_OUT - 1:
            assert (other[:, j + 1 :] != logits[:, j + 1 :]).any(), j  # and the later units do depend on it


def test_nade_refuses_no_hidden_units():
    with pytest.raises(ValueError, match="hidden >= 1"):
        NADELayer(3, 4, hidden=0)


# ------------------------------------------------------------------ Helmholtz machines


def mixed(seed: int = 0) -> HelmholtzMachine:
    """A float64 enumerable model: p(x | z_1) NADE, p(z_1 | z_2) DARN; q(z_1 | x) DARN, q(z_2 | z_1) NADE."""
    torch.manual_seed(seed)
    model = HelmholtzMachine.sbn([6, 3, 2], p_layers=["nade", "darn"], q_layers=["darn", "nade"], nade_hidden=5).double()
    with torch.no_grad():
        for p in model.p_parameters():
            p.mul_(2.0)
    return model


def test_model_is_normalised_over_every_x_and_z():
    model = mixed()
    zs = model.enumerate_latents()  # 2^3 · 2^2 states
    xs = binary_states(6, torch.float64)
    log_joint = model.log_joint(xs[None], [z[:, None, :] for z in zs])  # [S, 64]
    torch.testing.assert_close(log_joint.logsumexp((0, 1)).exp(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-10)
    log_q = model.log_proposal(xs, [z[:, None, :] for z in zs])  # [S, 64]: q(z | x) sums to 1 for each x
    torch.testing.assert_close(log_q.logsumexp(0).exp(), torch.ones(64, dtype=torch.float64), rtol=0, atol=1e-10)


def test_exact_log_marginal_against_importance_sampling():
    """p̂(x) = mean_k w_k is unbiased for p(x); per datapoint it must lie within 4 standard errors."""
    model = mixed()
    torch.manual_seed(4)
    x = model.sample(4)[1]
    exact = model.exact_log_marginal(x).detach()
    log_w = model.log_weights(x, 20000)  # [K, B]
    ratio = (log_w - exact).exp()  # w_k / p(x): mean 1
    se = ratio.std(0) / ratio.shape[0] ** 0.5
    assert ((ratio.mean(0) - 1).abs() < 4 * se).all(), (ratio.mean(0), se)
    ll = ws.log_likelihood(model, x, k=2000, seed=0)
    assert abs(ll.mean - exact.mean().item()) < 4 * ll.stderr + 0.05  # the IWAE bound, biased low by O(1/K)


def test_sleep_phi_target_with_an_autoregressive_likelihood():
    """The enumerated sleep-φ target with p(x | z) NADE equals Σ_{x,z} p(x, z) ∇φ log q(z | x) written out."""
    model = mixed()
    xs = binary_states(6, torch.float64)
    zs = [z[:, None, :] for z in model.enumerate_latents()]
    with torch.no_grad():
        mass = model.log_joint(xs[None], zs).exp()
    brute = flat_grad(model.q_parameters(), (mass * model.log_proposal(xs, zs)).sum())
    torch.testing.assert_close(exact_sleep_phi_target(model, chunk=7), brute)


def test_default_kinds_build_the_factorial_sbn_unchanged():
    torch.manual_seed(5)
    plain = HelmholtzMachine.sbn([10, 4])
    torch.manual_seed(5)
    named = HelmholtzMachine.sbn([10, 4], p_layers="sbn", q_layers=["sbn"], nade_hidden=9)
    assert named.config == plain.config == {"kind": "sbn", "sizes": [10, 4], "q_hidden": [], "p_hidden": []}
    for (n1, p1), (n2, p2) in zip(plain.state_dict().items(), named.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


@pytest.mark.parametrize(
    "kwargs, needle",
    [({"p_layers": "made"}, "unknown layer kind 'made'"), ({"q_layers": ["nade", "darn", "sbn"]}, "3 layer kinds for 2 latent layers")],
)
def test_bad_layer_kinds_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        HelmholtzMachine.sbn([10, 4, 2], **kwargs)


def test_rws_trains_and_the_config_round_trips():
    x = torch.as_tensor(load_dataset("digits").train[:100]).float()
    torch.manual_seed(6)
    model = HelmholtzMachine.sbn([64, 8, 4], p_layers=["nade", "darn"], q_layers="darn", nade_hidden=16)
    assert isinstance(model.generative[0], NADELayer) and isinstance(model.generative[1], DARNLayer)
    assert all(isinstance(r, DARNLayer) for r in model.recognition) and model.config["nade_hidden"] == 16
    est = ws.RWS(k=5)
    opt = build_optimizer(model, est, TrainConfig())
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(5):
        out, skipped = train_step(model, est, opt, x)
        assert skipped is None
        losses.append(out.loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # every parameter learned
    rebuilt = HelmholtzMachine.from_config(json.loads(json.dumps(model.config)))  # as config.json holds it
    rebuilt.load_state_dict(model.state_dict())
    zs, _ = model.propose(x, 3)
    torch.testing.assert_close(rebuilt.log_joint(x, zs), model.log_joint(x, zs), rtol=0, atol=0)
    torch.testing.assert_close(rebuilt.log_proposal(x, zs), model.log_proposal(x, zs), rtol=0, atol=0)
    zs_p, xp = model.sample(3)
    assert xp.shape == (3, 64) and [z.shape for z in zs_p] == [(3, 8), (3, 4)]


def test_compare_model_table_takes_the_layer_kinds():
    raw = {
        "data": {"dataset": "digits"},
        "model": {"kind": "sbn", "layers": [6], "p_layers": "nade", "q_layers": ["darn"], "nade_hidden": 8},
        "train": {"epochs": 1},
        "estimators": [{"label": "RWS", "algorithm": "rws"}],
    }
    model = compare_model(parse_config(raw, "x.toml"), 64)
    assert isinstance(model.generative[0], NADELayer) and model.generative[0].hidden == 8
    assert isinstance(model.recognition[0], DARNLayer)
    raw["model"] = {"kind": "gaussian", "layers": [2], "p_layers": "nade"}
    with pytest.raises(ConfigError, match="p_layers"):
        parse_config(raw, "x.toml")


# ------------------------------------------------------------------ command line


TINY = ["--dataset", "digits", "--epochs", "1", "--valid-k", "2", "--test-k", "5", "--no-progress"]


def test_command_line_layer_kinds_train_evaluate_and_resume(tmp_path):
    d = tmp_path / "run"
    code, _, err = run(
        ["train", *TINY, "--layers", "6", "3", "--layer", "nade", "darn", "--q-layer", "darn", "--nade-hidden", "8", "--run-dir", str(d)]
    )
    assert code == 0, err
    config = json.loads((d / "config.json").read_text())
    assert config["model"]["p_layers"] == ["nade", "darn"] and config["model"]["q_layers"] == ["darn", "darn"]
    assert config["model"]["nade_hidden"] == 8
    model = ws.HelmholtzMachine.from_config(config["model"])
    assert isinstance(model.generative[0], NADELayer) and isinstance(model.recognition[1], DARNLayer)
    code, out, err = run(["evaluate", str(d), "--k", "5", "--no-progress"])
    assert code == 0 and "test log-likelihood" in out, err
    code, out, err = run(["sample", str(d), "--n", "4"])
    assert code == 0, err
    code, _, err = run(["train", "--run-dir", str(d), "--resume", "--epochs", "2", "--no-progress", "--layer", "nade", "darn"])
    assert code == 0, err
    code, _, err = run(["train", "--run-dir", str(d), "--resume", "--epochs", "3", "--no-progress", "--q-layer", "nade"])
    assert code == 2 and "--q-layer nade (the run has --q-layer darn)" in err, err


def test_command_line_without_layer_kinds_records_the_plain_sbn(tmp_path):
    code, _, err = run(["train", *TINY, "--layers", "4", "--layer", "sbn", "--run-dir", str(tmp_path)])
    assert code == 0, err
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"] == {"kind": "sbn", "sizes": [64, 4], "q_hidden": [], "p_hidden": []}
    assert isinstance(ws.HelmholtzMachine.from_config(config["model"]).generative[0], BernoulliLayer)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--layers", "6", "3", "--layer", "nade", "darn", "sbn"], "--layer names 3 kinds for 2 latent layers"),
        (
            ["--layers", "4", "--model", "gaussian", "--layer", "nade"],
            "--layer, --q-layer, --nade-hidden and --prior choose the layers of --model sbn",
        ),
        (["--layers", "4", "--layer", "made"], "invalid choice"),
    ],
)
def test_command_line_bad_layer_kinds(tmp_path, extra, needle):
    code, _, err = run(["train", *TINY, *extra, "--run-dir", str(tmp_path / "r")])
    assert code == 2 and needle in err, err


def nade_inputs(seed: int, value_lead: tuple, bias_lead: tuple, d: int = 7, h: int = 5) -> tuple:
    """(v, c, W, V) in float64 with gradients, for value [*value_lead, d] and c [*bias_lead, h]."""
    torch.manual_seed(seed)
    v = (torch.rand(*value_lead, d, dtype=torch.float64) < 0.5).double().requires_grad_()
    c = torch.randn(*bias_lead, h, dtype=torch.float64, requires_grad=True)
    w = torch.randn(h, d, dtype=torch.float64, requires_grad=True)
    return v, c, w, torch.randn(d, h, dtype=torch.float64, requires_grad=True)


def plain_nade_logits(v, c, w, r):
    """V_i · σ(c + Σ_{j<i} W_:j v_j) by one cumulative sum over the whole [*, D, H] tensor."""
    before = torch.nn.functional.pad(torch.cumsum((v.unsqueeze(-1) * w.T)[..., :-1, :], -2), (0, 0, 1, 0))
    return torch.linalg.vecdot(torch.sigmoid(before + c.unsqueeze(-2)), r)


@pytest.mark.parametrize("block", [2**20, 45, 1])
@pytest.mark.parametrize("value_lead, bias_lead", [((4,), (3, 4)), ((3, 4), (4,))])
def test_nade_logits_blocks_against_autograd(monkeypatch, block, value_lead, bias_lead):
    """The blocked NADE read-out (closed-form backward) equals the plain cumulative-sum expression, and
    its gradient passes gradcheck, whatever the block size and broadcasting."""
    monkeypatch.setattr(fused, "_NADE_BLOCK", block)
    args = nade_inputs(7, value_lead, bias_lead)
    torch.testing.assert_close(fused.nade_logits(*args), plain_nade_logits(*args))
    assert torch.autograd.gradcheck(fused.nade_logits, args)


# ------------------------------------------------------------------ a NADE prior on the top layer


def nade_prior_by_hand(prior: NADEPrior, z: torch.Tensor) -> torch.Tensor:
    """log p(z) of a NADE prior written out unit by unit from its parameters, [S] for z [S, d]."""
    h, c, b = prior.hidden, prior.bias[: prior.hidden], prior.bias[prior.hidden :]
    assert c.shape == (h,)
    out = torch.zeros(z.shape[0], dtype=z.dtype)
    for i in range(z.shape[1]):
        hid = torch.sigmoid(c + z[:, :i] @ prior.weight[:, :i].T)
        p1 = torch.sigmoid(hid @ prior.readout_weight[i] + b[i])
        out = out + torch.where(z[:, i] == 1, p1, 1 - p1).log()
    return out


def test_nade_prior_normalises_and_matches_the_formula():
    torch.manual_seed(7)
    prior = NADEPrior(5, hidden=4).double()
    with torch.no_grad():
        for p in prior.parameters():
            p.normal_()
    z = binary_states(5, torch.float64)
    log_p = prior.log_prob(z)
    torch.testing.assert_close(log_p.logsumexp(0).exp(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(log_p, nade_prior_by_hand(prior, z))
    draws = prior.sample((20000,))  # frequencies of the 32 states against p(z)
    index = (draws * 2 ** torch.arange(4, -1, -1, dtype=torch.float64)).sum(-1).long()
    assert chisquare(torch.bincount(index, minlength=32).numpy(), 20000 * log_p.exp().detach().numpy()).pvalue > 1e-3
    assert prior.sample((3, 2)).shape == (3, 2, 5) and prior.mean((4,)).shape == (4, 5)
    with pytest.raises(ValueError, match="cannot be reparameterised"):
        prior.sample((2,), reparameterize=True)


def test_nade_prior_model_log_marginal_by_enumeration():
    """log p(x) = log Σ_z p(z) p(x | z) over the 2^3 states of z, the prior and the likelihood written out."""
    torch.manual_seed(8)
    model = HelmholtzMachine.sbn([4, 3], prior="nade", nade_hidden=3).double()
    assert isinstance(model.prior, NADEPrior) and model.config["prior"] == "nade" and model.config["nade_hidden"] == 3
    with torch.no_grad():
        for p in model.p_parameters():
            p.normal_()
    x = binary_states(4, torch.float64)  # every x: p(x) must also sum to 1
    z = binary_states(3, torch.float64)
    w, bias = model.generative[0].output_affine()
    p1 = torch.sigmoid(z @ w.T + bias)  # [8, 4]: p(x_j = 1 | z)
    log_lik = (x[:, None] * p1.log() + (1 - x[:, None]) * (1 - p1).log()).sum(-1)  # [16, 8]
    expected = (nade_prior_by_hand(model.prior, z)[None] + log_lik).logsumexp(1)
    got = model.exact_log_marginal(x)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.logsumexp(0).exp(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-12)
    ll = ws.log_likelihood(model, x[:4], k=4000, seed=0)  # importance sampling agrees (a bound, O(1/K) low)
    assert abs(ll.mean - got[:4].mean().item()) < 4 * ll.stderr + 0.05


def test_nade_prior_trains_and_round_trips():
    x = torch.as_tensor(load_dataset("digits").train[:50]).float()
    torch.manual_seed(9)
    model = HelmholtzMachine.sbn([64, 6], prior="nade", nade_hidden=5)
    est = ws.RWS(k=3)
    opt = build_optimizer(model, est, TrainConfig())
    before = [p.detach().clone() for p in model.prior.parameters()]
    for _ in range(2):
        assert train_step(model, est, opt, x)[1] is None
    assert all(not torch.equal(a, p) for a, p in zip(before, model.prior.parameters()))  # the prior learns
    rebuilt = HelmholtzMachine.from_config(json.loads(json.dumps(model.config)))
    rebuilt.load_state_dict(model.state_dict())
    zs, _ = model.propose(x, 2)
    torch.testing.assert_close(rebuilt.log_joint(x, zs), model.log_joint(x, zs), rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown prior kind 'made'"):
        HelmholtzMachine.sbn([64, 6], prior="made")
    raw = {"data": {"dataset": "digits"}, "model": {"kind": "sbn", "layers": [6], "prior": "nade"}, "train": {"epochs": 1}}
    raw["estimators"] = [{"label": "RWS", "algorithm": "rws"}]
    assert isinstance(compare_model(parse_config(raw, "x.toml"), 64).prior, NADEPrior)
    raw["model"]["prior"] = "made"
    with pytest.raises(ConfigError, match="model.prior"):
        parse_config(raw, "x.toml")


def test_command_line_nade_prior(tmp_path):
    d = tmp_path / "run"
    code, _, err = run(["train", *TINY, "--layers", "4", "--layer", "nade", "--prior", "nade", "--nade-hidden", "6", "--run-dir", str(d)])
    assert code == 0, err
    config = json.loads((d / "config.json").read_text())
    assert config["model"]["prior"] == "nade" and config["model"]["nade_hidden"] == 6 and config["options"]["prior"] == "nade"
    assert isinstance(ws.HelmholtzMachine.from_config(config["model"]).prior, NADEPrior)
    code, out, err = run(["evaluate", str(d), "--k", "5", "--no-progress"])  # the authors' protocol is --k 500
    assert code == 0 and "test log-likelihood" in out, err
    code, _, err = run(["train", "--run-dir", str(d), "--resume", "--epochs", "2", "--no-progress", "--prior", "sbn"])
    assert code == 2 and "--prior sbn (the run has --prior nade)" in err, err
    code, _, err = run(["train", *TINY, "--layers", "4", "--model", "gaussian", "--prior", "nade", "--run-dir", str(tmp_path / "g")])
    assert code == 2 and "--prior choose the layers of --model sbn" in err, err


@pytest.mark.parametrize(
    "value_lead, bias_lead",
    [
        ((4,), (3, 4)),
        pytest.param((3, 4), (4,), marks=pytest.mark.slow),  # ~10 s of compiling each
        pytest.param((3, 4), (), marks=pytest.mark.slow),
        pytest.param((3, 4), (3, 4), marks=pytest.mark.slow),
    ],
)
def test_compiled_nade_kernels_against_the_plain_expression(monkeypatch, value_lead, bias_lead):
    """The compiled NADE node (``--compile``; blocks of 3 units over 7, so the last block is short)
    equals the plain cumulative-sum expression and passes gradcheck, for every broadcasting of the
    value against c that the layers use (data against particles, particles against data, a prior's
    bias, particles against particles)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if not fused.use_compiled_kernels(True):
            pytest.skip("torch.compile is unavailable on this machine (no C++ compiler?)")
    monkeypatch.setattr(fused, "_NADE_COMPILED_BLOCK", 3)
    monkeypatch.setattr(fused, "_nade_compiled", None)
    try:
        args = nade_inputs(11, value_lead, bias_lead)
        out = fused.nade_logits(*args)
        assert type(out.grad_fn).__name__ == "_NADELogitsCompiledBackward"
        torch.testing.assert_close(out, plain_nade_logits(*args))
        assert torch.autograd.gradcheck(fused.nade_logits, args)
    finally:
        fused.use_compiled_kernels(False)
