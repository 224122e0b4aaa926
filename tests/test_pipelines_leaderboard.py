"""Leaderboard: measured rows equal the metrics they come from, ratios against the baseline, any metric in its
direction, the Pareto front equals a brute-force one, bad rows are refused, the models' modes are kept."""

from __future__ import annotations

import math
from dataclasses import replace

import matplotlib
import pytest
import torch
from helpers import Sleep, mlp
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

import tensorcompress as tc
from tensorcompress.metrics import Entry, Leaderboard, Metric

matplotlib.use("Agg")


def _data(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def test_add_measures_accuracy_bytes_flops_like_the_metrics():
    data = _data()
    board = Leaderboard(data, data.tensors[0][:1], measure_latency=False)
    models = [mlp(6, 8, 2, seed=s) for s in range(3)]
    e = board.add("three seeds", models, family="baseline")
    want = [tc.evaluate(m, data).accuracy for m in models]  # fractions: percent only when printed
    assert e.values == pytest.approx(want, abs=1e-12) and len(set(e.values)) > 1
    assert e.stats.mean == pytest.approx(sum(want) / 3)
    assert e.stats.std == pytest.approx(float(torch.tensor(want, dtype=torch.float64).std()))
    assert e.bytes == tc.model_size_bytes(models[0]) and e.bytes_from == "torch.save"
    assert e.flops == tc.flops(models[0], data.tensors[0][:1]) == 2 * (6 * 8 + 8 * 2)
    assert e.params == tc.count_parameters(models[0]) and e.latency_s is None and e.latency_batch is None
    one = board.add("coded file", mlp(6, 8, 2, seed=7), family="other", nbytes=123, bytes_from="a coded file")
    assert one.stats is None and one.bytes == 123
    rows = board.rows()
    assert rows[1].bytes_ratio == pytest.approx(e.bytes / 123) and rows[0].delta == 0
    assert rows[1].delta == pytest.approx(one.mean - e.mean) and rows[1].flops_ratio == 1.0
    text = str(board)
    assert "three seeds" in text and "123*" in text and "a coded file" in text and "±" in text
    assert f"{100 * one.mean:.1f}" in text.splitlines()[3]


def test_parameters_bytes_flops_and_ratios_against_the_baseline():
    data = TensorDataset(torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(40) % 10)
    torch.manual_seed(0)
    original = tc.models.SmallCNN(input_size=8).eval()
    narrow = tc.models.SmallCNN(input_size=8, channels=(8, 16)).eval()
    masked, _ = tc.pruning.prune(original, amount=0.5)
    board = Leaderboard(data, measure_latency=False)  # the example input: the first sample, a batch of one
    board.add("original", original, family="baseline")
    board.add("narrow", narrow, family="smaller")
    board.add("masked", masked, family="pruned")
    base, row, mask = board.rows()
    x = data[0][0].unsqueeze(0)
    assert row.mean == tc.evaluate(narrow, data).accuracy and row.delta == row.mean - base.mean
    assert row.params == tc.count_parameters(narrow) and row.bytes == tc.model_size_bytes(narrow)
    assert row.bytes_ratio == pytest.approx(tc.model_size_bytes(original) / tc.model_size_bytes(narrow))
    assert row.flops_ratio == pytest.approx(tc.flops(original, x) / tc.flops(narrow, x)) and row.flops_ratio > 3
    assert mask.bytes_ratio < 1 and mask.flops_ratio == 1  # a mask is stored and multiplied densely
    assert mask.nonzero_params == tc.count_parameters(masked, nonzero=True) < mask.params
    assert "nonzero" in str(board).splitlines()[0]


def test_latency_rows_state_their_batch_and_compare_only_like_with_like():
    data = _data()
    board = Leaderboard(data, data.tensors[0][:1])
    e = board.add("m", mlp(6, 8, 2, seed=0), family="baseline")
    assert e.latency_batch == 1 and e.latency_s is not None
    wide = Leaderboard(data, data.tensors[0][:32])
    w = wide.add("m at 32", mlp(6, 8, 2, seed=0), family="other")
    assert w.latency_batch == 32
    board.add_entry(Entry("same batch", "x", (0.5,), 100, latency_s=e.latency_s / 2, latency_batch=1))
    board.add_entry(replace(w, name="batch 32"))
    rows = {r.name: r for r in board.rows()}
    assert rows["same batch"].speedup == pytest.approx(2.0)
    assert rows["batch 32"].speedup is None  # different batch sizes: no speed-up claimed
    assert [r.latency_batch for r in rows.values()] == [1, 1, 32] and "batch" in str(board).splitlines()[0]
    assert "batch 32" not in {x.name for x in board.pareto("latency_s")}  # compared at the baseline's batch only
    with pytest.raises(ValueError, match="latency_s and latency_batch .* go together"):
        board.add_entry(Entry("no batch", "x", (0.5,), 100, latency_s=1e-3))


def test_latency_is_measured_when_asked():
    # the baseline sleeps 20 ms per forward pass, the other model not at all: the speed-up is > 1 on any machine
    data = _data()
    board = Leaderboard(data, data.tensors[0][:1])
    base = board.add("slow", nn.Sequential(mlp(6, 8, 2, seed=0), Sleep(0.02)), family="baseline")
    fast = board.add("fast", mlp(6, 8, 2, seed=0), family="baseline")
    assert base.latency_s >= 0.02 > fast.latency_s
    speedup = board.rows()[1].speedup
    assert speedup == pytest.approx(base.latency_s / fast.latency_s) and speedup > 1


def test_add_keeps_every_submodule_mode():
    data = TensorDataset(torch.randn(8, 1, 8, 8), torch.arange(8))
    model = tc.models.SmallCNN(input_size=8).train()
    model.features[0][1].eval()  # a frozen BatchNorm inside a training model
    modes = {n: m.training for n, m in model.named_modules()}
    seen = []

    def accuracy(m, d):  # a naive metric: reads the mode, then leaves the model in recursive eval mode
        seen.append({n: s.training for n, s in m.named_modules()})
        return tc.evaluate(m.eval(), d).accuracy

    board = Leaderboard(data, metric=Metric("accuracy", True, accuracy, fraction=True))
    board.add("cnn", model, family="baseline")
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert not any(seen[0].values())  # measured in eval mode


def test_lower_is_better_metrics_rank_and_print_in_their_direction():
    data = _data()
    good, bad = mlp(6, 8, 2, seed=0), mlp(6, 8, 2, seed=1)
    with torch.no_grad():
        good[2].weight.mul_(0.0)  # predicts the bias only: a cross-entropy that differs from the other model's
    board = Leaderboard(data, measure_latency=False, metric="cross_entropy")
    a, b = board.add("a", good, family="baseline"), board.add("b", bad, family="x", nbytes=10)
    assert a.values == (pytest.approx(tc.evaluate(good, data).loss),) and b.values[0] == tc.evaluate(bad, data).loss
    ppl = Leaderboard(data, measure_latency=False, metric="perplexity")
    assert ppl.add("a", good, family="baseline").mean == pytest.approx(math.exp(a.mean))
    lower, higher = sorted([a, b], key=lambda e: e.mean)
    front = {e.name for e in board.pareto()}
    # b has fewer bytes; a is on the front only if its loss is lower
    assert front == ({"a", "b"} if lower is a else {"b"})
    assert str(board).splitlines()[0].split()[2] == "cross_entropy"
    with pytest.raises(ValueError, match="metric must be one of"):
        Leaderboard(data, metric="top5")
    with pytest.raises(TypeError, match="metric must be a str or a Metric"):
        Leaderboard(data, metric=3)


@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 100)), min_size=1, max_size=12), st.booleans())
def test_pareto_front_equals_brute_force(points, higher):
    metric = Metric("score", higher)
    board = Leaderboard(_data(4), torch.zeros(1, 6), measure_latency=False, metric=metric)
    for i, (b, a) in enumerate(points):
        board.add_entry(Entry(f"e{i}", "x", (float(a),), b))
    sign = 1 if higher else -1
    brute = set()
    for i, (b, a) in enumerate(points):
        dominated = any(b2 <= b and sign * a2 >= sign * a and (b2 < b or a2 != a)
                        for j, (b2, a2) in enumerate(points) if j != i)
        if not dominated:
            brute.add(f"e{i}")
    assert {e.name for e in board.pareto()} == brute
    xs = [e.bytes for e in board.pareto()]
    assert xs == sorted(xs)


def test_plot_draws_every_entry_and_the_front():
    board = Leaderboard(_data(4), torch.zeros(1, 6), measure_latency=False)
    board.add_entry(Entry("a", "baseline", (0.970, 0.974, 0.968), 1_000_000))
    board.add_entry(Entry("b", "pruned", (0.965, 0.969, 0.960), 80_000, bytes_from="CSR file"))
    board.add_entry(Entry("c", "quantized", (0.950, 0.951, 0.952), 250_000))
    ax = board.plot()
    assert len(ax.lines) >= 1 and len(ax.texts) == 3
    assert [e.name for e in board.pareto()] == ["b", "a"]
    assert ax.get_ylabel() == "accuracy (%)" and ax.texts[0].xy == (1_000_000, pytest.approx(97.0, abs=0.1))


def test_bad_rows_and_arguments():
    board = Leaderboard(_data(4), torch.zeros(1, 6), measure_latency=False)
    with pytest.raises(ValueError, match="empty"):
        _ = board.baseline
    board.add_entry(Entry("a", "baseline", (0.9,), 10))
    with pytest.raises(ValueError, match="already"):
        board.add_entry(Entry("a", "x", (0.9,), 10))
    with pytest.raises(ValueError, match=r"accuracy of 'b' \(a fraction, not percent\) must be a fraction"):
        board.add_entry(Entry("b", "x", (97.0,), 10))
    for bad in (Entry("b", "x", (), 10), Entry("b", "x", (1.01,), 10), Entry("b", "x", (0.9,), 0),
                Entry("", "x", (0.1,), 10), Entry("b", "x", (0.1,), 10, latency_s=-1.0, latency_batch=1),
                Entry("b", "x", (float("nan"),), 10)):
        with pytest.raises(ValueError):
            board.add_entry(bad)
    for bad in (Entry("b", "x", (True,), 10), Entry("b", "x", (0.5,), 10.0), Entry("b", "x", (0.5,), 10, flops=1.5)):
        with pytest.raises(TypeError):
            board.add_entry(bad)
    with pytest.raises(ValueError, match="axis"):
        board.pareto("params")
    with pytest.raises(TypeError, match="models"):
        board.add("m", [], family="x")
    with pytest.raises(TypeError, match="example_input"):
        Leaderboard(_data(4), [0.0])
    with pytest.raises(TypeError, match="example_input is needed"):
        Leaderboard(torch.utils.data.DataLoader(_data(4), batch_size=2))
    with pytest.raises(TypeError, match="Entry"):
        board.add_entry({"name": "c"})
    with pytest.raises(ValueError, match="no fn"):
        Leaderboard(_data(4), metric=Metric("bleu", True)).add("m", mlp(6, 8, 2, seed=0), family="x")


def test_a_half_precision_model_is_measured_with_inputs_in_its_dtype():
    data = _data()
    board = Leaderboard(data, data.tensors[0][:1], measure_latency=False)
    model = mlp(6, 8, 2, seed=0)
    half, _ = tc.quantization.to_half(model, dtype=torch.bfloat16)
    board.add("float32", model, family="baseline")
    e = board.add("bfloat16", half, family="half")
    assert e.flops == board.baseline.flops and e.bytes < board.baseline.bytes
    assert e.values == (tc.evaluate(half, data).accuracy,)
