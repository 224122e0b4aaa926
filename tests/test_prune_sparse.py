"""CSR with relative indices: encode -> decode and file -> load exact; filler zeros as counted independently;
bytes are the file's."""

import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensorcompress as tc
from tensorcompress.pruning import csr_decode, csr_encode, load_sparse, prune, save_sparse


def _sparse(shape, density, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    keep = torch.rand(shape, generator=g) < density
    return (w * keep).to(dtype)


@given(rows=st.integers(1, 6), cols=st.integers(1, 700), density=st.sampled_from([0.0, 0.003, 0.05, 0.3, 1.0]),
       bits=st.integers(4, 8), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]))
def test_encode_decode_exact_and_fillers(rows, cols, density, bits, seed, dtype):
    w = _sparse((rows, cols), density, seed, dtype)
    enc = csr_encode(w, bits)
    back = csr_decode(enc)
    assert back.dtype == dtype and torch.equal(back, w)
    assert int(enc.gaps.max(initial=0)) < 2**bits
    # independent count: a run of d zeros before a non-zero needs floor(d / 2^bits) fillers
    expected_fill = 0
    for row in w.numpy().astype(np.float64) if dtype != torch.bfloat16 else w.double().numpy():
        idx = np.flatnonzero(row)
        gaps = np.diff(np.r_[-1, idx]) - 1
        expected_fill += int((gaps // 2**bits).sum())
    assert enc.n_fillers == expected_fill
    assert len(enc.gaps) == int((w != 0).sum()) + expected_fill
    assert int(enc.row_counts.sum()) == len(enc.gaps)


def test_conv_shapes_and_bad_input():
    w = _sparse((4, 3, 5, 5), 0.2, 1, torch.float32)
    assert torch.equal(csr_decode(csr_encode(w, 8)), w)
    with pytest.raises(ValueError, match="bits must be an int in"):
        csr_encode(w, 0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        csr_encode(torch.ones(3), 5)
    with pytest.raises(TypeError, match="floating point"):
        csr_encode(torch.ones(3, 3, dtype=torch.int32), 5)


def test_file_round_trip_and_real_bytes(tmp_path):
    torch.manual_seed(0)
    model = tc.models.LeNet300100()
    masked, _ = prune(model, amount=0.92, scope="global")
    path = tmp_path / "lenet.tcsr"
    n = save_sparse(masked, path, bits=5)
    assert n == os.path.getsize(path)
    state = load_sparse(path)
    assert set(state) == set(model.state_dict())
    fresh = tc.models.LeNet300100()
    fresh.load_state_dict(state)
    x = torch.randn(4, 784)
    assert torch.equal(fresh(x), masked(x))
    dense = tc.model_size_bytes(model)
    nnz = tc.count_parameters(masked, nonzero=True)
    # about (4 bytes + 5 bits) per stored entry: far below dense, above the bare values
    assert 4 * nnz < n < 0.15 * dense
    with pytest.raises(ValueError, match="not a file written by save_sparse"):
        torch.save({}, tmp_path / "other.pt")
        load_sparse(tmp_path / "other.pt")


def _fillers(t, bits):
    rows = t.reshape(t.shape[0], -1).double().numpy()
    return sum(int(((np.diff(np.r_[-1, np.flatnonzero(r)]) - 1) // 2**bits).sum()) for r in rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_file_bytes_are_the_format_s_and_dense_tensors_round_trip(tmp_path, dtype):
    # a BatchNorm network: 1-D float buffers and the 0-dim int64 num_batches_tracked are stored dense, raw
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 4 * 4, 10)).to(dtype)
    model[1].running_mean.normal_()
    model[1].num_batches_tracked.fill_(7)
    masked, _ = prune(model, amount=0.8, scope="global")
    bits = 4
    n = save_sparse(masked, tmp_path / "m.tcsr", bits=bits)
    state = load_sparse(tmp_path / "m.tcsr")
    want = model.state_dict()
    for name, t in masked.named_modules():
        if hasattr(t, "weight_mask"):
            want[f"{name}.weight"] = t.weight.detach()
    assert set(state) == set(want)
    for k, v in want.items():
        assert state[k].dtype == v.dtype and state[k].shape == v.shape and torch.equal(state[k], v), k
    # every byte accounted for: magic + count, then per tensor its name and either
    # "R" dtype ndim shape raw-values, or "S" dtype bits ndim shape count row-counts packed-gaps values
    expected = 5 + 4
    for k, v in want.items():
        expected += 2 + len(k.encode())
        if v.ndim >= 2:
            entries = int((v != 0).sum()) + _fillers(v, bits)
            expected += 1 + 3 + 8 * v.ndim + 8 + 4 * v.shape[0] + (entries * bits + 7) // 8 + entries * v.element_size()
        else:
            expected += 1 + 2 + 8 * v.ndim + v.numel() * v.element_size()
    assert n == expected


def test_other_dtypes_go_through_torch_save(tmp_path):
    state = {"c": torch.tensor([1 + 2j, 3 - 1j]), "w": torch.eye(3)}
    save_sparse(state, tmp_path / "c.tcsr")
    back = load_sparse(tmp_path / "c.tcsr")
    assert torch.equal(back["c"], state["c"]) and torch.equal(back["w"], state["w"])
