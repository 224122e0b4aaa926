"""The one contract of every whole-model transform, checked over a registry of them.

``f(model, data=None, *, include=None, exclude=None, **options) -> (new_model, report)``:

* the only argument after ``model`` that may be given by position is the data the transform reads, named for what
  it is (``calibration``, ``train`` or ``example_input``); everything else is keyword-only;
* the result is a new model and a report whose rows carry real bytes (``bytes_before``/``bytes_after``);
* the input is never changed: weights and buffers bit for bit, ties, ``requires_grad`` flags, every submodule's
  train/eval mode, hooks;
* an ``include`` that matches nothing and an ``exclude`` that removes everything are ``ValueError``\\ s in one
  wording.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from helpers import assert_model_unchanged, model_state, tied_mlp
from torch import nn

import tensorcompress as tc

DATA_NAMES = {"calibration", "train", "example_input"}


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    model = tc.models.SmallCNN(input_size=8)
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so folding changes numbers
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _x() -> torch.Tensor:
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _train_set() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def _pruned() -> nn.Module:
    model, _ = tc.pruning.prune(_cnn().eval(), _x(), amount=0.5, structure="filters", include="features.1.*")
    return model


def _resnet() -> nn.Module:
    """A residual network (coupled channels): prune and shrink act by channel group."""
    torch.manual_seed(0)
    return tc.models.ResNet8(widths=(4, 6, 8)).eval()


def _x28() -> torch.Tensor:
    return torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _pruned_resnet() -> nn.Module:
    return tc.pruning.prune(_resnet(), _x28(), amount=0.5, structure="filters")[0]


def _ln_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))


def _tokens() -> torch.Tensor:
    return torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(3))


def _tiny_lm() -> nn.Module:
    torch.manual_seed(0)
    return tc.models.TinyGPT(11, d_model=64, n_layers=1, n_heads=2, context=8)


def _token_windows() -> torch.utils.data.TensorDataset:
    w = torch.randint(0, 11, (4, 9), generator=torch.Generator().manual_seed(4))
    return torch.utils.data.TensorDataset(w[:, :-1], w[:, 1:])


def _adapted() -> nn.Module:
    model, _ = tc.layers.add_lora(_ln_mlp(), rank=2)
    with torch.no_grad():  # adapters as after fine-tuning, so that merging changes the weights
        for m in model.modules():
            if isinstance(m, tc.layers.LoRALinear):
                m.lora_b.weight.normal_(generator=torch.Generator().manual_seed(5))
    return model


def _calibrated() -> nn.Module:
    q, _ = tc.quantization.quantize_model(tc.models.LeNet300100().eval(), weight_bits=8, act_bits=8)
    return tc.quantization.calibrate(q, torch.rand(16, 784))


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return tc.models.ResNet8(widths=(4, 8, 8))


def _images() -> torch.Tensor:
    return torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(6))


def _calibrated_resnet() -> nn.Module:
    q, _ = tc.quantization.quantize_model(_resnet().eval())
    return tc.quantization.calibrate(q, torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(7)))


@dataclass
class Transform:
    """One registry entry: how to get the function, a model it acts on, the data it reads, its options."""

    name: str
    fn: Callable[[], Callable]
    model: Callable[[], nn.Module]
    data: Callable[[], object] | None = None
    options: dict = field(default_factory=dict)

    def __call__(self, model: nn.Module, **kwargs):
        args = () if self.data is None else (self.data(),)
        return self.fn()(model, *args, **self.options, **kwargs)


REGISTRY = [
    Transform("factorize", lambda: tc.factorize, _cnn, options={"method": "svd", "rank": 2}),
    Transform("factorize_calibrated", lambda: tc.factorize, _ln_mlp, _tokens, {"method": "svd", "rank": 2}),
    Transform("add_lora", lambda: tc.layers.add_lora, _ln_mlp, options={"rank": 2}),
    Transform("merge_lora", lambda: tc.layers.merge_lora, _adapted),
    Transform("prune", lambda: tc.pruning.prune, _cnn, _x, {"amount": 0.5}),
    Transform("prune_filters", lambda: tc.pruning.prune, _cnn, _x, {"amount": 0.5, "structure": "filters"}),
    Transform("shrink", lambda: tc.pruning.shrink, _pruned, _x),
    Transform("prune_coupled", lambda: tc.pruning.prune, _resnet, _x28, {"amount": 0.5, "structure": "filters"}),
    Transform("shrink_coupled", lambda: tc.pruning.shrink, _pruned_resnet, _x28),
    Transform("random_reinit", lambda: tc.pruning.random_reinit, _pruned, options={"seed": 3}),
    Transform("quantize_model", lambda: tc.quantization.quantize_model, _cnn, options={"weight_bits": 4}),
    Transform("share_weights", lambda: tc.quantization.share_weights, _cnn, options={"bits": 2}),
    Transform("to_integer", lambda: tc.quantization.to_integer, _calibrated, lambda: torch.rand(2, 784)),
    Transform("quantize_model_residual", lambda: tc.quantization.quantize_model, _resnet, _images),
    Transform("to_integer_residual", lambda: tc.quantization.to_integer, _calibrated_resnet, _images),
    Transform("to_half", lambda: tc.quantization.to_half, _cnn, options={"dtype": torch.bfloat16}),
    Transform("fuse_conv_bn", lambda: tc.surgery.fuse_conv_bn, lambda: _cnn().eval(), _x),
    Transform("quantize_weights", lambda: tc.quantization.quantize_weights, _cnn, options={"bits": 4}),
    Transform("quantize_weights_nf4", lambda: tc.quantization.quantize_weights, _ln_mlp,
              options={"bits": 4, "method": "nf4", "group_size": 8}),
    Transform("gptq", lambda: tc.quantization.gptq, _cnn, _x, {"bits": 3, "act_order": True}),
    Transform("awq", lambda: tc.quantization.awq, _ln_mlp, _tokens, {"bits": 3, "group_size": 4}),
    Transform("smoothquant", lambda: tc.quantization.smoothquant, _ln_mlp, _tokens),
    Transform("wanda", lambda: tc.pruning.wanda, _ln_mlp, _tokens, {"amount": 0.5}),
    Transform("wanda_2_4", lambda: tc.pruning.wanda, _ln_mlp, _tokens, {"amount": None, "structure": (2, 4)}),
    Transform("sparsegpt", lambda: tc.pruning.sparsegpt, _ln_mlp, _tokens, {"amount": 0.5, "block_size": 4}),
    Transform("sparsegpt_2_4", lambda: tc.pruning.sparsegpt, _ln_mlp, _tokens,
              {"amount": None, "structure": (2, 4)}),
    Transform("deep_compression", lambda: tc.pipelines.deep_compression, _cnn, _train_set,
              {"val": _train_set(), "amount": 0.5, "bits": 2, "prune_epochs": 1, "share_epochs": 1}),
    Transform("auto_compress", lambda: tc.pipelines.auto_compress, _cnn, _train_set,
              {"val": _train_set(), "budget": 150_000, "methods": ("prune", "quantize"),
               "grid": {"prune": (0.5,), "quantize": (4,)}, "epochs": 1}),
    Transform("auto_compress_weight_only", lambda: tc.pipelines.auto_compress, _tiny_lm, _token_windows,
              {"val": _token_windows(), "budget": 100_000, "methods": ("weight_only",), "grid": {"weight_only": (4,)},
               "group_size": 16, "epochs": 0}),
]
IDS = [t.name for t in REGISTRY]


def _rows(report) -> list:
    return list(report) if isinstance(report, (list, tuple)) else list(report.layers)


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_signature(entry):
    params = list(inspect.signature(entry.fn()).parameters.values())
    assert params[0].name == "model" and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    positional = [p for p in params[1:] if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert len(positional) <= 1, f"only the data may follow model by position, got {[p.name for p in positional]}"
    assert all(p.name in DATA_NAMES for p in positional), [p.name for p in positional]
    keyword = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    assert {"include", "exclude"} <= keyword
    assert not {"inplace", "ranks", "max_iter", "sparsity"} & {p.name for p in params}


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_result_is_a_new_model_and_rows_with_real_bytes(entry):
    model = entry.model()
    model.train()
    for m in model.modules():  # mixed modes: a frozen BatchNorm inside a training model
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
            break
    if entry.name in ("fuse_conv_bn", "to_integer", "to_integer_residual"):
        model.eval()
    model.register_forward_hook(lambda *a: None)
    first = next(model.parameters())
    first.requires_grad_(False)
    before = model_state(model)
    new, report = entry(model)
    assert_model_unchanged(model, before)
    assert isinstance(new, nn.Module) and new is not model
    rows = _rows(report)
    assert rows and all(isinstance(r, tc.surgery.LayerChange) for r in rows)
    for r in rows:
        assert r.bytes_before > 0 and r.bytes_after >= 0 and r.compression == (
            r.bytes_before / r.bytes_after if r.bytes_after else float("inf"))
        assert not r.type_after.startswith("Parametrized")


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_empty_selection_is_one_error(entry):
    with pytest.raises(ValueError, match=r"include entries \['no_such_layer\*'\] match no"):
        entry(entry.model(), include="no_such_layer*")
    with pytest.raises(ValueError, match=r"nothing to act on"):
        entry(entry.model(), exclude="*")


TIE_ENTRIES = [Transform(t.name, t.fn, tied_mlp, None if t.data is None else (lambda: torch.randn(4, 8)),
                         {k: v for k, v in t.options.items() if k != "structure"})
               for t in REGISTRY if t.name in ("factorize", "add_lora", "prune", "quantize_model", "share_weights",
                                               "to_half", "quantize_weights", "gptq", "awq", "wanda", "sparsegpt")]


@pytest.mark.parametrize("entry", TIE_ENTRIES, ids=[t.name for t in TIE_ENTRIES])
def test_a_tie_is_kept_or_refused_naming_both(entry):
    model = tied_mlp()
    before = model_state(model)
    try:
        new, _ = entry(model)
    except ValueError as e:
        assert "0.weight" in str(e) and "2.weight" in str(e), str(e)
    else:
        kept = {id(p) for p in new[0].parameters()} & {id(p) for p in new[2].parameters()}
        assert kept, "the transform untied the weights without a word"
    assert_model_unchanged(model, before)


def test_technique_details_are_typed():
    _, rows = tc.pruning.prune(_cnn().eval(), _x(), amount=0.5, structure="filters", include="features.0.0")
    (row,) = rows
    assert isinstance(row, tc.pruning.PrunedLayer) and row.sparsity == 0.5 and row.batchnorm == "features.0.1"
    assert row.nonzero_before == 288 and row.compression < 1  # the mask is stored beside the weight
    _, rows = tc.quantization.share_weights(_cnn(), bits=3, include="classifier")
    (row,) = rows
    assert isinstance(row, tc.quantization.SharedLayer) and row.bits == 3 and row.kept is None
    assert 0 < row.rel_error < 1
    _, rows = tc.factorize(_cnn(), method="svd", rank=2)
    assert isinstance(rows[0], tc.FactorizedLayer) and rows[0].rank == 2
    _, report = tc.surgery.fuse_conv_bn(_cnn().eval(), _x())
    assert all(isinstance(r, tc.surgery.FusedLayer) for r in report) and report[0].batchnorm == "features.0.1"
    row = tc.pruning.PrunedLayer("a", "Linear", "Linear", 1, 1, 1, 1, {"sparsity": 0.5})
    assert row.batchnorm is None  # optional: absent from a layer pruned without a BatchNorm
    with pytest.raises(AttributeError, match="no 'batchnorm' in its detail"):
        _ = tc.surgery.FusedLayer("a", "Conv2d", "Conv2d", 1, 1, 1, 1, {}).batchnorm



@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_every_transform_reports_typed_rows(entry):
    model = entry.model()
    if entry.name in ("fuse_conv_bn", "to_integer", "to_integer_residual"):
        model.eval()
    _, report = entry(model)
    row = _rows(report)[0]
    typed = {name for name, value in vars(type(row)).items() if isinstance(value, (tc.surgery.Detail, property))}
    if entry.name == "deep_compression":  # Han et al.'s per-stage byte table, not one technique's options
        assert type(row) is tc.surgery.LayerChange and "P+Q+H" in row.detail
        return
    assert type(row) is not tc.surgery.LayerChange and typed, f"{entry.name} reports untyped rows"
    for name in typed:  # every typed detail reads back without error
        getattr(row, name)


def test_typed_details_of_shrink_integer_and_half():
    _, rows = tc.pruning.shrink(_pruned(), _x())
    assert isinstance(rows[0], tc.pruning.ShrunkLayer) and rows[0].outputs[0] > rows[0].outputs[1]
    _, rows = tc.quantization.to_integer(_calibrated(), torch.rand(2, 784))
    assert isinstance(rows[0], tc.quantization.IntegerizedLayer) and rows[-1].output == "logits"
    _, rows = tc.quantization.to_half(_cnn(), dtype=torch.float16)
    assert all(isinstance(r, tc.quantization.HalfLayer) for r in rows)
    assert {r.dtype for r in rows} == {"torch.float16", "torch.float32"}
    _, rows = tc.quantization.quantize_model(_cnn(), weight_bits=4, act_bits=None)
    assert isinstance(rows[0], tc.quantization.FakeQuantizedLayer) and rows[0].weight_bits == 4
    assert rows[0].act_bits is None and rows[0].per_channel is True
