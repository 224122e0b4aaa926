"""Weight-only quantization: the RTN grid against a hand transcription, NF4 against QLoRA's published table, the
packed layer's bytes and forward, quantize_weights' contract and bad input, and the compressed file's weight_only
kind (round trip, truncated and hostile files)."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
import torch
from helpers import assert_model_unchanged, model_state, randn
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tensorcompress as tc
from tensorcompress import quantization as Q

# QLoRA's NF4 levels as published (Dettmers et al. 2023, appendix E; bitsandbytes' get_4bit_type("nf4"),
# bitsandbytes/functional.py), typed here from the paper rather than imported from the library
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]


def hand_grid(w: torch.Tensor, bits: int, group: int) -> tuple[list, list, list]:
    """The GPTQ/AWQ reference grid written out element by element in Python floats: per row and group, the range
    widened to hold 0, scale = (max - min) / (2^b - 1), zero = round(-min / scale), codes clamp(round(w/s) + z)."""
    maxq = 2**bits - 1
    codes, scales, zeros = [], [], []
    for row in w.tolist():
        c_row, s_row, z_row = [], [], []
        for start in range(0, len(row), group):
            vals = row[start:start + group]
            lo, hi = min(min(vals), 0.0), max(max(vals), 0.0)
            if lo == 0 and hi == 0:
                lo, hi = -1.0, 1.0
            s = (hi - lo) / maxq
            z = round(-lo / s)
            c_row += [min(max(round(v / s) + z, 0), maxq) for v in vals]
            s_row.append(s)
            z_row.append(z)
        codes.append(c_row)
        scales.append(s_row)
        zeros.append(z_row)
    return codes, scales, zeros


def lin_net(*, seed: int = 0, dtype=torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 16)).to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# the RTN grid


@given(bits=st.integers(2, 8), groups=st.sampled_from([(1, 24), (2, 12), (3, 8), (6, 4), (24, 1)]),
       seed=st.integers(0, 2**16), scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_rtn_equals_the_hand_written_grid(bits, groups, seed, scale):
    k, g = groups
    w = randn((5, k * g), seed) * scale
    w[0, :g] = 0  # a group of zeros takes [-1, 1]
    w[1] = w[1].abs()  # an all-positive row: the range is widened to hold 0
    codes, scales, zeros = Q.rtn_grid(w, bits, None if k == 1 else g)
    h_codes, h_scales, h_zeros = hand_grid(w, bits, g)
    assert codes.tolist() == h_codes and zeros.tolist() == h_zeros
    torch.testing.assert_close(scales, torch.tensor(h_scales, dtype=torch.float64), rtol=1e-15, atol=0)
    deq = Q.rtn(w, bits, None if k == 1 else g)
    hand = [[h_scales[i][j // g] * (h_codes[i][j] - h_zeros[i][j // g]) for j in range(k * g)] for i in range(5)]
    torch.testing.assert_close(deq, torch.tensor(hand, dtype=torch.float64), rtol=1e-14, atol=1e-14)
    assert bool((deq - w).abs().le(torch.tensor(h_scales).repeat_interleave(g, 1) / 2 + 1e-12).all())


def test_rtn_in_float32_keeps_the_dtype_and_matches_float64(dtype):
    w = randn((8, 64), 3, dtype=dtype)
    codes, scales, zeros = Q.rtn_grid(w, 4, 16)
    assert scales.dtype == dtype and codes.dtype == zeros.dtype == torch.int64
    ref = Q.rtn_grid(w.double(), 4, 16)[0]
    assert (codes != ref).float().mean() < 0.01 and (codes - ref).abs().max() <= 1


# ---------------------------------------------------------------------------------------------------------------
# NF4


def test_nf4_levels_derived_from_normal_quantiles_equal_the_published_table():
    derived = Q.nf4_levels(torch.float64)
    torch.testing.assert_close(derived, torch.tensor(PUBLISHED_NF4, dtype=torch.float64), rtol=0, atol=5e-7)
    assert list(Q.NF4_TABLE) == PUBLISHED_NF4
    assert derived[7] == 0 and derived[0] == -1 and derived[-1] == 1  # 0 exact, 8 positive and 7 negative levels


def test_nf4_layer_rounds_to_the_nearest_level_of_each_block(dtype):
    w = randn((4, 128), 5, dtype=dtype)
    layer = Q.WeightOnlyLinear.from_weight(w, bits=4, method="nf4")
    assert layer.group_size == 64 and layer.scales.shape == (4, 2) and layer.zeros is None
    absmax = w.abs().reshape(4, 2, 64).amax(-1)
    torch.testing.assert_close(layer.scales, absmax.to(torch.float16), rtol=0, atol=0)
    unit = (w.reshape(4, 2, 64) / absmax.unsqueeze(-1)).reshape(4, 128)
    levels = torch.tensor(PUBLISHED_NF4, dtype=dtype)
    codes = layer.code_matrix()
    # nearest level: no other level is closer (ties within float rounding allowed)
    dist = (unit.unsqueeze(-1) - levels).abs()
    assert bool((dist.gather(-1, codes.unsqueeze(-1)).squeeze(-1) <= dist.amin(-1) + 1e-6).all())
    expect = levels[codes] * layer.scales.to(dtype).repeat_interleave(64, 1)
    torch.testing.assert_close(layer.dequantize(dtype), expect, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# the layer


@given(bits=st.integers(2, 8), group=st.sampled_from([None, 4, 8, 24]), seed=st.integers(0, 2**16))
def test_layer_stores_packed_codes_float16_scales_and_packed_zeros(bits, group, seed):
    w = randn((6, 24), seed, dtype=torch.float32)
    bias = randn((6,), seed + 1, dtype=torch.float32)
    layer = Q.WeightOnlyLinear.from_weight(w, bias, bits=bits, group_size=group)
    g = 24 if group is None else group
    k = 24 // g
    assert (layer.in_features, layer.out_features, layer.group_size, layer.n_groups) == (24, 6, g, k)
    assert layer.codes.dtype == torch.uint8 and layer.codes.numel() == -(-6 * 24 * bits // 8)
    assert layer.zeros.dtype == torch.uint8 and layer.zeros.numel() == -(-6 * k * bits // 8)
    assert layer.scales.dtype == torch.float16 and layer.scales.shape == (6, k)
    codes, scales, zeros = Q.rtn_grid(w, bits, group)
    assert torch.equal(layer.code_matrix(), codes) and torch.equal(layer.zero_points(), zeros)
    # dequantized with the stored float16 scales, as written out by hand
    expect = (codes - zeros.repeat_interleave(g, 1)) * scales.to(torch.float16).float().repeat_interleave(g, 1)
    torch.testing.assert_close(layer.dequantize(), expect, rtol=0, atol=0)
    x = randn((3, 5, 24), seed + 2, dtype=torch.float32)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, expect, bias), rtol=1e-6, atol=1e-6)
    assert set(layer.state_dict()) == {"codes", "scales", "zeros", "bias"}


def test_layer_real_bytes_are_what_surgery_counts():
    layer = Q.WeightOnlyLinear.from_weight(randn((64, 128), 0, dtype=torch.float32), bits=4, group_size=32)
    payload = 64 * 128 // 2 + 64 * 4 * 2 + 64 * 4 // 2  # codes, float16 scales, 4-bit zero points
    assert sum(t.numel() * t.element_size() for t in layer.state_dict().values()) == payload
    fp = tc.surgery.footprint(layer)
    assert fp.type == "WeightOnlyLinear" and fp.bytes == tc.surgery.state_bytes(layer)
    dense = tc.surgery.state_bytes(nn.Linear(128, 64, bias=False))
    assert payload < fp.bytes < payload + 2500  # torch.save's container around the buffers
    assert dense > 6 * payload  # 4.625 bits per weight against 32


def test_layer_on_each_device_computes_in_the_input_dtype(device, dtype):
    w = randn((8, 16), 1, device=device, dtype=dtype)
    layer = Q.WeightOnlyLinear.from_weight(w, torch.zeros(8, device=device, dtype=dtype), bits=3)
    x = randn((2, 16), 2, device=device, dtype=dtype)
    y = layer(x)
    assert y.dtype == dtype and y.device.type == torch.device(device).type
    torch.testing.assert_close(y, x @ layer.dequantize(dtype).T, rtol=1e-6, atol=1e-6)


def test_skeleton_loads_a_state_dict_bit_for_bit():
    layer = Q.WeightOnlyLinear.from_weight(randn((8, 32), 1, dtype=torch.float32), torch.ones(8), bits=5,
                                           group_size=8)
    skeleton = Q.WeightOnlyLinear(32, 8, bits=5, group_size=8)
    skeleton.load_state_dict(layer.state_dict())
    x = randn((4, 32), 2, dtype=torch.float32)
    assert torch.equal(skeleton(x), layer(x))


def test_layer_bad_input():
    with pytest.raises(ValueError, match="bits must be between 2 and 8"):
        Q.WeightOnlyLinear(8, 4, bits=1)
    with pytest.raises(ValueError, match="bits must be 4 for method='nf4'"):
        Q.WeightOnlyLinear(8, 4, bits=3, method="nf4")
    with pytest.raises(ValueError, match="group_size=3 does not divide the 8 inputs"):
        Q.WeightOnlyLinear(8, 4, bits=4, group_size=3)
    with pytest.raises(TypeError, match="bits must be an int"):
        Q.WeightOnlyLinear(8, 4, bits=4.0)
    with pytest.raises(ValueError, match="method must be one of"):
        Q.WeightOnlyLinear(8, 4, bits=4, method="int4")
    with pytest.raises(TypeError, match="layer must be an nn.Linear"):
        Q.WeightOnlyLinear.from_linear(nn.Conv2d(1, 1, 1), bits=4)
    with pytest.raises(ValueError, match="overflows float16"):
        Q.WeightOnlyLinear.from_weight(torch.tensor([[1e9, -1e9]]), bits=4)
    with pytest.raises(ValueError, match="must be finite"):
        Q.rtn_grid(torch.tensor([[1.0, float("nan")]]), 4)


# ---------------------------------------------------------------------------------------------------------------
# quantize_weights


def test_quantize_weights_replaces_every_linear_and_leaves_the_model(dtype):
    model = lin_net(dtype=dtype)
    before = model_state(model)
    q, rows = Q.quantize_weights(model, bits=4, group_size=16)
    assert_model_unchanged(model, before)
    assert [r.name for r in rows] == ["1", "3"] and all(isinstance(r, Q.WeightOnlyLayer) for r in rows)
    assert isinstance(q[1], Q.WeightOnlyLinear) and isinstance(q[3], Q.WeightOnlyLinear) and type(q[0]) is nn.LayerNorm
    assert rows[0].bits == 4 and rows[0].group_size == 16 and rows[0].method == "rtn" and rows[0].output_error is None
    w = model[1].weight.detach().double()
    err = (q[1].dequantize(torch.float64) - w).norm() / w.norm()
    assert rows[0].weight_error == pytest.approx(float(err), abs=1e-6) and 0 < rows[0].weight_error < 0.2
    assert rows[0].bytes_after < rows[0].bytes_before / 2
    x = randn((4, 32), 0, dtype=dtype)
    assert q(x).dtype == dtype
    assert torch.equal(q[1].code_matrix(), Q.rtn_grid(model[1].weight, 4, 16)[0])


def test_quantize_weights_nf4_and_selection():
    q, rows = Q.quantize_weights(lin_net(), bits=4, method="nf4", group_size=16, exclude="3")
    assert [r.name for r in rows] == ["1"] and rows[0].method == "nf4" and type(q[3]) is nn.Linear
    with pytest.raises(ValueError, match="group_size=64 does not divide the 48 inputs of layer '3'"):
        Q.quantize_weights(lin_net(), bits=4, method="nf4", include="3")  # NF4's default blocks of 64
    q, rows = Q.quantize_weights(lin_net(), bits=4, method="nf4", include="3", group_size=48)
    assert rows[0].group_size == 48 and q[3].scales.shape == (16, 1)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"bits": 1}, ValueError, "bits must be between 2 and 8"),
    ({"bits": 9}, ValueError, "bits must be between 2 and 8"),
    ({"bits": True}, TypeError, "bits must be an int"),
    ({"bits": 3, "method": "nf4"}, ValueError, "bits must be 4 for method='nf4'"),
    ({"bits": 4, "method": "gptq"}, ValueError, "method must be one of"),
    ({"bits": 4, "group_size": 5}, ValueError, "group_size=5 does not divide the 32 inputs of layer '1'"),
    ({"bits": 4, "group_size": 0}, ValueError, "group_size must be >= 1, got 0"),
    ({"bits": 4, "group_size": 2.0}, TypeError, "group_size must be an int"),
])
def test_quantize_weights_bad_input(kwargs, error, match):
    model = lin_net()
    before = model_state(model)
    with pytest.raises(error, match=match):
        Q.quantize_weights(model, **kwargs)
    assert_model_unchanged(model, before)


def test_quantize_weights_needs_a_linear():
    with pytest.raises(ValueError, match="quantize_weights: nothing to act on, the model has no Linear module"):
        Q.quantize_weights(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), bits=4)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        Q.quantize_weights("model", bits=4)


# ---------------------------------------------------------------------------------------------------------------
# the compressed file


def _awq_model():
    model = lin_net(seed=2)
    x = randn((16, 32), 4, dtype=torch.float32)
    return Q.awq(model, x, bits=3, group_size=8)[0]


@pytest.mark.parametrize("make", [
    lambda: Q.quantize_weights(lin_net(), bits=4, group_size=16)[0],
    lambda: Q.quantize_weights(lin_net(), bits=4, method="nf4", group_size=16)[0],
    lambda: Q.quantize_weights(lin_net(), bits=3, exclude="3")[0],
    lambda: Q.gptq(lin_net(), randn((16, 32), 3, dtype=torch.float32), bits=2, group_size=8)[0],
    _awq_model,
    lambda: Q.quantize_weights(lin_net(dtype=torch.float64), bits=6, group_size=8)[0].float(),
], ids=["rtn", "nf4", "rtn-partial", "gptq", "awq-input-scale", "scales-cast-to-float32"])
@pytest.mark.parametrize("coder", ["huffman", "ans"])
def test_file_round_trip_is_bit_exact(tmp_path, make, coder):
    model = make()
    path = tmp_path / "m.tcdc"
    size = tc.export.save_compressed(model, path, coder=coder)
    loaded = tc.export.load_compressed(path, model=lin_net(seed=9))
    x = randn((5, 32), 6, dtype=torch.float32)
    assert torch.equal(loaded(x), model.eval()(x))
    for name, m in model.named_modules():
        if isinstance(m, Q.WeightOnlyLinear):
            other = loaded.get_submodule(name)
            assert isinstance(other, Q.WeightOnlyLinear)
            for key, t in m.state_dict().items():
                assert torch.equal(other.state_dict()[key].to(t.dtype), t), (name, key)
    payload = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert size < payload + 2000  # codes entropy coded: never much above their packed size


def _entries(data: bytes) -> tuple[dict, int]:
    n = struct.unpack_from("<I", data, 6)[0]
    return json.loads(data[10:10 + n]), n


def _rewrite(data: bytes, edit) -> bytes:
    header, n = _entries(data)
    edit(header)
    new = json.dumps(header, separators=(",", ":")).encode()
    body = data[:6] + struct.pack("<I", len(new)) + new + data[10 + n:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def _weight_only_entry(header: dict) -> dict:
    return next(e for e in header["tensors"] if e["kind"] == "weight_only")


@pytest.mark.parametrize("edit, match", [
    (lambda e: e.update(bits=9), r"bits = 9, allowed an int in \[2, 8\]"),
    (lambda e: e.update(bits=3, method="nf4"), r"bits = 3, allowed an int in \[4, 4\]"),
    (lambda e: e.update(group_size=5), "group_size 5 does not divide its 32 inputs"),
    (lambda e: e.update(group_size=10**9), "group_size = 1000000000"),
    (lambda e: e.update(method="int4"), "needs a matrix and a method"),
    (lambda e: e.update(codes_words=10**8), "codes_words = 100000000"),
    (lambda e: e.update(zeros_table=3), "zeros_table = 3"),
    (lambda e: e.update(group_size=8), "declares|corrupt"),
])
def test_hostile_headers_are_refused(tmp_path, edit, match):
    model = Q.quantize_weights(lin_net(), bits=4, group_size=16)[0]
    data, _ = tc.export.encode_compressed(model)
    path = tmp_path / "bad.tcdc"
    path.write_bytes(_rewrite(data, lambda h: edit(_weight_only_entry(h))))
    with pytest.raises(ValueError, match=match):
        tc.export.load_compressed(path, model=lin_net())


def test_truncated_corrupted_and_misfit_files_are_refused(tmp_path):
    model = Q.quantize_weights(lin_net(), bits=4, group_size=16)[0]
    data, sizes = tc.export.encode_compressed(model)
    assert set(sizes["1"]) == {"scales", "codes", "zeros"}
    path = tmp_path / "m.tcdc"
    path.write_bytes(data[:-40])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        tc.export.load_compressed(path, model=lin_net())
    flipped = bytearray(data)
    flipped[-30] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="CRC-32 mismatch"):
        tc.export.load_compressed(path, model=lin_net())
    # a payload cut short behind a valid checksum: the section lengths are checked against what is left
    header, n = _entries(data)
    body = data[:10 + n] + data[10 + n:-4][:20]
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(ValueError, match="declares .* bytes"):
        tc.export.load_compressed(path, model=lin_net())
    # a NaN scale behind a valid checksum (the LayerNorm's weight and bias and the layer's bias come first)
    assert [e["name"] for e in header["tensors"]][:4] == ["0.weight", "0.bias", "1.bias", "1.weight"]
    scales_at = 10 + n + sum(sizes[k]["plain"] for k in ("0.weight", "0.bias", "1.bias"))
    bad = bytearray(data[:-4])
    bad[scales_at:scales_at + 2] = struct.pack("<e", float("nan"))
    path.write_bytes(bytes(bad) + struct.pack("<I", zlib.crc32(bytes(bad))))
    with pytest.raises(ValueError, match="a scale is not finite"):
        tc.export.load_compressed(path, model=lin_net())
    path.write_bytes(data)
    with pytest.raises(ValueError, match="does not fit the model"):
        tc.export.load_compressed(path, model=model)  # a quantized skeleton: the file names float weights

    class OtherLinear(nn.Linear):
        pass

    other = lin_net()
    other[1] = OtherLinear(32, 48)
    with pytest.raises(ValueError, match="is not the weight of an nn.Linear"):
        tc.export.load_compressed(path, model=other)


def test_from_codes_checks_its_arguments():
    codes, scales, zeros = Q.rtn_grid(randn((4, 8), 0), 3, 4)
    layer = Q.WeightOnlyLinear.from_codes(codes, scales, zeros, bits=3)
    assert torch.equal(layer.code_matrix(), codes) and torch.equal(layer.zero_points(), zeros)
    with pytest.raises(TypeError, match="codes must be an integer tensor"):
        Q.WeightOnlyLinear.from_codes(codes.double(), scales, zeros, bits=3)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 3\]"):
        Q.WeightOnlyLinear.from_codes(codes, scales, zeros, bits=2)
    with pytest.raises(ValueError, match="zeros must be given for method='rtn' and only then"):
        Q.WeightOnlyLinear.from_codes(codes, scales, None, bits=3)
    with pytest.raises(ValueError, match="must agree"):
        Q.WeightOnlyLinear.from_codes(codes, scales[:2], zeros, bits=3)
