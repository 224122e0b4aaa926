"""The weight-only quantizers on the library's transformer (a small random TinyGPT): the groups they find on its
traced graph, SmoothQuant's identity, GPTQ below RTN on the logits, and the compressed file's round trip."""

from __future__ import annotations

import pytest
import torch

import tensorcompress as tc
from tensorcompress import quantization as Q


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    model = tc.models.TinyGPT(40, d_model=64, n_layers=2, n_heads=2, context=16).eval()
    tokens = torch.randint(0, 40, (3000,), generator=torch.Generator().manual_seed(1))
    return model, tc.data.text_windows(tokens, 24, 16, seed=0), tc.data.text_windows(tokens, 8, 16, seed=1)


LINEARS = [f"blocks.{i}.{n}" for i in range(2) for n in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc1", "mlp.fc2")]


def test_awq_finds_the_layernorm_groups_of_the_transformer(gpt):
    model, cal, _ = gpt
    _, rows = Q.awq(model, cal, bits=4, group_size=32, n_grid=5, exclude="head")
    by = {r.name: r.scaled_by for r in rows}
    assert list(by) == LINEARS
    for i in range(2):
        assert {by[f"blocks.{i}.attn.{p}"] for p in "qkv"} == {f"blocks.{i}.ln1"}
        assert by[f"blocks.{i}.mlp.fc1"] == f"blocks.{i}.ln2"
        assert by[f"blocks.{i}.attn.o"] == by[f"blocks.{i}.mlp.fc2"] == "input_scale"  # after attention / GELU
    _, rows = Q.awq(model, cal, bits=4, n_grid=2, include="head")
    assert rows[0].scaled_by == "ln_f"


def test_smoothquant_on_the_transformer_is_an_identity(gpt):
    model, cal, x = gpt
    smoothed, rows = Q.smoothquant(model, cal)
    assert sorted(r.name for r in rows) == sorted([n for n in LINEARS if not n.endswith(("o", "fc2"))] + ["head"])
    with torch.no_grad():
        torch.testing.assert_close(smoothed(x), model(x), rtol=1e-4, atol=1e-5)


def test_gptq_is_closer_than_rtn_on_the_logits(gpt, tmp_path):
    model, cal, x = gpt
    g, rows = Q.gptq(model, cal, bits=3, group_size=32, exclude="head")
    r, _ = Q.quantize_weights(model, bits=3, group_size=32, exclude="head")
    with torch.no_grad():
        ref = model(x)
        e_g, e_r = (g(x) - ref).norm() / ref.norm(), (r(x) - ref).norm() / ref.norm()
    assert e_g < 0.8 * e_r, (float(e_g), float(e_r))
    assert [row.name for row in rows] == LINEARS
    tc.export.save_compressed(g, tmp_path / "gpt.tcdc")
    fresh = tc.models.TinyGPT(40, d_model=64, n_layers=2, n_heads=2, context=16)
    loaded = tc.export.load_compressed(tmp_path / "gpt.tcdc", model=fresh)
    with torch.no_grad():
        assert torch.equal(loaded(x), g(x))
