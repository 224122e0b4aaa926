"""tensorcompress.metrics.roofline: per-layer FLOPs and bytes against tc.flops and hand counts, the bound's rule, the
machine's peaks and latency against batch size. No measured time or ratio is asserted: only that it exists."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
from helpers import assert_model_unchanged, model_state
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tensorcompress as tc
from tensorcompress.metrics import MachinePeaks, latency_vs_batch, machine_peaks, roofline

matplotlib.use("Agg")

PEAKS = MachinePeaks(flops_per_s=1e11, bytes_per_s=1e10, threads=1)  # ridge 10 FLOP/byte: no measurement needed


def rows_by_name(model: nn.Module, x: torch.Tensor, machine: MachinePeaks = PEAKS) -> dict:
    return {r.name: r for r in roofline(model, x, machine=machine, measure=False).rows}


@pytest.mark.parametrize("make", [tc.models.LeNet5, tc.models.SmallCNN, tc.models.ResNet8,
                                  tc.models.MobileNetV2Tiny], ids=lambda f: f.__name__)
def test_layer_flops_sum_to_tc_flops(make):
    torch.manual_seed(0)
    model, x = make(), torch.randn(3, 1, 28, 28)
    r = roofline(model, x, machine=PEAKS, measure=False)
    assert r.flops == sum(row.flops for row in r.rows) == tc.flops(model, x) > 0
    assert not any(row.name.startswith("(outside") for row in r.rows)  # every FLOP is in a traced layer
    assert r.batch_size == 3 and r.model_time is None and r.measured is None
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [row.name for row in r.rows if row.kind in ("Conv2d", "Linear")] == convs


def test_hand_counts_linear_conv_depthwise(device, dtype):
    size = torch.empty((), dtype=dtype).element_size()
    lin = nn.Sequential(nn.Linear(10, 5)).to(device, dtype)
    row = rows_by_name(lin, torch.randn(3, 10, device=device, dtype=dtype))["0"]
    assert row.kind == "Linear"
    assert row.flops == 2 * 3 * 10 * 5
    assert row.weight_bytes == (10 * 5 + 5) * size
    assert row.bytes == (10 * 5 + 5 + 3 * 10 + 3 * 5) * size

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8,
                                                                   bias=False)).to(device, dtype)
    rows = rows_by_name(model, torch.randn(2, 3, 6, 6, device=device, dtype=dtype))
    conv, dw = rows["0"], rows["1"]
    assert conv.flops == 2 * (2 * 8 * 6 * 6) * (3 * 9)  # outputs x fan-in
    assert conv.bytes == ((8 * 3 * 9 + 8) + 2 * 3 * 6 * 6 + 2 * 8 * 6 * 6) * size
    assert dw.flops == 2 * (2 * 8 * 3 * 3) * 9  # a depthwise output reads 9 inputs of its own channel
    assert dw.weight_bytes == 8 * 9 * size
    assert dw.bytes == (8 * 9 + 2 * 8 * 6 * 6 + 2 * 8 * 3 * 3) * size


@given(n=st.integers(1, 3), groups=st.integers(1, 3), c_in_per=st.integers(1, 3), c_out_per=st.integers(1, 3),
       k=st.integers(1, 3), stride=st.integers(1, 2), padding=st.integers(0, 1), size=st.integers(3, 7),
       bias=st.booleans(), double=st.booleans())
def test_conv_counts_closed_form(n, groups, c_in_per, c_out_per, k, stride, padding, size, bias, double):
    dtype = torch.float64 if double else torch.float32
    c_in, c_out = groups * c_in_per, groups * c_out_per
    conv = nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding, groups=groups, bias=bias)).to(dtype)
    out = (size + 2 * padding - k) // stride + 1
    row = rows_by_name(conv, torch.randn(n, c_in, size, size, dtype=dtype))["0"]
    weights = c_out * c_in_per * k * k + (c_out if bias else 0)
    assert row.flops == 2 * n * c_out * out * out * c_in_per * k * k
    assert row.bytes == (weights + n * c_in * size * size + n * c_out * out * out) * (8 if double else 4)


def test_rows_without_flops_move_bytes_views_do_not():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.add = nn.Conv2d(2, 4, 1), nn.ReLU(inplace=True), tc.surgery.Add()
            self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(4 * 2 * 2, 3)

        def forward(self, x):
            y = self.relu(self.conv(x))
            return self.fc(torch.flatten(self.pool(self.add(y, torch.relu(y))), 1))

    x = torch.randn(5, 2, 4, 4)
    rows = rows_by_name(Net(), x)
    act = 5 * 4 * 4 * 4 * 4  # bytes of one 5 x 4 x 4 x 4 float32 activation
    assert rows["relu"].flops == 0 and rows["relu"].bytes == 2 * act  # in place: read and written
    assert rows["relu[2]"].kind == "relu" and rows["relu[2]"].bytes == 2 * act
    assert rows["add"].flops == 0 and rows["add"].bytes == 3 * act  # two inputs, one output
    assert rows["pool"].bytes == act + act // 4
    assert rows["pool"].binds == rows["add"].binds == "memory" and math.isnan(rows["flatten"].intensity)
    assert rows["flatten"].bytes == 0 and rows["flatten"].binds == "none" and rows["flatten"].bound == 0


def test_flops_outside_every_layer_are_one_row():
    class Product(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Parameter(torch.randn(6, 2)), nn.Parameter(torch.randn(2, 6))

        def forward(self, x):
            return x @ (self.a @ self.b)  # the product of the parameters reads no traced tensor

    model, x = Product(), torch.randn(4, 6)
    r = roofline(model, x, machine=PEAKS, measure=False)
    assert r.flops == tc.flops(model, x) == 2 * 6 * 2 * 6 + 2 * 4 * 6 * 6
    outside = r.rows[-1]
    assert outside.name == "(outside the traced layers)" and outside.flops == 2 * 6 * 2 * 6 and outside.bytes == 0
    matmul = r.rows[0]
    assert matmul.kind == "matmul" and matmul.flops == 2 * 4 * 6 * 6 and matmul.weight_bytes == 0
    timed = roofline(model, x, machine=PEAKS, min_run_time=1e-4)
    assert timed.rows[-1].measured is None and timed.rows[-1].attained is None  # runs only inside the whole pass
    assert timed.rows[0].measured > 0 and timed.measured == timed.rows[0].measured


@given(flops=st.floats(1e8, 1e15), bandwidth=st.floats(1e8, 1e13))
def test_intensity_and_bound_rule(flops, bandwidth):
    machine = MachinePeaks(flops, bandwidth, 1)
    r = roofline(tc.models.LeNet5(), torch.randn(2, 1, 28, 28), machine=machine, measure=False)
    for row in r.rows:
        assert row.bytes > 0 or row.kind == "flatten"
        if row.bytes:
            assert row.intensity == row.flops / row.bytes
        t_compute, t_memory = row.flops / flops, row.bytes / bandwidth
        assert row.bound == max(t_compute, t_memory)
        assert row.binds == ("none" if row.bound == 0 else "compute" if t_compute >= t_memory else "memory")
        assert (row.binds == "memory") == (row.bytes > 0 and row.intensity < machine.ridge)
    assert r.bound == pytest.approx(sum(row.bound for row in r.rows))


@functools.cache
def depthwise_and_dense_rows(machine: MachinePeaks = PEAKS):
    """A depthwise 3x3 layer (about 2 FLOP/byte) and a dense 256-channel 3x3 convolution (about 330 FLOP/byte)."""
    torch.manual_seed(0)
    depthwise = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False))
    dense = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1, bias=False))
    return (rows_by_name(depthwise, torch.randn(8, 64, 14, 14), machine)["0"],
            rows_by_name(dense, torch.randn(8, 256, 14, 14), machine)["0"])


@pytest.mark.parametrize("ridge", [4.0, 200.0])
def test_depthwise_memory_bound_dense_compute_bound_at_extreme_ridges(ridge):
    """Plausible ridges: 4-200 FLOP/byte (CPUs about 5-50, GPUs up to a few hundred)."""
    depthwise, dense = depthwise_and_dense_rows(MachinePeaks(ridge * 1e10, 1e10, 1))
    assert depthwise.binds == "memory" and dense.binds == "compute"


@given(ridge=st.floats(4.0, 200.0), bandwidth=st.floats(1e9, 1e12))
def test_depthwise_memory_bound_dense_compute_bound_for_any_plausible_machine(ridge, bandwidth):
    machine = MachinePeaks(ridge * bandwidth, bandwidth, 1)
    depthwise, dense = depthwise_and_dense_rows()
    assert depthwise.intensity < 4 < 200 < dense.intensity
    assert machine.bound(depthwise.flops, depthwise.bytes)[1] == "memory"
    assert machine.bound(dense.flops, dense.bytes)[1] == "compute"


def test_measured_roofline_table_plot_and_model_unchanged():
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    model, x = tc.models.SmallCNN(), torch.randn(4, 1, 28, 28)  # in-place ReLUs: timed again and again
    model.train()
    before = model_state(model)
    r = roofline(model, x, machine=PEAKS, repeats=7, min_run_time=1e-4)
    assert_model_unchanged(model, before)
    assert all(row.measured > 0 and row.measured_iqr >= 0 for row in r.rows)
    assert r.model_time > 0 and r.measured == pytest.approx(sum(row.measured for row in r.rows))
    assert all(row.attained == row.flops / row.measured for row in r.rows)
    assert sum(r.share(b) for b in ("compute", "memory", "none")) == pytest.approx(1.0)
    text = r.table()
    assert str(r) == text and "total (layers)" in text and "whole forward pass" in text
    assert all(row.name in text for row in r.rows)
    ax = r.plot()
    assert ax.get_xscale() == ax.get_yscale() == "log" and len(ax.collections) == 2
    assert {t.get_text() for t in ax.texts} == {row.name for row in r.rows if row.flops > 0}
    plt.close(ax.figure)
    unmeasured = roofline(model, x, machine=PEAKS, measure=False)
    ax = unmeasured.plot(labels=False)
    assert not ax.texts
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="measure=True"):
        unmeasured.share("memory")
    with pytest.raises(ValueError, match="binds"):
        r.share("bandwidth")


def test_machine_peaks_positive_and_cached():
    peaks = machine_peaks(threads=1)
    assert peaks.threads == 1 and peaks.device == "cpu"
    for value in (peaks.flops_per_s, peaks.bytes_per_s, peaks.ridge):
        assert math.isfinite(value) and value > 0
    assert machine_peaks(threads=1) is peaks
    assert machine_peaks() is peaks  # the tests run with one torch thread
    assert torch.get_num_threads() == 1  # set only inside the measurement
    assert "GFLOP/s" in str(peaks)


def test_latency_vs_batch_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU())
    before = model_state(model)
    out = latency_vs_batch(model, torch.randn(3, 6), (8, 1, 2), repeats=7, min_run_time=1e-4)
    assert_model_unchanged(model, before)
    assert [b.batch_size for b in out] == [8, 1, 2]
    for b in out:
        assert b.median > 0 and b.iqr >= 0 and b.repeats == 7 and b.threads == 1
        assert b.throughput == b.batch_size / b.median
        assert f"batch {b.batch_size}:" in str(b)


class FakeSession:
    """An ONNX Runtime-like session: records the batches it is given."""

    def __init__(self, threads: int | None = 1) -> None:
        self.seen: list[tuple[int, ...]] = []
        if threads is not None:
            self.get_session_options = lambda: SimpleNamespace(intra_op_num_threads=threads)

    def get_inputs(self):
        return [SimpleNamespace(name="image")]

    def run(self, outputs, feeds):
        assert outputs is None and list(feeds) == ["image"] and isinstance(feeds["image"], np.ndarray)
        self.seen.append(feeds["image"].shape)
        return [feeds["image"].sum(axis=1)]


def test_latency_vs_batch_session():
    session = FakeSession()
    x = torch.arange(3 * 2, dtype=torch.float32).reshape(3, 2)
    out = latency_vs_batch(session, x, (1, 4), repeats=7, min_run_time=1e-4)
    assert [b.batch_size for b in out] == [1, 4] and all(b.median > 0 and b.threads == 1 for b in out)
    assert set(session.seen) == {(1, 2), (4, 2)}
    from tensorcompress.metrics.roofline import _batch

    assert np.array_equal(_batch(x.numpy(), 4), x.numpy()[[0, 1, 2, 0]])  # rows repeated cyclically
    quiet = SimpleNamespace(run=FakeSession().run)  # no get_inputs, no get_session_options
    assert latency_vs_batch(quiet, x.numpy(), (2,), input_name="image", min_run_time=1e-4)[0].threads is None


def test_latency_vs_batch_onnxruntime_session():
    """A real ONNX Runtime session (a MatMul graph written with onnx.helper): its input name and threads are read."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    h = onnx.helper
    w = onnx.numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "w")
    graph = h.make_graph([h.make_node("MatMul", ["pixels", "w"], ["y"])], "g",
                         [h.make_tensor_value_info("pixels", onnx.TensorProto.FLOAT, ["n", 4])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])], [w])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]).SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    out = latency_vs_batch(session, torch.randn(2, 4), (1, 3), min_run_time=1e-4)
    assert [b.batch_size for b in out] == [1, 3] and all(b.median > 0 and b.threads == 1 for b in out)
    with pytest.raises(ValueError, match="intra_op_num_threads"):
        latency_vs_batch(session, torch.randn(2, 4), (1,), threads=2)


def test_bad_input():
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="model"):
        roofline(object(), torch.zeros(1, 2), machine=PEAKS)
    with pytest.raises(TypeError, match="example_input"):
        roofline(lin, [[0.0, 0.0]], machine=PEAKS)
    with pytest.raises(TypeError, match="machine"):
        roofline(lin, torch.zeros(1, 2), machine=(1e9, 1e9))
    with pytest.raises(ValueError, match="repeats"):
        roofline(lin, torch.zeros(1, 2), machine=PEAKS, repeats=3)
    with pytest.raises(ValueError, match="min_run_time"):
        roofline(lin, torch.zeros(1, 2), machine=PEAKS, min_run_time=0)
    with pytest.raises(ValueError, match="bytes_per_s"):
        MachinePeaks(1e9, -1.0, 1)
    with pytest.raises(ValueError, match="threads"):
        machine_peaks(threads=0)
    with pytest.raises(ValueError, match="device"):
        machine_peaks(device="meta")
    with pytest.raises(TypeError, match="batch_sizes"):
        latency_vs_batch(lin, torch.zeros(1, 2), ())
    with pytest.raises(ValueError, match="batch_sizes"):
        latency_vs_batch(lin, torch.zeros(1, 2), (0, 1))
    with pytest.raises(ValueError, match="repeat"):
        latency_vs_batch(lin, torch.zeros(1, 2), (8, 8))
    with pytest.raises(TypeError, match="session"):
        latency_vs_batch(object(), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="intra_op_num_threads=0"):
        latency_vs_batch(FakeSession(threads=0), torch.zeros(1, 2))
    with pytest.raises(TypeError, match="input_name"):
        latency_vs_batch(SimpleNamespace(run=lambda *a: None), torch.zeros(1, 2))
