"""CSR with relative indices: encode -> decode exact; filler zeros as counted independently. The file that stores
pruned tensors this way is tested in tests/test_export.py."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tensorcompress.export import csr_decode, csr_encode


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
