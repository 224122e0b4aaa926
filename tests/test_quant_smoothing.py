"""AWQ and SmoothQuant: the groups and producers found on the traced graph, the folds written out by hand, AWQ's
error against RTN's on inputs with outlier channels, SmoothQuant's identity and its lower W8A8 error, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_model_unchanged, model_state, randn
from torch import nn

import tensorcompress as tc
from tensorcompress import quantization as Q


class Attention(nn.Module):
    """Pre-LayerNorm attention and MLP: the LayerNorms feed q, k, v (one group) and fc1; o reads the attention
    product and fc2 the GELU, so neither has a layer to absorb scales."""

    def __init__(self, d: int = 16, *, outliers: float = 1.0) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        with torch.no_grad():  # a few channels that carry much larger activations, as trained transformers have
            for ln in (self.ln1, self.ln2):
                ln.weight[:2] *= outliers
                ln.bias.uniform_(-0.1, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        att = torch.softmax(self.q(h) @ self.k(h).transpose(-1, -2) / math.sqrt(h.shape[-1]), -1)
        x = x + self.o(att @ self.v(h))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))


def attention(seed: int = 0, *, outliers: float = 20.0, dtype=torch.float32) -> Attention:
    torch.manual_seed(seed)
    return Attention(outliers=outliers).to(dtype)


def tokens(seed: int, dtype=torch.float32) -> torch.Tensor:
    return randn((8, 12, 16), seed, dtype=dtype)


def scales_by_hand(x_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    s = x_mean.pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


# ---------------------------------------------------------------------------------------------------------------
# AWQ


def test_awq_scales_search_the_grid_and_alpha_zero_is_rtn():
    x = randn((200, 32), 1)
    x[:, :3] *= 25
    w = randn((24, 32), 2)
    h = 2 * x.T @ x / 200
    s, alpha, errors = Q.awq_scales([w], x.abs().mean(0), h, bits=3, group_size=8, n_grid=10)
    delta = w - Q.rtn(w, 3, 8)
    assert len(errors) == 10 and errors[0] == pytest.approx(float(((delta @ h) * delta).sum()), rel=1e-12)
    assert alpha in [i / 10 for i in range(10)] and errors[int(alpha * 10)] == min(errors)
    torch.testing.assert_close(s, scales_by_hand(x.abs().mean(0), alpha))
    assert alpha > 0 and min(errors) < 0.9 * errors[0]  # the salient channels are protected


def test_awq_beats_rtn_on_inputs_with_outlier_channels_across_draws():
    wins, ratios = 0, []
    for seed in range(20):
        x = randn((256, 64), 100 + seed)
        x[:, torch.randperm(64, generator=torch.Generator().manual_seed(seed))[:4]] *= 20
        w = randn((32, 64), 200 + seed)
        h = 2 * x.T @ x / 256
        _, _, errors = Q.awq_scales([w], x.abs().mean(0), h, bits=3, group_size=16)
        wins += min(errors) < errors[0]
        ratios.append(min(errors) / errors[0])
    assert wins >= 19 and sum(ratios) / 20 < 0.9, ratios


def test_awq_folds_into_the_layernorm_and_scales_the_others_own_input(dtype):
    model = attention(dtype=dtype)
    x = tokens(3, dtype)
    before = model_state(model)
    q, rows = Q.awq(model, x, bits=3, group_size=8, n_grid=10)
    assert_model_unchanged(model, before)
    by = {r.name: r for r in rows}
    assert set(by) == {"q", "k", "v", "o", "fc1", "fc2"} and all(isinstance(r, Q.WeightOnlyLayer) for r in rows)
    assert by["q"].scaled_by == by["k"].scaled_by == by["v"].scaled_by == "ln1" and by["fc1"].scaled_by == "ln2"
    assert by["o"].scaled_by == by["fc2"].scaled_by == "input_scale"
    assert by["q"].alpha == by["k"].alpha == by["v"].alpha
    # by hand: the scales from mean |LN1(x)|, the LayerNorm divided by them, q's codes the RTN codes of W diag(s)
    with torch.no_grad():
        h = model.ln1(x).reshape(-1, 16).double()
        s = scales_by_hand(h.abs().mean(0), by["q"].alpha).to(dtype)
        torch.testing.assert_close(q.ln1.weight, model.ln1.weight / s)
        torch.testing.assert_close(q.ln1.bias, model.ln1.bias / s)
        assert q.q.input_scale is None and q.o.input_scale is not None
        codes = Q.rtn_grid(model.q.weight * s, 3, 8)[0]
        assert (q.q.code_matrix() == codes).double().mean() > 0.99
        a = tc.surgery.capture_inputs(model, x, "fc2")["fc2"].reshape(-1, 32).double()
        s2 = scales_by_hand(a.abs().mean(0), by["fc2"].alpha).to(dtype)
        torch.testing.assert_close(q.fc2.input_scale, 1 / s2)
        assert (q.fc2.code_matrix() == Q.rtn_grid(model.fc2.weight * s2, 3, 8)[0]).double().mean() > 0.99
    # the model's outputs move only by the quantization: close to the float model, and closer than RTN's
    rtn, _ = Q.quantize_weights(model, bits=3, group_size=8)
    with torch.no_grad():
        err_awq, err_rtn = (q(x) - model(x)).norm(), (rtn(x) - model(x)).norm()
    assert err_awq < err_rtn, (float(err_awq), float(err_rtn))
    assert all(0 < r.output_error < 1 for r in rows)


def test_awq_folds_into_a_preceding_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 8))
    x = randn((64, 16), 1, dtype=torch.float32)
    x[:, :2] *= 30
    q, rows = Q.awq(model, x, bits=4, include="1")
    assert rows[0].scaled_by == "0" and type(q[0]) is nn.Linear and q[1].input_scale is None
    with torch.no_grad():
        s = scales_by_hand(model[0](x).abs().mean(0).double(), rows[0].alpha).float()
        torch.testing.assert_close(q[0].weight, model[0].weight / s.unsqueeze(1))
        torch.testing.assert_close(q[0].bias, model[0].bias / s)


@pytest.mark.parametrize("kwargs, calibration, error, match", [
    ({"bits": 1}, "x", ValueError, "bits must be between 2 and 8"),
    ({"bits": 3, "group_size": 5}, "x", ValueError, "group_size=5 does not divide the 16 inputs"),
    ({"bits": 3, "n_grid": 0}, "x", ValueError, "n_grid must be >= 1"),
    ({"bits": 3}, [], ValueError, "calibration is empty"),
    ({"bits": 3, "include": "nope"}, "x", ValueError, r"include entries \['nope'\] match no"),
])
def test_awq_bad_input(kwargs, calibration, error, match):
    model = attention()
    before = model_state(model)
    with pytest.raises(error, match=match):
        Q.awq(model, tokens(0) if calibration == "x" else calibration, **kwargs)
    assert_model_unchanged(model, before)


# ---------------------------------------------------------------------------------------------------------------
# SmoothQuant


def test_smoothquant_is_an_identity_on_the_outputs(dtype):
    model = attention(dtype=dtype)
    x = tokens(4, dtype)
    before = model_state(model)
    s_model, rows = Q.smoothquant(model, x)
    assert_model_unchanged(model, before)
    assert sorted(r.name for r in rows) == ["fc1", "k", "q", "v"] and all(isinstance(r, Q.SmoothedLayer) for r in rows)
    assert {r.norm for r in rows} == {"ln1", "ln2"} and all(r.alpha == 0.5 for r in rows)
    with torch.no_grad():
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(s_model(x), model(x), rtol=tol, atol=tol)
        # by hand: s_j = max|X_j|^a / max|W_:,j|^(1-a), W the q, k, v weights stacked
        h = model.ln1(x).reshape(-1, 16)
        w_max = torch.cat([model.q.weight, model.k.weight, model.v.weight]).abs().amax(0)
        s = (h.abs().amax(0).pow(0.5) / w_max.pow(0.5)).clamp(min=1e-5)
        torch.testing.assert_close(s_model.q.weight, model.q.weight * s)
        torch.testing.assert_close(s_model.ln1.weight, model.ln1.weight / s)
    by = {r.name: r for r in rows}
    assert by["q"].input_max_after < by["q"].input_max_before / 2  # the outlier channels are tamed


def w8a8_error(model: nn.Module, x: torch.Tensor) -> float:
    q, _ = Q.quantize_model(model, weight_bits=8, act_bits=8)
    Q.calibrate(q, x)
    with torch.no_grad():
        return float((q(x) - model(x)).norm() / model(x).norm())


def test_smoothquant_lowers_the_w8a8_error_where_activations_carry_outliers():
    for seed in range(3):
        model, x = attention(seed, outliers=50.0), tokens(10 + seed)
        plain = w8a8_error(model, x)
        smoothed = w8a8_error(Q.smoothquant(model, x)[0], x)
        assert smoothed < 0.7 * plain, (seed, smoothed, plain)


def test_smoothquant_bad_input_and_nothing_to_act_on():
    model = attention()
    with pytest.raises(ValueError, match=r"alpha must be a fraction in \[0, 1\]"):
        Q.smoothquant(model, tokens(0), alpha=1.5)
    with pytest.raises(ValueError, match="calibration is empty"):
        Q.smoothquant(model, [])
    with pytest.raises(ValueError, match="smoothquant: nothing to act on, no selected nn.Linear reads a LayerNorm"):
        Q.smoothquant(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), torch.ones(3, 4))
    # q without k and v: the LayerNorm's output goes to layers left out, so it cannot be rescaled
    with pytest.raises(ValueError, match="nothing to act on"):
        Q.smoothquant(model, tokens(0), include=["q", "o"])
    _, rows = Q.smoothquant(model, tokens(0), exclude="fc1")
    assert sorted(r.name for r in rows) == ["k", "q", "v"]


def test_awq_scales_bad_input():
    w, x = randn((4, 8), 0), randn((16, 8), 1)
    with pytest.raises(TypeError, match="weights must be a non-empty list"):
        Q.awq_scales([], x.abs().mean(0), x.T @ x, bits=3)
    with pytest.raises(ValueError, match="bits must be between 2 and 8"):
        Q.awq_scales([w], x.abs().mean(0), x.T @ x, bits=9)
    with pytest.raises(ValueError, match="n_grid must be >= 1"):
        Q.awq_scales([w], x.abs().mean(0), x.T @ x, bits=3, n_grid=0)
