"""Leaderboard: measured rows equal the metrics they come from, the Pareto front equals a brute-force one, bad rows
are refused."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from helpers import Sleep
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

import tensorcompress as tc
from tensorcompress.pipelines import Entry, Leaderboard

matplotlib.use("Agg")


def _data(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))


def test_add_measures_accuracy_bytes_flops_like_the_metrics():
    data = _data()
    board = Leaderboard(data, data.tensors[0][:1], measure_latency=False)
    models = [_model(s) for s in range(3)]
    e = board.add("three seeds", models, family="baseline")
    want = [100 * tc.evaluate(m, data).accuracy for m in models]
    assert e.accuracy == pytest.approx(want, abs=1e-12)
    assert e.stats.mean == pytest.approx(sum(want) / 3) and e.stats.std == pytest.approx(torch.tensor(want).std())
    assert e.bytes == tc.model_size_bytes(models[0]) and e.bytes_from == "torch.save"
    assert e.flops == tc.flops(models[0], data.tensors[0][:1]) == 2 * (6 * 8 + 8 * 2)
    assert e.params == tc.count_parameters(models[0]) and e.latency_s is None
    one = board.add("coded file", _model(7), family="other", nbytes=123, bytes_from="a coded file")
    assert one.stats is None and one.accuracy_label() == f"{one.mean:.1f}" and one.bytes == 123
    rows = board.rows()
    assert rows[1]["bytes_ratio"] == pytest.approx(e.bytes / 123) and rows[0]["delta"] == 0
    text = str(board)
    assert "three seeds" in text and "123*" in text and "a coded file" in text and "±" in text


def test_latency_is_measured_when_asked():
    # the baseline sleeps 20 ms per forward pass, the other model not at all: the speed-up is > 1 on any machine
    data = _data()
    board = Leaderboard(data, data.tensors[0][:1])
    base = board.add("slow", nn.Sequential(_model(0), Sleep(0.02)), family="baseline")
    fast = board.add("fast", _model(0), family="baseline")
    assert base.latency_s >= 0.02 > fast.latency_s
    speedup = board.rows()[1]["speedup"]
    assert speedup == pytest.approx(base.latency_s / fast.latency_s) and speedup > 1


@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 100)), min_size=1, max_size=12))
def test_pareto_front_equals_brute_force(points):
    board = Leaderboard(_data(4), torch.zeros(1, 6), measure_latency=False)
    for i, (b, a) in enumerate(points):
        board.add_entry(Entry(f"e{i}", "x", (float(a),), b))
    front = {e.name for e in board.pareto()}
    brute = set()
    for i, (b, a) in enumerate(points):
        dominated = any(b2 <= b and a2 >= a and (b2 < b or a2 > a) for j, (b2, a2) in enumerate(points) if j != i)
        if not dominated:
            brute.add(f"e{i}")
    assert front == brute
    xs = [e.bytes for e in board.pareto()]
    assert xs == sorted(xs)


def test_plot_draws_every_entry_and_the_front():
    board = Leaderboard(_data(4), torch.zeros(1, 6), measure_latency=False)
    board.add_entry(Entry("a", "baseline", (97.0, 97.4, 96.8), 1_000_000))
    board.add_entry(Entry("b", "pruned", (96.5, 96.9, 96.0), 80_000, bytes_from="CSR file"))
    board.add_entry(Entry("c", "quantized", (95.0, 95.1, 95.2), 250_000))
    ax = board.plot()
    assert len(ax.lines) >= 1 and len(ax.texts) == 3
    assert [e.name for e in board.pareto()] == ["b", "a"]


def test_bad_rows_and_arguments():
    board = Leaderboard(_data(4), torch.zeros(1, 6), measure_latency=False)
    with pytest.raises(ValueError, match="empty"):
        _ = board.baseline
    board.add_entry(Entry("a", "baseline", (90,), 10))
    with pytest.raises(ValueError, match="already"):
        board.add_entry(Entry("a", "x", (90.0,), 10))
    for bad in (Entry("b", "x", (), 10), Entry("b", "x", (101.0,), 10), Entry("b", "x", (0.9,), 0),
                Entry("b", "x", (True,), 10), Entry("", "x", (1.0,), 10), Entry("b", "x", (1.0,), 10, latency_s=-1.0)):
        with pytest.raises(ValueError):
            board.add_entry(bad)
    with pytest.raises(ValueError, match="axis"):
        board.pareto("flops")
    with pytest.raises(TypeError, match="models"):
        board.add("m", [], family="x")
    with pytest.raises(TypeError, match="example_input"):
        Leaderboard(_data(4), [0.0])
    with pytest.raises(TypeError, match="Entry"):
        board.add_entry({"name": "c"})


def test_a_half_precision_model_is_measured_with_inputs_in_its_dtype():
    data = _data()
    board = Leaderboard(data, data.tensors[0][:1], measure_latency=False)
    model = _model(0)
    half, _ = tc.pipelines.to_half(model, torch.bfloat16)
    board.add("float32", model, family="baseline")
    e = board.add("bfloat16", half, family="half")
    assert e.flops == board.baseline.flops and e.bytes < board.baseline.bytes
    assert e.accuracy == (100 * tc.evaluate(half, data).accuracy,)
