"""Coupled channel groups (residual additions, depthwise convolutions): channel_groups written out by hand for
ResNet8 and MobileNetV2Tiny, prune(structure="filters") zeroing exactly each group's channels, shrink equal to the
masked model with Torch-Pruning's parameter count for the same channels, fuse_conv_bn folding every pair."""

import copy

import pytest
import torch
from helpers import assert_model_unchanged, model_state
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tensorcompress as tc
from tensorcompress.pruning import prune, shrink
from tensorcompress.surgery import channel_groups, fuse_conv_bn, trace

MODELS = {"resnet8": tc.models.ResNet8, "mobilenetv2_tiny": tc.models.MobileNetV2Tiny}


def _random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Eval mode with random statistics and affine: a wrong channel anywhere shows in the output."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


def _model(name: str, dtype=torch.float32, **kwargs) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = _random_bn(MODELS[name](**kwargs)).to(dtype)
    return model, torch.randn(3, 1, 28, 28, dtype=dtype, generator=torch.Generator().manual_seed(1))


def _summary(groups):
    return [(g.channels, g.producers, g.norms, g.depthwise, g.consumers, g.adds, g.prunable) for g in groups]


def test_groups_of_resnet8():
    model, x = _model("resnet8")
    groups = channel_groups(trace(model, x))
    b = "blocks"
    assert _summary(groups) == [
        (1, [], [], [], {"stem.0": 1}, [], False),  # the image
        # the residual stream of stage 1: the stem and block 0's conv2 feed the same addition (identity shortcut)
        (16, ["stem.0", f"{b}.0.conv2"], ["stem.1", f"{b}.0.bn2"], [],
         {f"{b}.0.conv1": 1, f"{b}.1.conv1": 1, f"{b}.1.shortcut.0": 1}, [f"{b}.0.add"], True),
        (16, [f"{b}.0.conv1"], [f"{b}.0.bn1"], [], {f"{b}.0.conv2": 1}, [], True),
        (32, [f"{b}.1.conv1"], [f"{b}.1.bn1"], [], {f"{b}.1.conv2": 1}, [], True),
        # stage 2: conv2 and the projection shortcut feed one addition
        (32, [f"{b}.1.conv2", f"{b}.1.shortcut.0"], [f"{b}.1.bn2", f"{b}.1.shortcut.1"], [],
         {f"{b}.2.conv1": 1, f"{b}.2.shortcut.0": 1}, [f"{b}.1.add"], True),
        (64, [f"{b}.2.conv1"], [f"{b}.2.bn1"], [], {f"{b}.2.conv2": 1}, [], True),
        (64, [f"{b}.2.conv2", f"{b}.2.shortcut.0"], [f"{b}.2.bn2", f"{b}.2.shortcut.1"], [],
         {"classifier": 1}, [f"{b}.2.add"], True),  # pooled to 1x1: one feature per channel
        (10, ["classifier"], [], [], {}, [], False),  # the logits
    ]
    assert groups[0].reason == "its channels are the model's input"
    assert groups[-1].reason == "its channels are an output of the model"
    assert {"stem.2", "blocks.0.shortcut", "blocks.0.relu2"} <= set(groups[1].passes)


def test_groups_of_mobilenetv2_tiny():
    model, x = _model("mobilenetv2_tiny")
    groups = channel_groups(trace(model, x))

    def hidden(i, c):  # expansion -> depthwise -> projection: the depthwise filters belong to the group
        b = f"blocks.{i}"
        return (c, [f"{b}.expand.0"], [f"{b}.expand.1", f"{b}.depthwise.1"], [f"{b}.depthwise.0"],
                {f"{b}.project.0": 1}, [], True)

    assert _summary(groups) == [
        (1, [], [], [], {"stem.0": 1}, [], False),
        (16, ["stem.0", "blocks.0.project.0"], ["stem.1", "blocks.0.project.1"], [],
         {"blocks.0.expand.0": 1, "blocks.1.expand.0": 1}, ["blocks.0.add"], True),
        hidden(0, 64),
        hidden(1, 64),
        (24, ["blocks.1.project.0", "blocks.2.project.0"], ["blocks.1.project.1", "blocks.2.project.1"], [],
         {"blocks.2.expand.0": 1, "blocks.3.expand.0": 1}, ["blocks.2.add"], True),
        hidden(2, 96),
        hidden(3, 96),
        (32, ["blocks.3.project.0", "blocks.4.project.0"], ["blocks.3.project.1", "blocks.4.project.1"], [],
         {"blocks.4.expand.0": 1, "head.0": 1}, ["blocks.4.add"], True),
        hidden(4, 128),
        (128, ["head.0"], ["head.1"], [], {"classifier": 1}, [], True),
        (10, ["classifier"], [], [], {}, [], False),
    ]


class _Plus(nn.Module):
    """A residual written with ``+``, with ``torch.add`` and with ``Add``; a conv feeding two consumers."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.a, self.b, self.c = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.add = tc.surgery.Add()
        self.head = nn.Linear(4 * 3 * 3, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        y, z = self.b(h), self.c(h)  # h feeds two consumers
        s = y + z if self.how == "plus" else torch.add(y, z) if self.how == "torch.add" else self.add(y, z)
        return self.head(torch.flatten(s, 1))


@pytest.mark.parametrize("how", ["plus", "torch.add", "Add"])
def test_an_addition_written_any_way_merges_groups(how):
    torch.manual_seed(0)
    model, x = _Plus(how), torch.randn(2, 2, 3, 3)
    groups = channel_groups(trace(model, x))
    assert _summary(groups)[1:3] == [
        (4, ["a"], [], [], {"b": 1, "c": 1}, [], True),
        (4, ["b", "c"], [], [], {"head": 9}, ["add"], True),  # a module's name, or the function's
    ]
    masked, rows = prune(model, x, amount=2, structure="filters")
    assert {r.name: r.group for r in rows} == {"a": "a", "b": "b, c", "c": "b, c", "head": None}
    assert torch.equal(masked.b.weight_mask.flatten(1).amax(1), masked.c.weight_mask.flatten(1).amax(1))
    small, _ = shrink(masked, x)
    assert (small.a.out_channels, small.b.in_channels, small.c.in_channels, small.b.out_channels,
            small.head.in_features) == (2, 2, 2, 2, 18)
    torch.testing.assert_close(small(x), masked(x), rtol=0, atol=1e-6)


class _Grouped(nn.Module):
    def __init__(self, groups=2):
        super().__init__()
        self.a, self.g = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 1, groups=groups)
        self.b, self.add = nn.Conv2d(2, 4, 1), tc.surgery.Add()

    def forward(self, x):
        return self.add(self.g(self.a(x)), self.b(x)).mean((2, 3))


def test_a_grouped_convolution_is_not_followed():
    torch.manual_seed(0)
    model, x = _Grouped(), torch.randn(2, 2, 3, 3)
    groups = channel_groups(trace(model, x))
    blocked = [g for g in groups if g.blocked]
    assert blocked and all("grouped convolutions" in g.blocked and "g (Conv2d) has groups=2" in g.blocked
                           for g in blocked)
    masked, rows = prune(model, x, amount=0.5, structure="filters")
    assert all(r.sparsity == 0 and r.skipped for r in rows)  # nothing prunable: every row says why
    assert all("g (Conv2d) has groups=2" in r.skipped for r in rows if r.name in ("a", "g"))
    with pytest.raises(ValueError, match=r"shrink cannot follow grouped convolutions .*groups=2"):
        shrink(masked, x)


class _Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.add = nn.Linear(4, 4), nn.Linear(4, 4), tc.surgery.Add()

    def forward(self, x):
        return self.add(self.b(torch.sigmoid(self.a(x))), x)


def test_an_unknown_operation_makes_its_groups_unprunable():
    model, x = _Unknown(), torch.randn(2, 4)
    groups = channel_groups(trace(model, x))
    assert "the operation 'sigmoid'" in groups[1].reason and groups[1].producers == ["a"]
    masked, rows = prune(model, x, amount=0.5, structure="filters")
    assert {r.name: r.skipped.split(" (")[0] for r in rows} == {"a": "the operation 'sigmoid'",
                                                               "b": "its channels are the model's input"}
    with pytest.raises(ValueError, match="shrink cannot follow the operation 'sigmoid'"):
        shrink(masked, x)


class _InputResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + x


def test_a_residual_on_the_input_keeps_its_channels_and_shrinks_the_rest(dtype):
    torch.manual_seed(0)
    model, x = _InputResidual().to(dtype), torch.randn(3, 4, dtype=dtype)
    masked, rows = prune(model, x, amount=0.5, structure="filters")
    assert [r.sparsity for r in rows] == [0.5, 0.0]
    small, report = shrink(masked, x)
    assert (small.a.out_features, small.b.in_features, small.b.out_features) == (3, 3, 4)
    assert [r.name for r in report] == ["a", "b"]
    torch.testing.assert_close(small(x), masked(x), rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-12)


def _removed(module: nn.Module) -> list[int]:
    return (module.weight_mask.flatten(1) == 0).all(1).nonzero().flatten().tolist()


@pytest.mark.parametrize("name", MODELS)
def test_the_mask_zeroes_exactly_each_groups_channels(name):
    model, x = _model(name)
    masked, rows = prune(model, x, amount=0.25, structure="filters")
    for group in channel_groups(trace(model, x)):
        if not group.prunable:
            for layer in group.producers:
                assert not masked.get_submodule(layer).weight_mask.eq(0).any()
            continue
        gone = _removed(masked.get_submodule(group.producers[0]))
        assert len(gone) == round(0.25 * group.channels)
        for layer in group.filters:
            m = masked.get_submodule(layer)
            assert _removed(m) == gone and m.weight_mask.flatten(1).amin(1).bool().sum() == group.channels - len(gone)
            assert m.bias is None or not m.bias[gone].any()
        for bn in group.norms:
            m = masked.get_submodule(bn)
            keep = torch.ones(group.channels, dtype=torch.bool)
            keep[gone] = False
            assert not m.weight[gone].any() and not m.bias[gone].any() and m.weight[keep].all() and m.bias[keep].all()
        for consumer in group.consumers:  # their input channels stay: only shrink removes them
            assert masked.get_submodule(consumer).weight_mask.transpose(0, 1).flatten(1).amax(1).all()
    # the score: the sum of the producers' per-filter L1 norms, the lowest removed (a hand transcription)
    stream = channel_groups(trace(model, x))[1]
    score = sum(model.get_submodule(p).weight.detach().abs().flatten(1).sum(1) for p in stream.producers)
    assert sorted(_removed(masked.get_submodule(stream.producers[0]))) == sorted(
        torch.argsort(score)[: round(0.25 * stream.channels)].tolist())


@pytest.mark.parametrize("name", MODELS)
def test_shrunk_equals_masked(name, dtype, device):
    model, x = _model(name, dtype)
    model, x = model.to(device), x.to(device)
    masked, _ = prune(model, x, amount=0.5, structure="filters")
    before = model_state(masked)
    small, report = shrink(masked, x)
    assert_model_unchanged(masked, before)
    assert (small(x) - masked(x)).abs().max() <= (1e-5 if dtype == torch.float32 else 1e-12)
    assert tc.count_parameters(small) < 0.4 * tc.count_parameters(model)
    assert small.stem[0].in_channels == 1 and small.classifier.out_features == 10  # the interface stays
    depthwise = [m for m in small.modules() if tc.surgery.is_depthwise(m)]
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert len(depthwise) == (5 if name == "mobilenetv2_tiny" else 0)
    assert not any("mask" in k or "orig" in k for k in small.state_dict())
    assert report and all(r.params_after < r.params_before for r in report)
    assert {p.device.type for p in small.parameters()} == {torch.device(device).type}


@pytest.mark.parametrize("name", MODELS)
def test_pruning_again_keeps_the_pruned_channels(name):
    model, x = _model(name)
    once, _ = prune(model, x, amount=0.25, structure="filters")
    twice, _ = prune(once, x, amount=0.5, structure="filters")  # a schedule's next step
    for group in channel_groups(trace(model, x)):
        if group.prunable:
            first = set(_removed(once.get_submodule(group.producers[0])))
            second = _removed(twice.get_submodule(group.producers[0]))
            assert first <= set(second) and len(second) == round(0.5 * group.channels)
    small, _ = shrink(twice, x)
    torch.testing.assert_close(small(x), twice(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_equals_torch_pruning_for_the_same_channels(name):
    tp = pytest.importorskip("torch_pruning")
    model, x = _model(name)
    masked, _ = prune(model, x, amount=0.3, structure="filters")
    small, _ = shrink(masked, x)
    oracle = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(oracle, example_inputs=x)
    for group in channel_groups(trace(model, x)):
        if group.prunable:
            conv = oracle.get_submodule(group.producers[0])
            graph.get_pruning_group(conv, tp.prune_conv_out_channels,
                                    idxs=_removed(masked.get_submodule(group.producers[0]))).prune()
    assert tc.count_parameters(small) == tc.count_parameters(oracle) < tc.count_parameters(model)
    # a removed channel and a zeroed one are the same function: Torch-Pruning's model computes the masked one
    torch.testing.assert_close(oracle(x), masked(x), rtol=0, atol=1e-5)


@settings(max_examples=12, deadline=None)
@given(amount=st.floats(0, 1), name=st.sampled_from(sorted(MODELS)))
def test_any_amount_shrinks_to_the_masked_function(amount, name):
    kwargs = {"widths": (4, 6, 8)} if name == "resnet8" else {"expand": 2}
    model, x = _model(name, torch.float64, **kwargs)
    masked, _ = prune(model, x, amount=amount, structure="filters")
    small, _ = shrink(masked, x)
    torch.testing.assert_close(small(x), masked(x), rtol=0, atol=1e-12)
    big, shrunk = channel_groups(trace(model, x)), channel_groups(trace(small, x))
    assert [g.channels for g in shrunk] == [max(1, g.channels - round(amount * g.channels)) if g.prunable
                                            else g.channels for g in big]


@pytest.mark.parametrize("name", MODELS)
def test_fuse_conv_bn_folds_every_pair(name, dtype):
    model, x = _model(name, dtype)
    for net in (model, shrink(prune(model, x, amount=0.5, structure="filters")[0], x)[0]):
        fused, report = fuse_conv_bn(net, x)
        assert not report.skipped and not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        assert len(report) == sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        assert (fused(x) - net(x)).abs().max() <= (1e-5 if dtype == torch.float32 else 1e-12)


class _Outputs(nn.Module):
    """ResNet8's body with a tuple or dict output, and one conv output returned raw (that pair must stay)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.net = kind, _random_bn(tc.models.ResNet8())
        self.side, self.side_bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

    def forward(self, x):
        features = self.net.blocks(self.net.stem(x))
        logits = self.net.classifier(torch.flatten(self.net.pool(features), 1))
        raw = self.side(x)
        if self.kind == "tuple":
            return logits, features, (self.side_bn(raw), raw)
        return {"logits": logits, "features": features, "side": [self.side_bn(raw), raw], "n": 3}


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_fuse_conv_bn_whatever_the_model_returns(kind):
    torch.manual_seed(0)
    model, x = _Outputs(kind).eval(), torch.randn(2, 1, 28, 28)
    fused, report = fuse_conv_bn(model, x)
    assert len(report) == 9 and [(s.layer, s.batchnorm) for s in report.skipped] == [("side", "side_bn")]
    assert "also an output of the model" in report.skipped[0].reason
    for a, b in zip(tc.surgery.tensors_in(fused(x)), tc.surgery.tensors_in(model(x)), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_only_selected_groups_are_pruned_and_the_rest_reported():
    model, x = _model("resnet8")
    masked, rows = prune(model, x, amount=0.5, structure="filters", include=["blocks.0.*", "blocks.1.conv2"])
    by_name = {r.name: r for r in rows}
    assert by_name["blocks.0.conv1"].sparsity == 0.5 and by_name["blocks.0.conv1"].skipped is None
    assert by_name["blocks.0.conv2"].sparsity == 0 and "['stem.0'] not selected" in by_name["blocks.0.conv2"].skipped
    assert "['blocks.1.shortcut.0'] not selected" in by_name["blocks.1.conv2"].skipped
    assert not masked.blocks[0].conv2.weight_mask.eq(0).any() and masked.blocks[0].bn2.weight.all()
    assert not hasattr(masked.stem[0], "weight_mask")  # a layer not selected is not touched
    small, report = shrink(masked, x)
    assert [r.name for r in report] == ["blocks.0.conv1", "blocks.0.bn1", "blocks.0.conv2"]
    torch.testing.assert_close(small(x), masked(x), rtol=0, atol=1e-5)


def test_bad_input_and_the_input_model_untouched():
    model, x = _model("mobilenetv2_tiny")
    before = model_state(model)
    with pytest.raises(TypeError, match="graph must be a tensorcompress.surgery.Graph"):
        channel_groups(model)
    with pytest.raises(ValueError, match=r"needs example_input .* \['blocks.0.depthwise.0', 'blocks.0.add'"):
        prune(model, amount=0.5, structure="filters")
    with pytest.raises(ValueError, match="scope must be 'layer' for structure='filters' on a model with coupled"):
        prune(model, x, amount=0.5, structure="filters", scope="global")
    with pytest.raises(ValueError, match="amount"):
        prune(model, x, amount=1.5, structure="filters")
    with pytest.raises(ValueError, match="amount"):
        prune(model, x, amount=17, structure="filters")  # more than the 16 channels of the stem's group
    with pytest.raises(TypeError, match="amount must be an int"):
        prune(model, x, amount="half", structure="filters")
    masked, _ = prune(model, x, amount=0.5, structure="filters")
    shrink(masked, x)
    fuse_conv_bn(model, x)
    assert_model_unchanged(model, before)
