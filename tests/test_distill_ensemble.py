"""FeatureHooks and Ensemble: hand-computed outputs, evaluation and size of the ensemble, clear errors."""

from __future__ import annotations

import math
import re

import helpers
import pytest
import torch
from helpers import randn, tolerance
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

import tensorcompress as tc

D = tc.distillation


def mlp(seed: int, hidden: int = 6, k: int = 5, d: int = 4, dtype=torch.float64) -> nn.Module:
    return helpers.mlp(d, hidden, k, seed=seed, dtype=dtype)


# ---------------------------------------------------------------- FeatureHooks


def test_feature_hooks_capture_the_named_layers_and_go_away(device, dtype):
    model = mlp(0, dtype=dtype).to(device)
    x = randn((3, 4), 1, device, dtype)
    with D.FeatureHooks(model, ["0", "1"]) as h:
        out = model(x)
        torch.testing.assert_close(h["0"], model[0](x), rtol=tolerance(dtype), atol=0)
        torch.testing.assert_close(h["1"], torch.relu(model[0](x)), rtol=tolerance(dtype), atol=0)
        assert h["1"].requires_grad  # a student's features keep their graph
    assert all(not m._forward_hooks for m in model.modules())
    torch.testing.assert_close(model(x), out)
    with pytest.raises(KeyError, match="not attached"):
        h["0"]


def test_feature_hooks_single_name_and_the_model_itself():
    model = mlp(1)
    x = torch.randn(2, 4, dtype=torch.float64)
    with D.FeatureHooks(model, "") as h:
        torch.testing.assert_close(h.model(x), h[""])
    assert h.names == ("",)


@pytest.mark.parametrize("name", ["1", "3"])
def test_feature_hooks_refuse_a_module_used_in_several_places(name):
    # one Tanh at positions 1 and 3: a hook on it fires twice per forward pass and keeps the second output, so "1"
    # would silently be the output of position 3 (and "3" was not found at all)
    act = nn.Tanh()
    model = nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 4), act)
    with pytest.raises(ValueError, match=re.escape("uses one module as the layers '1', '3'; a hook on " + repr(name))):
        D.FeatureHooks(model, [name])
    assert not any(m._forward_hooks for m in model.modules())


def test_feature_hooks_errors():
    model = mlp(2)
    with pytest.raises(ValueError, match="names: Sequential has no layer named 'fc1'.*Layers: '0', '1', '2'"):
        D.FeatureHooks(model, ["fc1"])
    with pytest.raises(ValueError, match="no layer named 'features.0.4x'. Did you mean 'features.0.4'"):
        D.FeatureHooks(tc.models.SmallCNN(), "features.0.4x")
    with pytest.raises(TypeError, match="names"):
        D.FeatureHooks(model, [0])
    with pytest.raises(TypeError, match="model"):
        D.FeatureHooks("model", ["0"])
    with D.FeatureHooks(model, ["0"]) as h:
        with pytest.raises(KeyError, match="has not run a forward"):
            h["0"]
        with pytest.raises(KeyError, match="not one of the hooked layers"):
            h["2"]


# ---------------------------------------------------------------- Ensemble


class Const(nn.Module):
    """A member that returns the same logits whatever its input."""

    def __init__(self, z: torch.Tensor):
        super().__init__()
        self.register_buffer("z", z)

    def forward(self, x):
        return self.z


def members(dtype=torch.float64, device="cpu", m=3):
    return [mlp(10 + i, dtype=dtype).to(device) for i in range(m)]


def test_mean_logits_equals_the_hand_computed_mean(device, dtype):
    ms = members(dtype, device)
    x = randn((7, 4), 3, device, dtype)
    ens = D.Ensemble(ms)
    ref = (ms[0](x) + ms[1](x) + ms[2](x)) / 3
    torch.testing.assert_close(ens(x), ref, rtol=tolerance(dtype), atol=1e-6 if dtype == torch.float32 else 1e-14)


def test_mean_probs_is_the_log_of_the_mean_distribution(device, dtype):
    ms = members(dtype, device)
    x = randn((7, 4), 4, device, dtype)
    out = D.Ensemble(ms, mode="mean_probs")(x)
    p = sum(torch.softmax(m(x), 1) for m in ms) / 3
    torch.testing.assert_close(out, p.log(), rtol=tolerance(dtype), atol=1e-6 if dtype == torch.float32 else 1e-13)
    torch.testing.assert_close(torch.softmax(out, 1), p, rtol=tolerance(dtype), atol=1e-7)


@pytest.mark.parametrize("mode", ["mean_logits", "mean_probs", "vote"])
def test_members_with_logits_near_the_largest_float32_give_finite_scores(mode):
    big = torch.tensor([[3e38, -3e38, 0.0], [1e-45, 0.0, -1e-45]])  # near float32's max, and subnormal
    same = [Const(big), Const(big.clone())]
    out = D.Ensemble(same, mode=mode)(torch.zeros(2, 1))
    assert out.dtype == torch.float32 and out.argmax(1).tolist() == [0, 0]
    if mode == "mean_probs":  # log of a probability e^(-6e38): -inf is its float32 rounding, NaN would not be
        assert not bool(out.isnan().any()) and out[0, 1] == -math.inf
    else:
        assert bool(torch.isfinite(out).all())
    if mode == "mean_logits":  # the mean of equal logits is the logits, subnormals too (a float32 sum gave inf)
        torch.testing.assert_close(out, big, rtol=0, atol=0)


def test_mean_probs_stays_finite_for_confident_members():
    a, b = nn.Linear(2, 3).double(), nn.Linear(2, 3).double()
    with torch.no_grad():
        for m, s in ((a, 1.0), (b, -1.0)):
            m.weight.zero_()
            m.bias.copy_(s * torch.tensor([2000.0, 0.0, -2000.0], dtype=torch.float64))
    out = D.Ensemble([a, b], mode="mean_probs")(torch.zeros(1, 2, dtype=torch.float64))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, [0, 2]], torch.full((2,), -math.log(2.0), dtype=torch.float64))


def test_vote_is_the_majority_with_ties_to_the_lower_class():
    fixed = [torch.tensor([[0.0, 1, 0], [3, 0, 0], [0, 0, 1]]),
             torch.tensor([[0.0, 2, 0], [0, 0, 1], [0, 1, 0]]),
             torch.tensor([[1.0, 0, 0], [0, 0, 1], [1, 0, 0]])]

    class Fixed(nn.Module):
        def __init__(self, z):
            super().__init__()
            self.register_buffer("z", z)

        def forward(self, x):
            return self.z

    out = D.Ensemble([Fixed(z) for z in fixed], mode="vote")(torch.zeros(3, 1))
    assert out.argmax(1).tolist() == [1, 2, 0]  # votes: (1,1,0) -> 1; (0,2,2) -> 2; (2,1,0) three-way tie -> 0
    torch.testing.assert_close(torch.softmax(out, 1), torch.tensor([[1, 2, 0], [1, 0, 2], [1, 1, 1]]) / 3,
                               rtol=0, atol=1e-6)
    assert torch.isfinite(out).all()


def test_members_may_return_features_too():
    class WithFeatures(nn.Module):
        def __init__(self, seed):
            super().__init__()
            self.net = mlp(seed)

        def forward(self, x):
            return self.net(x), x

    ms = [WithFeatures(20), WithFeatures(21)]
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(D.Ensemble(ms)(x), (ms[0].net(x) + ms[1].net(x)) / 2)


def test_ensemble_in_evaluate_and_the_leaderboard():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    y = torch.randint(0, 5, (40,), generator=g)
    data = TensorDataset(x, y)
    ms = members(torch.float32)
    ens = D.Ensemble(ms)
    ev = tc.evaluate(ens, data)
    with torch.no_grad():
        z = ens(x)
    assert ev.accuracy == pytest.approx(float((z.argmax(1) == y).double().mean()))
    assert ev.loss == pytest.approx(float(F.cross_entropy(z, y)), rel=1e-5)
    assert tc.count_parameters(ens) == sum(tc.count_parameters(m) for m in ms)
    assert tc.model_size_bytes(ens) > sum(p.numel() * 4 for m in ms for p in m.parameters())
    board = tc.Leaderboard(data, measure_latency=False)
    board.add("member", ms[0], family="baseline")
    board.add("ensemble", ens, family="ensemble")
    rows = {r.name: r for r in board.rows()}
    assert rows["ensemble"].params == 3 * rows["member"].params
    assert rows["ensemble"].bytes == tc.model_size_bytes(ens)
    assert rows["ensemble"].mean == pytest.approx(ev.accuracy)


def test_ensemble_errors():
    with pytest.raises(ValueError, match="models must hold at least one model"):
        D.Ensemble([])
    with pytest.raises(TypeError, match="single Linear"):
        D.Ensemble(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="models\\[1\\] must be an nn.Module"):
        D.Ensemble([nn.Linear(2, 2), "b"])
    with pytest.raises(ValueError, match="mode must be one of"):
        D.Ensemble([nn.Linear(2, 2)], mode="median")
    ens = D.Ensemble([nn.Linear(2, 3), nn.Linear(2, 4)])
    with pytest.raises(ValueError, match="models\\[0\\] gave \\(5, 3\\), models\\[1\\] gave \\(5, 4\\)"):
        ens(torch.zeros(5, 2))
    assert "mode='mean_logits'" in repr(ens)
