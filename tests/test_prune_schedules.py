"""Schedules: AGP's values are Zhu & Gupta's formula; callbacks move the masks the model owns during tc.fit;
sensitivity scan and lottery tickets with rewinding."""

import copy

import pytest
import torch
from helpers import mlp
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

import tensorcompress as tc
from tensorcompress import pruning


@given(final=st.floats(0, 1), initial=st.floats(0, 0.5), start=st.integers(0, 20), n=st.integers(1, 10),
       freq=st.integers(1, 5), t=st.integers(0, 120))
def test_agp_values_are_the_cubic_formula(final, initial, start, n, freq, t):
    s = pruning.agp_sparsity(t, final=final, initial=initial, start=start, n_steps=n, frequency=freq)
    if t < start:
        assert s == initial
    elif t >= start + n * freq:
        assert s == pytest.approx(final, abs=1e-15)
    else:
        t_update = start + (t - start) // freq * freq  # the last update step at or before t
        assert s == pytest.approx(final + (initial - final) * (1 - (t_update - start) / (n * freq)) ** 3,
                                  abs=1e-15)


def test_agp_known_values():
    # s_f = 0.9, s_i = 0, n = 4: 0.9 * (1 - (1 - k/4)^3) = 0, 0.5203125, 0.7875, 0.8859375, 0.9
    got = [pruning.agp_sparsity(k, final=0.9, n_steps=4) for k in range(6)]
    assert got == pytest.approx([0.0, 0.5203125, 0.7875, 0.8859375, 0.9, 0.9], abs=1e-15)
    with pytest.raises(ValueError, match=r"final must be a fraction in \[0, 1\], got 1.5"):
        pruning.agp_sparsity(0, final=1.5)
    with pytest.raises(ValueError, match="n_steps must be >= 1, got 0"):
        pruning.agp_sparsity(0, final=0.5, n_steps=0)


def _data(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].sum(1) > 0).long()
    return TensorDataset(x, y)


def test_agp_callback_moves_the_models_masks():
    net, data = mlp(16, 32, 2, seed=0), _data()
    agp = pruning.AGP(0.8, n_steps=4, frequency=3, start=2)
    tc.fit(net, data, epochs=2, batch_size=40, progress=False, callbacks=[agp])  # 12 steps
    steps = [t for t, _ in agp.log]
    assert steps == [0, 5, 8, 11]  # updates at t0 + k·Δt = 2, 5, 8, 11; t = 2 keeps s_i = 0
    for t, s in agp.log:
        assert s == pytest.approx(pruning.agp_sparsity(t, final=0.8, start=2, n_steps=4, frequency=3))
    for layer in (net[0], net[2]):
        assert hasattr(layer, "weight_mask")  # the model owns the mask
        assert float((layer.weight_mask == 0).float().mean()) == pytest.approx(agp.current, abs=0.02)
    assert {"0.weight_orig", "0.weight_mask"} <= set(net.state_dict())


def test_one_shot_and_iterative():
    net, data = mlp(16, 32, 2, seed=0), _data()
    shot = pruning.one_shot(0.5, scope="global")
    tc.fit(net, data, epochs=2, batch_size=60, progress=False, callbacks=[shot])
    assert shot.log == [(0, 0.5)]
    zeros = sum(int((m.weight == 0).sum()) for m in (net[0], net[2]))
    assert zeros == round(0.5 * (16 * 32 + 32 * 2))
    net = mlp(16, 32, 2, seed=0)
    it = pruning.iterative([0.3, 0.6, 0.8], epochs_per_step=1)
    tc.fit(net, data, epochs=4, batch_size=60, progress=False, callbacks=[it])
    assert it.log == [(0, 0.3), (1, 0.6), (2, 0.8)]
    assert float((net[0].weight == 0).float().mean()) == pytest.approx(0.8, abs=1e-3)
    with pytest.raises(ValueError, match="non-decreasing"):
        pruning.iterative([0.5, 0.3])


def test_sensitivity_scan():
    net, data = mlp(16, 32, 2, seed=0), _data()
    tc.fit(net, data, epochs=5, batch_size=40, progress=False)
    scan = pruning.sensitivity_scan(net, data, amounts=[0.0, 0.5, 1.0])
    assert list(scan) == ["0", "2"]
    dense = tc.evaluate(net, data).accuracy
    assert all(acc[0] == dense for acc in scan.values())
    assert scan["2"][2] == tc.evaluate(pruning.prune(net, amount=1.0, include="2")[0], data).accuracy
    assert not hasattr(net[0], "weight_mask")  # untouched


def test_lottery_ticket_rewinds_the_kept_weights():
    net, data = mlp(16, 32, 2, seed=0), _data()
    init = {k: v.clone() for k, v in net.state_dict().items()}
    ticket, history = pruning.lottery_ticket(net, data, rounds=2, amount=0.5, epochs=1, batch_size=60)
    assert [h["sparsity"] for h in history] == [0.5, 0.75]
    for name in ("0", "2"):
        layer = ticket.get_submodule(name)
        mask = layer.weight_mask.bool()
        assert float((~mask).float().mean()) == pytest.approx(0.75, abs=0.01)
        assert torch.equal(layer.weight[mask], init[f"{name}.weight"][mask])  # rewound to initialisation
        assert torch.all(layer.weight[~mask] == 0)
    assert torch.equal(net[0].weight, init["0.weight"])  # input untouched
    late, _ = pruning.lottery_ticket(net, data, rounds=1, amount=0.5, epochs=1, rewind_epochs=1, batch_size=60)
    assert not torch.equal(late[0].weight_orig, init["0.weight"])  # rewound to epoch 1, not to initialisation
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        pruning.lottery_ticket(net, data, rounds=0)
    with pytest.raises(ValueError, match="lottery_ticket: nothing to act on"):  # refused before any training
        pruning.lottery_ticket(net, data, rounds=1, exclude="*")


def test_lottery_ticket_records_validation_accuracy():
    net, data = mlp(16, 32, 2, seed=0), _data()
    ticket, history = pruning.lottery_ticket(net, data, rounds=2, amount=0.5, epochs=2, batch_size=60, val=data)
    dense = copy.deepcopy(net)
    tc.fit(dense, data, epochs=2, batch_size=60, progress=False)  # round 1 trains the dense network, same seed
    assert history[0]["val_accuracy"] == tc.evaluate(dense, data).accuracy
    assert all(0 <= h["val_accuracy"] <= 1 for h in history)


def test_random_reinit_draws_the_initialisers_values_under_the_same_masks(dtype, device):
    net = mlp(16, 32, 2, seed=0).to(device=device, dtype=dtype)
    ticket, _ = pruning.prune(net, amount=0.7, scope="global")
    state = copy.deepcopy(ticket.state_dict())
    control, report = pruning.random_reinit(ticket, seed=5)
    assert all(torch.equal(state[k], v) for k, v in ticket.state_dict().items())  # input untouched
    with tc.set_seed(5):  # the same initialisers in the same order: a freshly built network's weights
        kw = {"device": device, "dtype": dtype}  # drawn in the layer's own dtype and on its device
        fresh = nn.Sequential(nn.Linear(16, 32, **kw), nn.ReLU(), nn.Linear(32, 2, **kw))
    for name in ("0", "2"):
        old, new = ticket.get_submodule(name), control.get_submodule(name)
        assert torch.equal(new.weight_mask, old.weight_mask)
        assert new.weight_orig.dtype == dtype and new.weight_orig.device.type == torch.device(device).type
        torch.testing.assert_close(new.weight_orig, fresh.get_submodule(name).weight, rtol=0, atol=0)
        torch.testing.assert_close(new.bias, fresh.get_submodule(name).bias, rtol=0, atol=0)
        assert torch.equal(new.weight, new.weight_orig * new.weight_mask)  # effective now, before any forward
        kept = old.weight_mask.bool()
        assert not torch.equal(new.weight[kept], old.weight[kept])
    assert [r.name for r in report] == ["0", "2"]
    assert report[0].detail["sparsity"] == pytest.approx(float((ticket[0].weight_mask == 0).float().mean()),
                                                         abs=1e-4)
    again, _ = pruning.random_reinit(ticket, seed=5)
    other, _ = pruning.random_reinit(ticket, seed=6)
    assert torch.equal(again[0].weight_orig, control[0].weight_orig)
    assert not torch.equal(other[0].weight_orig, control[0].weight_orig)


def test_random_reinit_keeps_filter_masks_and_restarts_batchnorm():
    torch.manual_seed(0)
    model = tc.models.SmallCNN(input_size=8)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(0.3)
    masked, _ = pruning.prune(model, amount=0.5, structure="filters", include="features.0.0")
    control, report = pruning.random_reinit(masked, seed=1, include="features.0.*")
    bn = control.features[0][1]
    assert torch.equal(bn.weight_mask, masked.features[0][1].weight_mask)
    assert torch.all(bn.weight[bn.weight_mask == 0] == 0) and torch.all(bn.bias[bn.bias_mask == 0] == 0)
    assert torch.all(bn.running_mean == 0)  # statistics restart with the weights
    assert torch.all(control.features[1][1].running_mean == 0.3)  # not selected: untouched
    assert [r.name for r in report] == ["features.0.0", "features.0.1", "features.0.3", "features.0.4"]
    x = torch.randn(2, 1, 8, 8)
    pruned = masked.features[0][0].weight_mask.flatten(1).amax(1) == 0
    assert torch.all(control.features[0][:2].eval()(x)[:, pruned] == 0)  # the pruned filters still output zero


def test_random_reinit_bad_input():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        pruning.random_reinit("net")
    with pytest.raises(TypeError, match="seed must be an int"):
        pruning.random_reinit(mlp(16, 32, 2, seed=0), seed=1.5)
    with pytest.raises(ValueError, match="random_reinit: nothing to act on, the model has no module"):
        pruning.random_reinit(nn.Sequential(nn.ReLU()))
