"""Model surgery: selection by patterns, ties kept, flags and mode carried, the input model untouched."""

import io

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from tensorcompress import surgery


def _net():
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3)))


def test_select_patterns_and_order():
    net = _net()
    names = [s.name for s in surgery.select(net, nn.Linear)]
    assert names == ["0", "2.0", "2.1"]
    assert [s.name for s in surgery.select(net, nn.Linear, include="2.*")] == ["2.0", "2.1"]
    assert [s.name for s in surgery.select(net, nn.Linear, exclude=["0", "2.1"])] == ["2.0"]


def test_select_unmatched_include_is_an_error():
    with pytest.raises(ValueError, match=r"include entries \['conv9'\] match no Linear module"):
        surgery.select(_net(), nn.Linear, include=["0", "conv9"])
    big = nn.Sequential(*[nn.Linear(2, 2) for _ in range(30)])
    with pytest.raises(ValueError, match=r"candidates are \['0', .*, '19'\]\[:20\] of 30$"):
        surgery.select(big, nn.Linear, include="x")
    with pytest.raises(TypeError, match="include must be a module name, an fnmatch pattern, a Selected"):
        surgery.select(_net(), nn.Linear, include=3)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        surgery.select("net", nn.Linear)


def test_select_exact_type_skips_subclasses():
    class MyLinear(nn.Linear):
        pass

    net = nn.Sequential(nn.Linear(3, 3), MyLinear(3, 3))
    assert [s.name for s in surgery.select(net, nn.Linear)] == ["0"]
    assert [s.name for s in surgery.select(net, nn.Linear, exact_type=False)] == ["0", "1"]


def test_shared_module_selected_once_and_replaced_everywhere():
    shared = nn.Linear(5, 5)
    net = nn.Sequential(shared, nn.ReLU(), shared)
    chosen = surgery.select(net, nn.Linear)
    assert len(chosen) == 1 and chosen[0].names == ("0", "2")
    new, report = surgery.transform(net, nn.Linear, lambda s: (nn.Linear(5, 5, bias=False), {"why": "test"}))
    assert new[0] is new[2] and new[0] is not shared
    assert report[0].aliases == ("2",) and report[0].params_before == 30 and report[0].params_after == 25
    assert report[0].detail == {"why": "test"}
    assert net[0] is shared and net[2] is shared  # input untouched


def test_tied_weight_refused_unless_allowed():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    net[1].weight = net[0].weight
    assert surgery.tied_parameters(net, net[0]) == ["1.weight"]
    with pytest.raises(ValueError, match="are tied to"):
        surgery.transform(net, nn.Linear, lambda s: (nn.Identity(), {}), include="0")
    new, _ = surgery.transform(net, nn.Linear, lambda s: (nn.Identity(), {}), include="0", allow_tied=True)
    assert isinstance(new[0], nn.Identity)


def test_replace_carries_mode_and_requires_grad():
    net = _net().eval()
    net[0].weight.requires_grad_(False)

    def build(sel):
        new = nn.Linear(sel.module.in_features, sel.module.out_features)
        new.train()
        return new, {}

    new, _ = surgery.transform(net, nn.Linear, build, include="0")
    assert not new[0].training
    assert not new[0].weight.requires_grad and new[0].bias.requires_grad
    assert net[0] is not new[0] and torch.equal(net[2][0].weight, new[2][0].weight)


def test_layer_change_compression_is_the_ratio_of_saved_bytes():
    row = surgery.LayerChange("a", "Linear", "Identity", 10, 0, 100, 0)
    assert row.compression == float("inf") and row.param_ratio == float("inf")
    assert surgery.LayerChange("a", "Linear", "X", 10, 5, 300, 200).compression == 1.5
    # a masked layer stores its weight twice (weight_orig and the mask): honestly less than 1
    layer = nn.Linear(40, 30)
    before = surgery.footprint(layer)
    torch.nn.utils.prune.l1_unstructured(layer, "weight", amount=0.9)
    kept = int((layer.weight != 0).sum()) + 30
    row = surgery.LayerChange.between("fc", before, surgery.footprint(layer, params=kept))
    assert row.param_ratio > 5 and row.compression < 0.6
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    assert row.bytes_after == buf.getbuffer().nbytes


def test_footprint_names_the_class_a_user_sees():
    layer = nn.Linear(3, 2)
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", nn.Identity())
    assert type(layer).__name__ == "ParametrizedLinear" and surgery.footprint(layer).type == "Linear"


def test_replace_maps_flags_to_counterparts():
    # a factorised layer has new parameter names: its factors stand for the old weight, its bias for the old bias
    old = nn.Linear(4, 3)
    old.weight.requires_grad_(False)
    new = nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 3))
    holder = nn.Sequential(old)
    surgery.replace(holder, "0", new, old=old)
    flags = {n: p.requires_grad for n, p in holder[0].named_parameters()}
    assert flags == {"0.weight": False, "1.weight": False, "1.bias": True}
    with pytest.raises(ValueError, match="at least one module name"):
        surgery.replace(holder, [], new)


def test_transform_checks_ties_before_building_and_row_type():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    net[2].weight = net[1].weight
    built = []

    def build(sel):
        built.append(sel.name)
        return nn.Identity(), {}

    with pytest.raises(ValueError, match=r"\['1.weight'\] of module '1' are tied to"):
        surgery.transform(net, nn.Linear, build)
    assert built == []  # refused before any work

    class Row(surgery.LayerChange):
        pass

    _, report = surgery.transform(net, nn.Linear, build, include="0", row_type=Row)
    assert type(report[0]) is Row
    with pytest.raises(TypeError, match="row_type must be LayerChange or a subclass"):
        surgery.transform(net, nn.Linear, build, include="0", row_type=dict)
    with pytest.raises(TypeError, match="build must return"):
        surgery.transform(net, nn.Linear, lambda s: ("x", {}), include="0")


def test_layer_change_prints_one_line():
    row = surgery.LayerChange("conv2", "Conv2d", "CPConv2d", 25050, 2530, 102053, 12761, {"rank": 31})
    assert str(row) == "conv2: Conv2d -> CPConv2d, 25050 -> 2530 parameters, 102,053 -> 12,761 bytes (8.00x), rank 31"
    row = surgery.LayerChange("a", "Linear", "QLinear", 10, 10, 1000, 2000, {"bits": 4, "scheme": "int"},
                              aliases=("b",))
    assert str(row) == "a = b: Linear -> QLinear, 10 -> 10 parameters, 1,000 -> 2,000 bytes (0.50x), bits 4, scheme int"


@given(plan=st.lists(st.tuples(st.sampled_from(["linear", "relu", "shared", "block"]), st.integers(0, 3)),
                     min_size=1, max_size=8))
def test_transform_keeps_the_sharing_pattern(plan):
    # any mix of plain, shared and nested layers: every name of a Linear ends at a replacement, modules shared
    # before are shared after (and only those), each shared module is reported once, the input is untouched
    pool = [nn.Linear(3, 3) for _ in range(4)]
    layers = []
    for kind, k in plan:
        if kind == "linear":
            layers.append(nn.Linear(3, 3))
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "shared":
            layers.append(pool[k])
        else:
            layers.append(nn.Sequential(pool[k], nn.ReLU(), nn.Linear(3, 3)))
    net = nn.Sequential(*layers)
    before = {n: m for n, m in net.named_modules(remove_duplicate=False) if type(m) is nn.Linear}
    if not before:
        with pytest.raises(ValueError, match="nothing to act on, the model has no Linear module"):
            surgery.transform(net, nn.Linear, lambda s: (nn.Linear(3, 3, bias=False), {}))
        return
    new, report = surgery.transform(net, nn.Linear, lambda s: (nn.Linear(3, 3, bias=False), {}))
    after = {n: new.get_submodule(n) for n in before}
    assert all(type(m) is nn.Linear and m.bias is None for m in after.values())
    for a in before:
        for b in before:
            assert (before[a] is before[b]) == (after[a] is after[b])
    assert sorted(n for r in report for n in (r.name, *r.aliases)) == sorted(before)
    assert len(report) == len({id(m) for m in before.values()})
    assert all(m.bias is not None for m in before.values())
    x = torch.randn(2, 3)
    assert new(x).shape == net(x).shape


def test_exact_names_stay_names():
    # a ModuleDict key with fnmatch metacharacters names its module; as a pattern "fc[0]" would match "fc0" only
    net = nn.ModuleDict({"fc[0]": nn.Linear(2, 2), "fc0": nn.Linear(2, 2), "fc[1]": nn.Linear(2, 2)})
    assert [s.name for s in surgery.select(net, nn.Linear, include="fc[0]")] == ["fc[0]", "fc0"]
    assert [s.name for s in surgery.select(net, nn.Linear, include="fc[1]")] == ["fc[1]"]
    assert [s.name for s in surgery.select(net, nn.Linear, exclude=["fc[1]"])] == ["fc[0]", "fc0"]
    # what select resolved can be handed back, as names or as the Selected objects themselves
    chosen = surgery.select(net, nn.Linear, include="fc[1]")
    assert surgery.select(net, nn.Linear, include=chosen) == chosen
    assert surgery.select(net, nn.Linear, include=[s.name for s in chosen]) == chosen
    new, rows = surgery.transform(net, nn.Linear, lambda s: (nn.Identity(), {}), include=chosen)
    assert [r.name for r in rows] == ["fc[1]"] and isinstance(new["fc[1]"], nn.Identity)


@pytest.mark.parametrize("kwargs, why", [
    ({"exclude": "*"}, r"include=None, exclude='\*' leave none of its Linear modules \['0', '2.0', '2.1'\]$"),
    ({"include": "0", "exclude": "0"}, r"include='0', exclude='0' leave none"),
])
def test_an_empty_selection_is_one_error(kwargs, why):
    with pytest.raises(ValueError, match="^factorize: nothing to act on, " + why):
        surgery.transform(_net(), nn.Linear, lambda s: (s.module, {}), action="factorize", **kwargs)
    with pytest.raises(ValueError, match="^prune: nothing to act on, the model has no Conv2d module$"):
        surgery.select(_net(), nn.Conv2d, action="prune")
    assert surgery.select(_net(), nn.Conv2d) == []  # without an action an empty selection is an answer


def test_capture_inputs_are_what_each_layer_receives():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.BatchNorm1d(3))
    net.train()
    net[3].eval()  # a frozen BatchNorm inside a training model: both modes come back
    batches = [torch.randn(6, 5), torch.randn(2, 5), torch.randn(3, 5)]
    got = surgery.capture_inputs(net, [(x, torch.zeros(len(x))) for x in batches], ["0", "2"], n_batches=2)
    x = torch.cat(batches[:2])
    with torch.no_grad():
        assert torch.equal(got["0"], x) and torch.allclose(got["2"], torch.relu(net[0](x)), atol=0, rtol=0)
    # the layer-wise Hessian of OBS/GPTQ from the captured inputs: H = 2/N X^T X
    hessian = 2 / len(got["2"]) * got["2"].T @ got["2"]
    assert torch.allclose(hessian, 2 * torch.relu(net[0](x)).T @ torch.relu(net[0](x)) / 8, atol=1e-6)
    assert net.training and net[0].training and not net[3].training
    assert not any(m._forward_pre_hooks for m in net.modules())
    with pytest.raises(ValueError, match=r"names \['9'\] are not submodules"):
        surgery.capture_inputs(net, batches[0], "9")
    skipping = _Skip(nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 5)))
    with pytest.raises(ValueError, match=r"layers \['inner.1'\] were never called"):
        surgery.capture_inputs(skipping, batches[0], ["inner.0", "inner.1"])
    with pytest.raises(ValueError, match="no batch"):
        surgery.capture_inputs(net, [], "0")


class _Skip(nn.Module):
    """Calls only the first of its two layers."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner[0](x)
