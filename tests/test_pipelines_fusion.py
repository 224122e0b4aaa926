"""fuse_conv_bn: the folded weights equal the closed form, the fused model computes the original function, and
graphs it cannot follow are refused."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import assert_model_unchanged, model_state, tolerance
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import tensorcompress as tc
from tensorcompress.surgery import fuse_conv_bn


def _randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics and affine parameters (a fresh BatchNorm folds to the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.05)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))
    return model


def _closed_form(layer: nn.Module, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """W' = γW/√(σ²+ε), b' = β + γ(b − μ)/√(σ²+ε), written out."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    b = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    shape = (-1,) + (1,) * (layer.weight.ndim - 1)
    return layer.weight * scale.reshape(shape), bn.bias + scale * (b - bn.running_mean)


def test_smallcnn_fused_equals_unfused_and_closed_form(device, dtype):
    model = _randomise_bn(tc.models.SmallCNN(input_size=8), 0).to(device, dtype).eval()
    before = model_state(model)
    fused, rows = fuse_conv_bn(model)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert torch.allclose(out, ref, rtol=tolerance(dtype), atol=tolerance(dtype) * float(ref.abs().max()))
    assert [r.name for r in rows] == ["features.0.0", "features.0.3", "features.1.0", "features.1.3"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    for row in rows:
        conv, bn = model.get_submodule(row.name), model.get_submodule(row.detail["batchnorm"])
        w, b = _closed_form(conv, bn)
        new = fused.get_submodule(row.name)
        assert torch.allclose(new.weight, w, rtol=tolerance(dtype), atol=0)
        assert torch.allclose(new.bias, b, rtol=tolerance(dtype), atol=tolerance(dtype))
        assert row.params_before == conv.weight.numel() + 2 * bn.num_features  # γ and β (μ, σ² are buffers)
        assert row.params_after == conv.weight.numel() + conv.out_channels
        assert new.weight.device == conv.weight.device and new.weight.dtype == dtype
    # the input is untouched
    assert_model_unchanged(model, before)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4


@given(dim=st.integers(1, 3), c_in=st.integers(1, 4), c_out=st.integers(1, 5), k=st.integers(1, 3),
       bias=st.booleans(), groups=st.sampled_from([1, "depthwise"]), seed=st.integers(0, 2**16))
def test_each_pair_equals_pytorch_fusion_and_the_formula(dim, c_in, c_out, k, bias, groups, seed):
    torch.manual_seed(seed)
    conv_t = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
    bn_t = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dim]
    g = c_in if groups == "depthwise" else 1
    c_out = c_in * c_out if groups == "depthwise" else c_out
    model = nn.Sequential(conv_t(c_in, c_out, k, groups=g, bias=bias, padding=1), bn_t(c_out), nn.ReLU())
    model = _randomise_bn(model.double(), seed).eval()
    fused, rows = fuse_conv_bn(model)
    assert len(rows) == 1 and isinstance(fused[1], nn.Identity)
    oracle = fuse_conv_bn_eval(model[0], model[1])
    assert torch.allclose(fused[0].weight, oracle.weight, rtol=1e-12, atol=0)
    assert torch.allclose(fused[0].bias, oracle.bias, rtol=1e-12, atol=1e-14)
    w, b = _closed_form(model[0], model[1])
    assert torch.allclose(fused[0].weight, w, rtol=1e-12, atol=0) and torch.allclose(fused[0].bias, b, atol=1e-12)
    x = torch.randn((2, c_in) + (5,) * dim, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), rtol=1e-10, atol=1e-10)


def test_linear_followed_by_batchnorm1d(dtype):
    model = _randomise_bn(nn.Sequential(nn.Linear(7, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)), 3).to(dtype).eval()
    x = torch.randn(9, 7, dtype=dtype)
    fused, rows = fuse_conv_bn(model, x)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), rtol=tolerance(dtype), atol=tolerance(dtype))
    assert [r.name for r in rows] == ["0"] and rows[0].type_after == "Linear"


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fuse_conv_bn(tc.models.SmallCNN())
    model = tc.models.SmallCNN().eval()
    model.features[1][4].train()
    with pytest.raises(ValueError, match=r"features\.1\.4.*training mode"):
        fuse_conv_bn(model)


class _Wired(nn.Module):
    """Layers wired in forward, not in a Sequential: conv1→bn1 foldable, conv2→ReLU(in place)→bn2 not."""

    def __init__(self, residual: bool = False) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu, self.residual = nn.ReLU(inplace=True), residual

    def forward(self, x):
        y = self.conv1(x)
        z = self.bn1(y) + (y if self.residual else 0)
        return self.bn2(self.relu(self.conv2(z)))


def test_wired_model_needs_example_input_and_traces_only_true_pairs():
    model = _randomise_bn(_Wired(), 4).eval()
    with pytest.raises(ValueError, match="example_input"):
        fuse_conv_bn(model)
    x = torch.randn(3, 2, 6, 6)
    fused, rows = fuse_conv_bn(model, x)
    assert [(r.name, r.detail["batchnorm"]) for r in rows] == [("conv1", "bn1")]  # bn2 sees a ReLU's output
    assert [(s.layer, s.batchnorm) for s in rows.skipped] == [(None, "bn2")]
    assert "relu (ReLU)" in rows.skipped[0].reason  # the in-place ReLU is a node of its own
    assert isinstance(fused.bn1, nn.Identity) and isinstance(fused.bn2, nn.BatchNorm2d)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_layer_feeding_a_residual_is_detected():
    model = _randomise_bn(_Wired(residual=True), 5).eval()
    with pytest.raises(ValueError, match=r"skipped conv1 -> bn1: .*also read by \['add'\].*residual"):
        fuse_conv_bn(model, torch.randn(2, 2, 6, 6))
    with pytest.raises(ValueError, match="no convolution.*include/exclude"):  # conv2 -> ReLU -> bn2 is no pair
        fuse_conv_bn(model, torch.randn(2, 2, 6, 6), exclude="conv1")


# ---------------------------------------------------------------- pairs the traced graph must not fold
# Each model below returns a tuple, so that comparing only a single tensor output would not notice a wrong fold,
# and has one safe pair (conv2 -> bn2) besides the unsafe one.


class _Unsafe(nn.Module):
    """conv1 -> bn1 made unsafe by ``how``; conv2 -> bn2 a true pair."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv1(x)
        z = self.bn1(y)
        extra = {"residual": lambda: z + y, "output": lambda: y, "shared": lambda: self.conv1(x).relu(),
                 "bn twice": lambda: self.bn1(z), "none": lambda: z}[self.how]()
        return self.bn2(self.conv2(z)), extra


@pytest.mark.parametrize(("how", "reason"), [
    ("residual", r"also read by \['add'\]"), ("output", "output of the model"),
    ("shared", "layer is called 2 times"), ("bn twice", "BatchNorm is called 2 times")])
def test_an_unsafe_pair_of_a_tuple_output_is_skipped_with_its_reason(how, reason):
    model = _randomise_bn(_Unsafe(how), 9).eval()
    x = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(2))
    fused, report = fuse_conv_bn(model, x)
    assert isinstance(fused.bn1, nn.BatchNorm2d)
    assert [(s.layer, s.batchnorm) for s in report.skipped][0] == ("conv1", "bn1")
    assert re.search(reason, report.skipped[0].reason) and "skipped conv1 -> bn1" in str(report)
    assert [r.name for r in report] == ["conv2"]
    x2 = torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for a, b in zip(model(x2), fused(x2), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_the_safe_variant_folds_both_pairs():
    model = _randomise_bn(_Unsafe("none"), 9).eval()
    fused, report = fuse_conv_bn(model, torch.randn(3, 2, 5, 5))
    assert [r.name for r in report] == ["conv1", "conv2"] and report.skipped == []


class _LinearBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.bn, self.head = nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.bn(self.fc(x))), x.sum()


def test_linear_and_batchnorm1d_on_3d_inputs_are_not_folded():
    model = _randomise_bn(_LinearBN(), 10).eval()
    x3 = torch.randn(5, 4, 4)  # (N, L, C): BatchNorm1d normalises L, not the Linear's features
    with pytest.raises(ValueError, match=r"skipped fc -> bn: the Linear's output has shape \[5, 4, 4\]"):
        fuse_conv_bn(model, x3)
    fused, report = fuse_conv_bn(model, torch.randn(5, 4))  # 2-D: a true pair
    assert [r.name for r in report] == ["fc"]
    seq = _randomise_bn(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), 11).eval()
    with pytest.raises(ValueError, match="skipped 0 -> 1: BatchNorm1d normalises dimension 1.*example_input"):
        fuse_conv_bn(seq)  # the module tree does not say the input's rank


def test_without_a_trace_a_layer_also_registered_elsewhere_is_skipped():
    class SidePath(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
            self.again = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
            self.side = self.block[0]  # the same convolution, called without its BatchNorm

        def forward(self, x):
            return self.again(self.block(x)) + self.side(x)

    model = _randomise_bn(SidePath(), 12).eval()
    fused, report = fuse_conv_bn(model)
    assert [r.name for r in report] == ["again.0"]
    assert [s.layer for s in report.skipped] == ["block.0"] and "'side'" in report.skipped[0].reason
    x = torch.randn(2, 2, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    traced, report = fuse_conv_bn(model, x)  # the trace sees the second call
    assert [r.name for r in report] == ["again.0"] and "called 2 times" in report.skipped[0].reason


def test_a_shared_container_is_folded_once():
    block = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    model = _randomise_bn(nn.Sequential(block, block), 13).eval()
    x = torch.randn(2, 3, 4, 4)
    fused, report = fuse_conv_bn(model)  # the module tree: one pair under two names, folded once, the tie kept
    assert [r.name for r in report] == ["0.0"] and report[0].aliases == ("1.0",) and fused[0] is fused[1]
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="called 2 times"):  # the trace proves only a layer called once
        fuse_conv_bn(model, x)


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_every_output_is_compared(kind, monkeypatch):
    from tensorcompress.surgery import fusion

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return (x.mean(), y) if kind == "tuple" else {"x": x.mean(), "y": y}

    wrong = fusion._fold

    def off_by_one(layer, bn):
        new = wrong(layer, bn)
        with torch.no_grad():
            new.bias.add_(1.0)
        return new

    monkeypatch.setattr(fusion, "_fold", off_by_one)
    with pytest.raises(ValueError, match="changed output 1"):
        fuse_conv_bn(_randomise_bn(Two(), 14).eval(), torch.randn(2, 1, 3, 3))


@given(how=st.sampled_from(["residual", "output", "shared", "bn twice", "none"]), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1e-6, 1.0, 1e4]))
def test_the_fused_model_computes_the_original_function(how, seed, scale):
    model = _randomise_bn(_Unsafe(how), seed).double().eval()
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64)
    fused, report = fuse_conv_bn(model, x)
    assert ("conv1" in [r.name for r in report]) == (how == "none")
    x2 = scale * torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(model(x2), fused(x2), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9 * max(1.0, float(a.abs().max())))


def test_include_exclude_flags_and_shared_modules():
    model = _randomise_bn(tc.models.SmallCNN(input_size=8), 6).eval()
    model.features[0][0].weight.requires_grad_(False)
    fused, rows = fuse_conv_bn(model, include="features.0.*")
    assert [r.name for r in rows] == ["features.0.0", "features.0.3"]
    assert isinstance(fused.features[1][1], nn.BatchNorm2d)
    assert not fused.features[0][0].weight.requires_grad and fused.features[0][3].weight.requires_grad
    assert not fused.training
    with pytest.raises(ValueError, match="match no"):
        fuse_conv_bn(model, include="nothing.*")
    conv = nn.Conv2d(3, 3, 1)
    shared = nn.Sequential(nn.Sequential(conv, nn.BatchNorm2d(3)), nn.Sequential(conv, nn.BatchNorm2d(3))).eval()
    with pytest.raises(ValueError, match="shared"):
        fuse_conv_bn(shared)


def test_nothing_to_fold_and_bad_arguments():
    with pytest.raises(ValueError, match="no convolution"):
        fuse_conv_bn(tc.models.LeNet5().eval())
    with pytest.raises(TypeError, match="model must be"):
        fuse_conv_bn("SmallCNN")
    with pytest.raises(TypeError, match="example_input"):
        fuse_conv_bn(tc.models.SmallCNN().eval(), [1, 2])
    no_stats = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2, track_running_stats=False)).eval()
    for x in (None, torch.randn(2, 1, 3, 3)):  # batch statistics even in eval mode: nothing fixed to fold
        with pytest.raises(ValueError, match=r"BatchNorm '1' after '0' has no running statistics"):
            fuse_conv_bn(no_stats, x)


def test_a_transposed_convolution_is_refused_by_name():
    model = nn.Sequential(nn.ConvTranspose2d(2, 3, 2), nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    model = _randomise_bn(model, 8).eval()
    for x in (None, torch.randn(2, 2, 4, 4)):
        with pytest.raises(ValueError, match=r"'0' \(ConvTranspose2d\) feeds BatchNorm '1'.*exclude='0'"):
            fuse_conv_bn(model, x)
        fused, rows = fuse_conv_bn(model, x, exclude="0")
        assert [r.name for r in rows] == ["2"] and isinstance(fused[1], nn.BatchNorm2d)


def test_flops_do_not_change_but_a_layer_goes():
    model = tc.models.SmallCNN(input_size=8).eval()
    fused, _ = fuse_conv_bn(model)
    x = torch.randn(1, 1, 8, 8)
    assert tc.flops(fused, x) <= tc.flops(model, x)
    assert tc.count_parameters(fused) < tc.count_parameters(model)
