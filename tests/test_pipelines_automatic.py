"""Automatic compression: the exact multiple-choice knapsack against brute force, and auto_compress's budget in the
bytes of the written file, its reproduction by hand, its refusals."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os

import pytest
import torch
from helpers import assert_model_unchanged, model_state
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

import tensorcompress as tc
from tensorcompress.pipelines import allocate

# ---------------------------------------------------------------- allocate


def _fold(values) -> float:
    """Left-to-right sum from 0.0: the order in which the dynamic program adds the layers' losses."""
    return functools.reduce(lambda a, b: a + b, values, 0.0)


def brute_force(options, budget):
    """(loss, cost) of the best choice by enumeration: least loss, then least cost; None when nothing fits."""
    best = None
    for choice in itertools.product(*(range(len(o)) for o in options)):
        cost = sum(options[i][j][0] for i, j in enumerate(choice))
        if cost <= budget:
            key = (_fold(options[i][j][1] for i, j in enumerate(choice)), cost)
            best = key if best is None or key < best else best
    return best


def _value(options, choice):
    return (_fold(options[i][j][1] for i, j in enumerate(choice)), sum(options[i][j][0] for i, j in enumerate(choice)))


pairs = st.tuples(st.integers(0, 12), st.floats(-5, 5, allow_nan=False, width=32) | st.integers(0, 3).map(float))
instances = st.tuples(st.lists(st.lists(pairs, min_size=1, max_size=4), min_size=1, max_size=4),
                      st.integers(0, 40), st.sampled_from([1, 7, 1000]))


@given(instances)
def test_allocate_equals_brute_force(instance):
    options, budget, scale = instance  # scale: costs with a common divisor, which the program divides out
    options = [[(c * scale, loss) for c, loss in layer] for layer in options]
    budget *= scale
    want = brute_force(options, budget)
    if want is None:
        with pytest.raises(ValueError, match="no choice fits"):
            allocate(options, budget)
        return
    choice = allocate(options, budget)
    assert len(choice) == len(options) and all(0 <= j < len(o) for j, o in zip(choice, options, strict=True))
    assert _value(options, choice) == want  # the least loss exactly, and the cheapest among equal losses


def test_allocate_reaches_the_optimum_on_ties():
    # optima of loss 1: (0, 1) and (1, 0) cost 8, (0, 2) and (2, 0) cost 9; one of the cheaper two is returned
    options = [[(5, 0.0), (3, 1.0), (4, 1.0)], [(5, 0.0), (3, 1.0), (4, 1.0)]]
    for budget in (8, 9):  # (10 fits keeping both)
        choice = allocate(options, budget)
        assert _value(options, choice) == (1.0, 8) == brute_force(options, budget)
        assert choice in ([0, 1], [1, 0])
    assert allocate([[(1, 0.0), (1, 0.0)]], 1) == [0]  # identical options: the first
    assert allocate([[(3, 1.0), (2, 1.0)]], 5) == [1]  # equal losses: the cheaper


def test_greedy_by_loss_per_cost_is_not_exact():
    # from "keep everything", greedy takes the step with the least loss per unit saved: B's (0.25 per byte), then it
    # still needs A's; the optimum takes A's step alone
    options = [[(10, 0.0), (0, 3.0)], [(10, 0.0), (8, 0.5)]]
    assert allocate(options, 12) == [1, 0] and _value(options, [1, 0]) == (3.0, 10)
    assert _value(options, [1, 1])[0] == 3.5  # greedy's answer


def test_allocate_refuses_bad_input():
    with pytest.raises(ValueError, match=r"no choice fits: the cheapest combination costs 7, more than budget=6"):
        allocate([[(3, 0.0), (5, 1.0)], [(4, 0.0)]], 6)
    with pytest.raises(ValueError, match="options is empty"):
        allocate([], 5)
    with pytest.raises(ValueError, match=r"options\[1\] is empty"):
        allocate([[(1, 0.0)], []], 5)
    with pytest.raises(TypeError, match=r"options\[0\]\[1\] cost must be an int .* float 1.5"):
        allocate([[(1, 0.0), (1.5, 1.0)]], 5)
    with pytest.raises(TypeError, match=r"cost must be an int, got bool"):
        allocate([[(True, 0.0)]], 5)
    with pytest.raises(ValueError, match=r"options\[0\]\[0\] cost must be >= 0, got -1"):
        allocate([[(-1, 0.0)]], 5)
    with pytest.raises(ValueError, match=r"budget must be >= 0, got -2"):
        allocate([[(0, 0.0)]], -2)
    with pytest.raises(TypeError, match=r"budget must be an int"):
        allocate([[(0, 0.0)]], 2.0)
    with pytest.raises(ValueError, match=r"loss must be finite"):
        allocate([[(0, math.nan)]], 2)
    with pytest.raises(TypeError, match=r"must be a \(cost, loss\) pair"):
        allocate([[(0, 1.0, 2)]], 2)
    with pytest.raises(TypeError, match="options must be a sequence"):
        allocate("abc", 2)
    assert allocate([[(torch.tensor(2).item(), 0.0)]], 2) == [0]


# ---------------------------------------------------------------- auto_compress

GRID = {"factorize": (0.6, 0.9), "prune": (0.5, 0.8), "quantize": (2, 4), "share": (2, 3)}
OPTIONS = {"grid": GRID, "epochs": 1, "lr": 1e-3, "batch_size": 32}


def _problem(dtype=torch.float32):
    """A trained 3-layer MLP on a learnable synthetic task, with train and validation sets."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 5, generator=g)
    x = torch.randn(600, 16, generator=g)
    y = (x @ w).argmax(1)
    train = TensorDataset(x[:400], y[:400])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 5))
    tc.fit(model, train, epochs=15, lr=3e-3, progress=False)
    return model.to(dtype).eval(), TensorDataset(x[:400].to(dtype), y[:400]), TensorDataset(x[400:].to(dtype),
                                                                                             y[400:])


@pytest.fixture(scope="module")
def problem():
    return _problem()


@pytest.fixture(scope="module")
def scan(problem):
    model, train, val = problem
    full = len(tc.export.encode_compressed(model)[0])
    return tc.pipelines.auto_compress(model, train, val=val, budget=full // 3, **OPTIONS)


def test_file_meets_the_budget_and_the_prediction(problem, scan, tmp_path):
    model, _, val = problem
    net, report = scan
    path = os.path.join(tmp_path, "auto.tcdc")
    written = tc.export.save_compressed(net, path)
    assert written == os.path.getsize(path) == report.file_bytes == report.final_cost <= report.budget
    # a Sequential has no architecture record: the file is exactly the constant part plus the chosen layers' bytes
    assert report.predicted_cost == report.file_bytes
    assert report.original_cost == len(tc.export.encode_compressed(model)[0])
    assert {o.method for o in report.choice} - {"keep"}, "nothing compressed under a third of the bytes"
    assert len({o.method for o in report.candidates}) == 5 and len(report.candidates) == 3 * 9
    restored = tc.export.load_compressed(path, model=_skeleton(model, report.choice))
    x = val.tensors[0][:32]
    with torch.no_grad():
        assert torch.equal(restored(x), net(x))  # the file is the model: every technique mixed in one file
    assert report.original_accuracy > 0.85 and report.final_accuracy > report.original_accuracy - 0.1
    assert 0 <= report.measured_loss and 0 <= report.predicted_loss


def _skeleton(model, choice):
    """The architecture the file loads into: the same transforms on a fresh copy (quantized layers need it)."""
    net = model
    for o in choice:
        if o.method == "quantize":
            net, _ = tc.quantization.quantize_model(net, weight_bits=o.setting, act_bits=None, include=[o.layer])
        elif o.method == "factorize":
            net, _ = tc.factorize(net, method="svd", energy=o.setting, include=[o.layer])
    return tc.surgery.copy_model(net)


def _by_hand(model, choice, train):
    """The chosen configuration through the library's transforms called directly, fine-tuned as auto_compress does."""
    net = model
    for o in choice:  # one technique per layer
        if o.method == "factorize":
            net, _ = tc.factorize(net, method="svd", energy=o.setting, include=[o.layer])
        elif o.method == "prune":
            net, _ = tc.pruning.prune(net, amount=o.setting, include=[o.layer])
        elif o.method == "quantize":
            net, _ = tc.quantization.quantize_model(net, weight_bits=o.setting, act_bits=None, include=[o.layer])
        elif o.method == "share":
            net, _ = tc.quantization.share_weights(net, bits=o.setting, include=[o.layer], seed=0)
    net = tc.surgery.copy_model(net)
    for m in net.modules():  # quantized weights frozen, so that their coded bytes stay as allocated
        if isinstance(m, tc.quantization.QuantizedLayer):
            m.layer.parametrizations.weight.original.requires_grad_(False)
    tc.distillation.distill(net, model, train, T=4.0, alpha=0.9, epochs=1, lr=1e-3, batch_size=32, seed=0,
                            progress=False)
    return net.eval()


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_chosen_configuration_applied_by_hand_reproduces_the_model(problem, scan):
    model, train, _ = problem
    net, report = scan
    assert _same(net, _by_hand(model, report.choice, train))
    assert [r.method for r in report] == [o.method for o in report.choice]
    assert all(isinstance(r, tc.pipelines.AutoLayer) for r in report)


@pytest.mark.parametrize("wanted", [{"0": "prune", "2": "factorize", "4": "share"},
                                    {"0": "quantize", "2": "prune", "4": "factorize"}], ids=["p-f-s", "q-p-f"])
def test_every_technique_mixed_in_one_file(problem, scan, wanted, tmp_path):
    model, train, val = problem
    _, report = scan
    # a scan whose losses make the wanted technique (its first setting) the only free option of each layer
    rigged, seen = [], set()
    for o in report.candidates:
        free = o.method == wanted[o.layer] and (o.layer, o.method) not in seen
        seen |= {(o.layer, o.method)} if free else set()
        rigged.append(dataclasses.replace(o, loss=0.0 if free else 1.0))
    net, rep = tc.pipelines.auto_compress(model, train, val=val, budget=report.original_cost, candidates=rigged,
                                          **OPTIONS)
    assert {o.layer: o.method for o in rep.choice} == wanted
    path = os.path.join(tmp_path, "mixed.tcdc")
    assert tc.export.save_compressed(net, path) == rep.file_bytes == rep.predicted_cost <= rep.budget
    restored = tc.export.load_compressed(path, model=_skeleton(model, rep.choice))
    x = val.tensors[0][:32]
    with torch.no_grad():
        assert torch.equal(restored(x), net(x))
    assert _same(net, _by_hand(model, rep.choice, train))


def test_the_sum_of_layer_bytes_is_the_file():
    model, _, _ = _problem()
    names = ["0", "2", "4"]
    net, _ = tc.pruning.prune(model, amount=0.7, include="0")
    net, _ = tc.quantization.quantize_model(net, weight_bits=3, act_bits=None, include="2")
    net, _ = tc.quantization.share_weights(net, bits=2, include="4")
    total, layers = tc.pipelines.file_layer_bytes(net, names)
    biases_etc = total - sum(layers.values())
    _, plain = tc.pipelines.file_layer_bytes(model, names)
    assert total == len(tc.export.encode_compressed(net)[0])
    assert biases_etc == len(tc.export.encode_compressed(model)[0]) - sum(plain.values())  # the constant part
    assert plain["0"] > 16 * 48 * 4 + 48 * 4 and layers["0"] < plain["0"] and layers["4"] < plain["4"]


def test_candidates_reused_give_the_same_result(problem, scan):
    model, train, val = problem
    net, report = scan
    again, report2 = tc.pipelines.auto_compress(model, train, val=val, budget=report.budget, candidates=report,
                                                **OPTIONS)
    assert report2.choice == report.choice and report2.candidates == report.candidates
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values(),
                                                 strict=True))


def test_a_tighter_budget_predicts_more_loss(problem, scan):
    model, train, val = problem
    _, report = scan
    cheapest = report.original_cost + sum(min(o.cost for o in report.candidates if o.layer == n)
                                          for n in ("0", "2", "4"))
    _, tight = tc.pipelines.auto_compress(model, train, val=val, budget=cheapest, candidates=report,
                                          **{**OPTIONS, "epochs": 0})
    assert tight.predicted_cost == cheapest and tight.file_bytes <= cheapest
    assert tight.predicted_loss >= report.predicted_loss
    assert tight.final_loss == tight.measured_loss  # epochs=0: no fine-tuning


def test_flops_budget(problem):
    model, train, val = problem
    x1 = val.tensors[0][:1]
    full = tc.flops(model, x1)
    net, report = tc.pipelines.auto_compress(model, train, val=val, budget=full * 3 // 4, cost="flops",
                                             methods=("factorize", "prune"), grid=GRID, epochs=0)
    assert report.final_cost == tc.flops(net, x1) == report.predicted_cost <= full * 3 // 4  # FLOPs add up exactly
    assert any(o.method == "factorize" for o in report.choice)  # a mask removes no FLOP
    assert all(o.cost == 0 for o in report.candidates if o.method == "prune")


def test_float64_model(tmp_path):
    model, train, val = _problem(torch.float64)
    full = len(tc.export.encode_compressed(model)[0])
    net, report = tc.pipelines.auto_compress(model, train, val=val, budget=full // 2, grid=GRID, epochs=1,
                                             batch_size=32)
    assert all(p.dtype == torch.float64 for p in net.parameters())
    assert tc.export.save_compressed(net, os.path.join(tmp_path, "f64.tcdc")) == report.file_bytes <= full // 2


def test_leaderboard_row(problem, scan):
    model, _, val = problem
    net, report = scan
    board = tc.metrics.Leaderboard(val, measure_latency=False)
    board.add("float32", model, family="baseline")
    entry = report.add_to(board, [net, net])
    assert entry.bytes == report.file_bytes and entry.family == "automatic" and entry.bytes_from == "compressed file"
    assert entry.mean == tc.evaluate(net, val).accuracy
    with pytest.raises(TypeError, match="board must be"):
        report.add_to("board", net)
    assert "*" in report.table() and "loss (kl, nats)" in str(report)


def test_auto_compress_refuses_bad_input(problem, scan):
    model, train, val = problem
    _, report = scan
    before = model_state(model)
    full = report.original_cost
    with pytest.raises(ValueError, match=r"methods \['distill'\] are not techniques the library knows"):
        tc.pipelines.auto_compress(model, train, val=val, budget=full // 2, methods=("prune", "distill"))
    with pytest.raises(ValueError, match=r"budget=.* is above the model's own cost"):
        tc.pipelines.auto_compress(model, train, val=val, budget=full + 1, grid=GRID)
    with pytest.raises(ValueError, match=r"below the cheapest combination of options"):
        tc.pipelines.auto_compress(model, train, val=val, budget=100, candidates=report)
    with pytest.raises(ValueError, match=r"cost must be one of"):
        tc.pipelines.auto_compress(model, train, val=val, budget=full // 2, cost="energy")
    with pytest.raises(ValueError, match=r"sensitivity must be one of"):
        tc.pipelines.auto_compress(model, train, val=val, budget=full // 2, sensitivity="hessian")
    with pytest.raises(ValueError, match=r"auto_compress: nothing to act on, the model has no Linear/Conv2d"):
        tc.pipelines.auto_compress(nn.Sequential(nn.ReLU()), train, val=val, budget=10)
    with pytest.raises(ValueError, match=r"grid\['quantize'\] entry must be bits in \[2, 8\], got 1"):
        tc.pipelines.auto_compress(model, train, val=val, budget=full // 2, grid={"quantize": (1,)})
    with pytest.raises(ValueError, match=r"grid names methods \['svd'\]"):
        tc.pipelines.auto_compress(model, train, val=val, budget=full // 2, grid={"svd": (0.5,)})
    with pytest.raises(ValueError, match=r"candidates are for layers \['0', '2', '4'\], the selection is \['0'\]"):
        tc.pipelines.auto_compress(model, train, val=val, budget=full // 2, candidates=report, include="0")
    with pytest.raises(TypeError, match=r"budget must be an int"):
        tc.pipelines.auto_compress(model, train, val=val, budget=0.5)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        tc.pipelines.auto_compress("model", train, val=val, budget=10)
    assert_model_unchanged(model, before)


def test_latency_budget(problem):
    model, train, val = problem
    # latency is measured (µs, noisy): a budget of 1 µs is below every combination, one of 1,000 s above the model
    with pytest.raises(ValueError, match=r"budget=1 latency is below the cheapest combination of options, [1-9]"):
        tc.pipelines.auto_compress(model, train, val=val, budget=1, cost="latency", methods=("factorize",),
                                   grid={"factorize": (0.5,)}, epochs=0)
    with pytest.raises(ValueError, match=r"above the model's own cost, [0-9,]+ latency"):
        tc.pipelines.auto_compress(model, train, val=val, budget=10**9, cost="latency")


def test_on_every_device(problem, scan, device):
    model, train, val = problem
    _, report = scan
    on = TensorDataset(*(t.to(device) for t in val.tensors))
    net, rep = tc.pipelines.auto_compress(tc.surgery.copy_model(model).to(device), train, val=on,
                                          budget=report.budget, candidates=report, device=device, **OPTIONS)
    assert tc.surgery.device_of(net).type == torch.device(device).type
    assert rep.choice == report.choice and rep.file_bytes <= rep.budget
    assert rep.file_bytes == len(tc.export.encode_compressed(net)[0])


# ---------------------------------------------------------------- weight-only bits of a language model


def _language_model(dtype=torch.float32):
    """A one-block TinyGPT (random weights) and validation windows of tokens: (B, T) inputs, (B, T, V) logits."""
    torch.manual_seed(0)
    model = tc.models.TinyGPT(11, d_model=64, n_layers=1, n_heads=2, context=8).to(dtype).eval()
    w = torch.randint(0, 11, (12, 9), generator=torch.Generator().manual_seed(1))
    return model, TensorDataset(w[:, :-1], w[:, 1:])


LM_OPTIONS = {"methods": ("weight_only",), "grid": {"weight_only": (2, 4, 8)}, "group_size": 16,
              "exclude": ["head"], "epochs": 0}


def _weight_only_by_hand(model, choice, group_size):
    net = model
    for o in choice:
        if o.method == "weight_only":
            net, _ = tc.quantization.quantize_weights(net, bits=o.setting, group_size=group_size, include=[o.layer])
    return tc.surgery.copy_model(net)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weight_only_bits_of_a_language_model(dtype, tmp_path):
    model, val = _language_model(dtype)
    before = model_state(model)
    full = len(tc.export.encode_compressed(model)[0])
    uniform4, _ = tc.quantization.quantize_weights(model, bits=4, group_size=16, exclude=["head"])
    budget = len(tc.export.encode_compressed(uniform4)[0])  # the bytes of uniform 4-bit weights
    net, report = tc.pipelines.auto_compress(model, None, val=val, budget=budget, **LM_OPTIONS)
    assert_model_unchanged(model, before)
    layers = ["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v", "blocks.0.attn.o", "blocks.0.mlp.fc1",
              "blocks.0.mlp.fc2"]
    assert list(dict.fromkeys(o.layer for o in report.candidates)) == layers and len(report.candidates) == 6 * 4
    assert report.original_cost == full and report.group_size == 16
    # the budget holds on the written file; the renamed tensors drop the architecture record, so it is below the sum
    path = os.path.join(tmp_path, "lm.tcdc")
    assert tc.export.save_compressed(net, path) == report.file_bytes <= report.predicted_cost <= budget
    # the chosen configuration applied by hand is the model, and the file loads back into it
    by_hand = _weight_only_by_hand(model, report.choice, 16)
    assert _same(net, by_hand)
    x = val.tensors[0]
    restored = tc.export.load_compressed(path, model=_language_model(dtype)[0])  # a float skeleton
    with torch.no_grad():
        assert torch.equal(restored(x), net(x))
    # every loss is the per-token KL divergence, every accuracy the per-token one (checked independently)
    with torch.no_grad():
        log_p = model(x).double().log_softmax(-1).reshape(-1, 11)
    for o in report.candidates[:5]:
        alone = _weight_only_by_hand(model, [o], 16)
        with torch.no_grad():
            log_q = alone(x).double().log_softmax(-1).reshape(-1, 11)
        want = nn.functional.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
        assert o.loss == pytest.approx(float(want), rel=1e-9, abs=1e-15) and o.loss >= 0
        assert o.accuracy == tc.evaluate(alone, val).accuracy
        assert (o.cost < 0) == (o.method != "keep") and ("group 16" in o.label) == (o.method != "keep")
    assert report.measured_loss > 0 and report.final_loss == report.measured_loss  # epochs=0: no fine-tuning
    assert report.final_accuracy == tc.evaluate(net, val).accuracy


def test_weight_only_skips_convolutions_and_checks_the_group_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    g = torch.Generator().manual_seed(0)
    val = TensorDataset(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g))
    full = len(tc.export.encode_compressed(model)[0])
    _, report = tc.pipelines.auto_compress(model, None, val=val, budget=full // 2, methods=("quantize", "weight_only"),
                                           grid={"quantize": (4,), "weight_only": (4,)}, group_size=48, epochs=0)
    assert [(o.layer, o.method) for o in report.candidates] == [
        ("0", "keep"), ("0", "quantize"), ("3", "keep"), ("3", "quantize"), ("3", "weight_only")]
    with pytest.raises(ValueError, match=r"group_size=10 does not divide the 144 inputs of layer '3'"):
        tc.pipelines.auto_compress(model, None, val=val, budget=full // 2, methods=("weight_only",), group_size=10)
    with pytest.raises(ValueError, match=r"group_size must be"):
        tc.pipelines.auto_compress(model, None, val=val, budget=full // 2, methods=("weight_only",), group_size=0)
    with pytest.raises(ValueError, match=r"grid\['weight_only'\] entry must be bits in \[2, 8\], got 9"):
        tc.pipelines.auto_compress(model, None, val=val, budget=full // 2, methods=("weight_only",),
                                   grid={"weight_only": (9,)})
    assert "weight_only" not in tc.pipelines.DEFAULT_METHODS and "weight_only" in tc.pipelines.METHODS
