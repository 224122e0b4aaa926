"""tensorcompress.train: set_seed, fit (reproducible, in place, history, callbacks, loss_fn) and evaluate."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import mlp
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import tensorcompress as tc


def _blobs(n=120, d=5, classes=3, seed=0, dtype=torch.float32):
    """Well separated Gaussian blobs: a linearly separable ``classes``-class problem."""
    g = torch.Generator().manual_seed(seed)
    centres = 6 * torch.eye(classes, d, dtype=dtype)
    y = torch.arange(n) % classes
    x = centres[y] + torch.randn(n, d, generator=g, dtype=dtype)
    return TensorDataset(x, y)


def test_set_seed_reproduces_draws():
    import random

    import numpy as np

    tc.set_seed(3)
    a = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002 -- the global state set_seed seeds
    tc.set_seed(3)
    b = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    with pytest.raises(TypeError, match=r"seed must be an int, got str \('3'\)"):
        tc.set_seed("3")


def test_fit_is_reproducible_and_seed_matters():
    data = _blobs()
    m1, m2, m3 = mlp(5, 8, 3, seed=0), mlp(5, 8, 3, seed=0), mlp(5, 8, 3, seed=0)
    h1 = tc.fit(m1, data, epochs=3, lr=1e-2, batch_size=16, seed=5, progress=False)
    h2 = tc.fit(m2, data, epochs=3, lr=1e-2, batch_size=16, seed=5, progress=False)
    tc.fit(m3, data, epochs=3, lr=1e-2, batch_size=16, seed=6, progress=False)
    assert h1 == h2
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)
    assert not all(torch.equal(p1, p3) for p1, p3 in zip(m1.parameters(), m3.parameters(), strict=True))


def test_fit_trains_in_place_and_reports_history(device, dtype):
    data, test = _blobs(dtype=dtype), _blobs(seed=1, dtype=dtype)
    model = mlp(5, 8, 3, seed=0).to(dtype)
    before = [p.detach().clone() for p in model.parameters()]
    model.eval()
    history = tc.fit(model, data, epochs=6, lr=1e-2, batch_size=16, device=device, seed=0, progress=False, test=test)
    assert not model.training  # mode restored
    assert next(model.parameters()).device.type == torch.device(device).type
    assert next(model.parameters()).dtype == dtype
    assert not any(torch.equal(b, p.cpu()) for b, p in zip(before, model.parameters(), strict=True))
    assert [r["epoch"] for r in history] == list(range(1, 7))
    assert set(history[0]) == {"epoch", "loss", "accuracy", "lr", "test_accuracy", "test_loss"}
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["test_accuracy"] == 1.0  # separable blobs
    ev = tc.evaluate(model, test)
    assert history[-1]["test_accuracy"] == ev.accuracy and history[-1]["test_loss"] == pytest.approx(ev.loss)


def test_fit_history_loss_is_the_epoch_mean_of_batch_losses():
    class Record(tc.Callback):
        def __init__(self):
            self.losses = []

        def on_batch_end(self, state):
            self.losses.append((float(state.loss.detach()), state.batch[1].shape[0]))

    rec = Record()
    h = tc.fit(mlp(5, 8, 3, seed=0), _blobs(n=50), epochs=1, lr=1e-2, batch_size=16, progress=False, callbacks=[rec])
    assert [n for _, n in rec.losses] == [16, 16, 16, 2]
    assert h[0]["loss"] == pytest.approx(sum(l * n for l, n in rec.losses) / 50)


def test_callback_order_and_stop():
    events = []

    class Spy(tc.Callback):
        def __getattribute__(self, name):
            if name.startswith("on_"):
                return lambda state: events.append((name, state.epoch, state.step))
            return super().__getattribute__(name)

    class Stop(tc.Callback):
        def on_epoch_end(self, state):
            state.stop = state.epoch == 2

    h = tc.fit(mlp(5, 8, 3, seed=0), _blobs(n=32), epochs=5, lr=1e-2, batch_size=16, progress=False,
               callbacks=[Spy(), Stop()])
    assert len(h) == 2
    names = [e[0] for e in events]
    per_batch = ["on_batch_begin", "on_loss", "on_after_backward", "on_batch_end"]
    epoch = ["on_epoch_begin", *per_batch, *per_batch, "on_epoch_end"]
    assert names == ["on_train_begin", *epoch, *epoch, "on_train_end"]
    assert events[-1] == ("on_train_end", 2, 4)


def test_gradient_mask_in_on_after_backward_freezes_weights():
    model = mlp(5, 8, 3, seed=0)
    mask = torch.rand(model[0].weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    frozen = model[0].weight.detach()[mask].clone()

    class MaskGrad(tc.Callback):
        def on_after_backward(self, state):
            state.model[0].weight.grad[mask] = 0

    tc.fit(model, _blobs(), epochs=2, lr=1e-1, optimizer="sgd", progress=False, callbacks=[MaskGrad()])
    assert torch.equal(model[0].weight.detach()[mask], frozen)
    assert not torch.equal(model[0].weight.detach()[~mask], mlp(5, 8, 3, seed=0)[0].weight.detach()[~mask])


def test_loss_fn_receives_outputs_targets_inputs():
    seen, values = [], []

    def mse_to_one_hot(outputs, targets, inputs):
        seen.append((outputs.shape, targets.shape, inputs.shape))
        loss = nn.functional.mse_loss(outputs, nn.functional.one_hot(targets, 3).to(outputs.dtype))
        values.append(float(loss.detach()))
        return loss

    h = tc.fit(mlp(5, 8, 3, seed=0), _blobs(n=32), epochs=1, lr=1e-2, batch_size=16, progress=False,
               loss_fn=mse_to_one_hot)
    assert seen == [((16, 3), (16,), (16, 5))] * 2
    assert h[0]["loss"] == pytest.approx(sum(values) / 2)  # the history reports loss_fn's values, not cross-entropy


def test_non_finite_loss_is_an_error():
    with pytest.raises(FloatingPointError, match="training loss became nan at epoch 1, step 1"):
        tc.fit(mlp(5, 8, 3, seed=0), _blobs(), epochs=1, progress=False, loss_fn=lambda o, t, x: o.sum() * math.nan)


class _Spy:
    """A duck-typed callback (no base class) that keeps the optimizer fit built."""

    def on_train_begin(self, state):
        self.optimizer = state.optimizer


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                      ("sgd", torch.optim.SGD)])
def test_each_optimizer_is_built_as_documented_and_trains(name, cls):
    spy, model = _Spy(), mlp(5, 8, 3, seed=0)
    data = _blobs(n=120)
    before = tc.evaluate(model, data)
    h = tc.fit(model, data, epochs=5, lr=1e-2, batch_size=16, optimizer=name, weight_decay=1e-4, progress=False,
               callbacks=[spy])
    assert type(spy.optimizer) is cls
    group = spy.optimizer.param_groups[0]
    assert group["lr"] == 1e-2 and group["weight_decay"] == 1e-4
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters()]
    if name == "sgd":
        assert group["momentum"] == 0.9
    assert h[-1]["loss"] < 0.5 * h[0]["loss"] and h[-1]["accuracy"] > 0.9
    after = tc.evaluate(model, data)
    assert after.loss < 0.5 * before.loss and after.accuracy > 0.9


def test_optimizer_instance_and_cosine_schedule():
    model = mlp(5, 8, 3, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    spy = _Spy()
    h = tc.fit(model, _blobs(n=16), epochs=4, optimizer=opt, scheduler="cosine", progress=False, callbacks=[spy])
    assert spy.optimizer is opt
    assert [r["lr"] for r in h] == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])


def test_fit_bad_arguments():
    data = _blobs(n=8)
    msg = "optimizer must be 'adam', 'adamw', 'sgd' or a torch.optim.Optimizer, got 'lbfgs'"
    with pytest.raises(ValueError, match=msg):
        tc.fit(mlp(5, 8, 3, seed=0), data, optimizer="lbfgs", progress=False)
    with pytest.raises(ValueError, match="lr must be a positive finite number, got -1"):
        tc.fit(mlp(5, 8, 3, seed=0), data, lr=-1, progress=False)
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        tc.fit(mlp(5, 8, 3, seed=0), data, epochs=0, progress=False)
    with pytest.raises(TypeError, match=r"callbacks\[0\] must have at least one of the methods on_train_begin, .*"
                                        r"got function"):
        tc.fit(mlp(5, 8, 3, seed=0), data, callbacks=[lambda s: None], progress=False)
    with pytest.raises(TypeError, match="train must be a torch Dataset or DataLoader, got list"):
        tc.fit(mlp(5, 8, 3, seed=0), [1, 2], progress=False)
    with pytest.raises(ValueError, match="scheduler must be None, 'cosine' or a callable"):
        tc.fit(mlp(5, 8, 3, seed=0), data, scheduler="step", progress=False)


def test_progress_bar_quiet(capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    tc.fit(mlp(5, 8, 3, seed=0), _blobs(n=8), epochs=1, progress=False)
    assert capsys.readouterr().err == ""
    tc.fit(mlp(5, 8, 3, seed=0), _blobs(n=8), epochs=1, progress=True)
    assert "fit" in capsys.readouterr().err
    monkeypatch.setenv("TQDM_DISABLE", "1")
    tc.fit(mlp(5, 8, 3, seed=0), _blobs(n=8), epochs=1, progress=True)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- evaluate


class _Fixed(nn.Module):
    """Returns the stored logits row for each input index (x holds indices)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, x):
        return self.logits[x.long().squeeze(1)]


def test_evaluate_hand_computed(device, dtype):
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 0.0]], dtype=dtype)
    data = TensorDataset(torch.arange(4.0).unsqueeze(1), torch.tensor([0, 1, 1, 1]))
    ev = tc.evaluate(_Fixed(logits), data, device=device, batch_size=3)
    # predictions 0, 1, 0, 0 (ties go to the first class): 2 of 4 correct
    assert ev.accuracy == 0.5 and ev.n == 4
    lse = torch.logsumexp(logits.double(), 1)
    expected = float((lse - logits.double()[torch.arange(4), torch.tensor([0, 1, 1, 1])]).mean())
    assert ev.loss == pytest.approx(expected, rel=1e-6)
    assert ev.to_dict() == {"accuracy": 0.5, "loss": ev.loss, "n": 4}


def test_evaluate_restores_mode_and_accepts_loaders():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.5))
    data = _blobs(n=30)
    for mode in (True, False):
        model.train(mode)
        a = tc.evaluate(model, data)
        assert model.training is mode and all(m.training is mode for m in model.modules())
    b = tc.evaluate(model, DataLoader(data, batch_size=7))  # dropout is off during evaluation: same numbers
    assert a.accuracy == b.accuracy and a.n == b.n  # the loss is summed in another order: equal up to rounding
    assert a.loss == pytest.approx(b.loss, rel=1e-6)

    class ListData(Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data[i]

    c = tc.evaluate(model, ListData())
    assert c.accuracy == a.accuracy and c.loss == pytest.approx(a.loss, rel=1e-6)


def test_evaluate_empty_data():
    with pytest.raises(ValueError, match="data must hold at least one sample"):
        tc.evaluate(nn.Linear(5, 3), TensorDataset(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)))


def test_evaluate_tuple_and_dict_outputs_use_the_logits():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    data = _blobs(n=30)

    class Pair(nn.Module):
        def forward(self, x):
            return lin(x), x.abs()

    class Named(nn.Module):
        def forward(self, x):
            return {"features": x.abs(), "logits": lin(x)}

    plain = tc.evaluate(lin, data)
    assert tc.evaluate(Pair(), data) == plain == tc.evaluate(Named(), data)

    class Bad(nn.Module):
        def forward(self, x):
            return {"scores": lin(x)}

    with pytest.raises(TypeError, match="the model must return logits: .* got dict"):
        tc.evaluate(Bad(), data)


# ---------------------------------------------------------------- hostile input (issue 8, defect 2.5)


def test_fit_on_an_empty_data_set_is_a_clear_error():
    empty = TensorDataset(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="train must hold at least one sample, got an empty data set"):
        tc.fit(mlp(5, 8, 3, seed=0), empty, progress=False)
    with pytest.raises(ValueError, match="train must hold at least one sample, got an empty data set"):
        tc.fit(mlp(5, 8, 3, seed=0), DataLoader(empty, batch_size=4), progress=False)
    with pytest.raises(ValueError, match="test must hold at least one sample"):
        tc.fit(mlp(5, 8, 3, seed=0), _blobs(n=8), test=empty, progress=False)


def test_evaluate_refuses_nan_inputs_and_nan_logits():
    data = _blobs(n=30)
    x, y = data.tensors
    x = x.clone()
    x[[3, 17], 1] = math.nan
    x[20, 0] = math.inf
    with pytest.raises(ValueError, match="data holds NaN or Inf inputs in 3 of its 30 samples"):
        tc.evaluate(mlp(5, 8, 3, seed=0), TensorDataset(x, y))
    with pytest.raises(ValueError, match="data holds NaN or Inf inputs in 3 of its 30 samples"):
        tc.evaluate(mlp(5, 8, 3, seed=0), DataLoader(TensorDataset(x, y), batch_size=7))
    broken = mlp(5, 8, 3, seed=0)
    with torch.no_grad():
        broken[2].bias[0] = math.nan
    with pytest.raises(ValueError, match="the model returned NaN or Inf logits for 30 of 30 samples"):
        tc.evaluate(broken, data)


def test_fit_names_non_finite_inputs_as_the_cause():
    x, y = _blobs(n=32).tensors
    x = x.clone()
    x[0, 0] = math.nan
    data = TensorDataset(x, y)
    with pytest.raises(FloatingPointError, match=r"training loss became nan at epoch 1, step \d: 1 of the 16 inputs "
                                                 "of this batch hold NaN or Inf"):
        tc.fit(mlp(5, 8, 3, seed=0), data, epochs=1, batch_size=16, progress=False)


# ---------------------------------------------------------------- global state is scoped


def _global_state():
    import os

    return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


def test_fit_leaves_global_state_as_it_was(monkeypatch):
    import random

    import numpy as np

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    try:
        before = _global_state()
        model, data = mlp(5, 8, 3, seed=0), _blobs(n=16)
        torch.manual_seed(123)
        random.seed(123)
        np.random.seed(123)  # noqa: NPY002 -- the legacy global state fit must not change
        tc.fit(model, data, epochs=1, seed=0, progress=False)
        assert _global_state() == before == (False, False, False, False, None)
        draws = (torch.rand(3), random.random(), np.random.rand())  # noqa: NPY002
        torch.manual_seed(123)
        random.seed(123)
        np.random.seed(123)  # noqa: NPY002
        assert torch.equal(draws[0], torch.rand(3)) and draws[1:] == (random.random(), np.random.rand())  # noqa: NPY002
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def test_set_seed_alone_is_process_wide_and_as_context_manager_is_scoped(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    try:
        torch.manual_seed(7)
        expected = torch.rand(2)
        torch.manual_seed(7)
        with tc.set_seed(0) as scope:
            assert isinstance(scope, tc.train.SeedScope)
            assert _global_state()[:3] == (True, True, True)
            inside = torch.rand(2)
        assert _global_state() == (False, False, False, False, None)
        assert torch.equal(torch.rand(2), expected)  # the draws after the block continue from before it
        tc.set_seed(0)
        assert torch.equal(torch.rand(2), inside) and _global_state()[:3] == (True, True, True)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    with pytest.raises(TypeError, match=r"deterministic must be a bool, got str \('yes'\)"):
        tc.set_seed(0, deterministic="yes")


def test_fit_restores_the_mode_of_every_submodule():
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.1), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    model[1].eval()  # a mixed state, e.g. frozen dropout
    tc.fit(model, _blobs(n=16), epochs=1, progress=False, test=_blobs(n=8, seed=1))
    assert [m.training for m in model] == [True, False, True, True] and model.training


def test_evaluate_leaves_the_model_on_its_device(device):
    model = mlp(5, 8, 3, seed=0).to(device)
    for where in {torch.device("cpu"), torch.device(device)}:
        ev = tc.evaluate(model, _blobs(n=16), device=where)
        assert ev.n == 16
        assert {p.device.type for p in model.parameters()} == {torch.device(device).type}


def test_on_device_moves_there_and_back():
    from tensorcompress.train.loop import _on_device

    moves = []

    class Probe(nn.Linear):
        def _apply(self, fn, recurse=True):  # record where .to() would put the tensors, keep them here
            moves.append(fn(torch.zeros(())).device.type)
            return self

    probe = Probe(2, 2)
    with _on_device(probe, torch.device("meta")):
        assert moves == ["meta"]
    assert moves == ["meta", "cpu"]
    with _on_device(probe, torch.device("cpu")):  # already there: no move
        pass
    assert moves == ["meta", "cpu"]


# ---------------------------------------------------------------- what the next techniques need


def test_on_loss_extends_the_loss_before_backward():
    """An L2 penalty added in on_loss trains exactly as the same penalty inside loss_fn."""

    def penalty(model):
        return 1e-2 * sum(p.square().sum() for p in model.parameters())

    class L2:
        def on_loss(self, state):
            state.loss = state.loss + penalty(state.model)

    a, b, c = mlp(5, 8, 3, seed=0), mlp(5, 8, 3, seed=0), mlp(5, 8, 3, seed=0)
    ha = tc.fit(a, _blobs(), epochs=2, lr=1e-2, progress=False, callbacks=[L2()])
    hb = tc.fit(b, _blobs(), epochs=2, lr=1e-2, progress=False,
                loss_fn=lambda o, t, x: nn.functional.cross_entropy(o, t) + penalty(b))
    tc.fit(c, _blobs(), epochs=2, lr=1e-2, progress=False)
    assert ha == hb
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert penalty(a) < penalty(c)  # the penalty acted

    class Replace:
        def on_loss(self, state):
            state.loss = state.outputs.sum() * 0  # no gradient signal at all

    frozen = mlp(5, 8, 3, seed=0)
    tc.fit(frozen, _blobs(), epochs=1, lr=1e-2, optimizer="sgd", progress=False, callbacks=[Replace()])
    assert all(torch.equal(p, q) for p, q in zip(frozen.parameters(), mlp(5, 8, 3, seed=0).parameters(), strict=True))

    class NotScalar:
        def on_loss(self, state):
            state.loss = state.outputs

    with pytest.raises(TypeError, match=r"the loss must be a scalar tensor .* got Tensor\(16, 3\)"):
        tc.fit(mlp(5, 8, 3, seed=0), _blobs(), batch_size=16, progress=False, callbacks=[NotScalar()])


class _Learnable:
    """Adds a learnable output scale in on_train_begin, as LSQ adds a step size."""

    def on_train_begin(self, state):
        state.model.scale = nn.Parameter(torch.tensor(0.1))
        state.model.register_forward_hook(lambda m, inp, out: out * m.scale)


@pytest.mark.parametrize("optimizer", ["adam", "sgd-instance"])
def test_parameters_added_in_on_train_begin_are_trained(optimizer):
    model = mlp(5, 8, 3, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05) if optimizer == "sgd-instance" else optimizer
    spy = _Spy()
    tc.fit(model, _blobs(), epochs=2, lr=1e-2, optimizer=opt, progress=False, callbacks=[_Learnable(), spy])
    assert any(p is model.scale for g in spy.optimizer.param_groups for p in g["params"])
    assert model.scale.item() != pytest.approx(0.1, abs=1e-3)  # stepped (a parameter outside the optimizer is not)


def test_a_callback_may_give_its_parameter_its_own_group():
    class OwnGroup(_Learnable):
        def on_train_begin(self, state):
            super().on_train_begin(state)
            state.optimizer.add_param_group({"params": [state.model.scale], "lr": 0.0})

    spy, model = _Spy(), mlp(5, 8, 3, seed=0)
    tc.fit(model, _blobs(), epochs=2, lr=1e-2, progress=False, callbacks=[OwnGroup(), spy])
    assert len(spy.optimizer.param_groups) == 2  # not added twice
    assert model.scale.item() == pytest.approx(0.1)  # lr 0 in its own group


def test_models_returning_logits_and_features():
    seen = []

    class WithFeatures(nn.Module):
        def __init__(self, as_dict):
            super().__init__()
            self.body, self.head, self.as_dict = nn.Sequential(nn.Linear(5, 8), nn.ReLU()), nn.Linear(8, 3), as_dict

        def forward(self, x):
            h = self.body(x)
            return {"logits": self.head(h), "hidden": h} if self.as_dict else (self.head(h), h)

    class SeeFeatures:
        def on_loss(self, state):
            h = state.features["hidden"] if isinstance(state.features, dict) else state.features
            seen.append((tuple(state.outputs.shape), tuple(h.shape)))
            state.loss = state.loss + 0.0 * h.square().mean()  # a feature regulariser, here of weight 0

    plain = mlp(5, 8, 3, seed=0)
    h_plain = tc.fit(plain, _blobs(n=32), epochs=2, lr=1e-2, batch_size=16, progress=False, test=_blobs(n=30, seed=1))
    for as_dict in (False, True):
        m = WithFeatures(as_dict)
        m.body[0], m.head = mlp(5, 8, 3, seed=0)[0], mlp(5, 8, 3, seed=0)[2]  # the plain model's initial weights
        seen.clear()
        h = tc.fit(m, _blobs(n=32), epochs=2, lr=1e-2, batch_size=16, progress=False, callbacks=[SeeFeatures()],
                   test=_blobs(n=30, seed=1))
        assert seen == [((16, 3), (16, 8))] * 4
        # loss and accuracy from the logits alone: the same training as the plain model
        assert h == h_plain and torch.equal(m.head.weight, plain[2].weight)
        assert h[-1]["test_accuracy"] == tc.evaluate(m, _blobs(n=30, seed=1)).accuracy


def test_duck_typed_callbacks_and_misspelt_hooks():
    class OnlyEpochEnd:  # no base class, one hook
        def __init__(self):
            self.epochs = []

        def on_epoch_end(self, state):
            self.epochs.append((state.epoch, state.rank, state.world_size, state.is_main))

    cb = OnlyEpochEnd()
    tc.fit(mlp(5, 8, 3, seed=0), _blobs(n=16), epochs=2, progress=False, callbacks=[cb])
    assert cb.epochs == [(1, 0, 1, True), (2, 0, 1, True)]

    class Typo:
        def on_epoch_ended(self, state): ...

    with pytest.raises(TypeError, match=r"callbacks\[0\] \(Typo\) has method\(s\) \['on_epoch_ended'\] that fit never "
                                        "calls"):
        tc.fit(mlp(5, 8, 3, seed=0), _blobs(n=16), progress=False, callbacks=[Typo()])


def test_any_dataset_trains_exactly_as_its_tensor_dataset():
    data = _blobs(n=50)

    class Wrapped(Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data[i]

    a, b = mlp(5, 8, 3, seed=0), mlp(5, 8, 3, seed=0)
    ha = tc.fit(a, data, epochs=2, lr=1e-2, batch_size=16, seed=3, progress=False)
    hb = tc.fit(b, Wrapped(), epochs=2, lr=1e-2, batch_size=16, seed=3, progress=False)
    assert ha == hb and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_checkpoint_holds_the_trained_state(tmp_path):
    model = mlp(5, 8, 3, seed=0)
    tc.fit(model, _blobs(n=16), epochs=1, progress=False, checkpoint=tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_regression_outputs_have_no_accuracy():
    x = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    data = TensorDataset(x, x[:, :3] * 2)  # float targets: a regression
    h = tc.fit(mlp(5, 8, 3, seed=0), data, epochs=2, lr=1e-2, progress=False,
               loss_fn=lambda o, t, x: nn.functional.mse_loss(o, t))
    assert set(h[0]) == {"epoch", "loss", "lr"} and h[1]["loss"] < h[0]["loss"]


def test_model_dtype_is_the_first_floating_parameter_dtype_or_the_default():
    """The dtype evaluate casts inputs to (and the leaderboard measures in): the first parameter's when floating."""
    from tensorcompress.surgery import dtype_of as model_dtype

    assert model_dtype(torch.nn.Linear(2, 3).half()) == torch.float16
    assert model_dtype(torch.nn.Linear(2, 3).double()) == torch.float64
    assert model_dtype(torch.nn.ReLU()) == torch.get_default_dtype()  # no parameters
    frozen_int = torch.nn.Module()
    frozen_int.w = torch.nn.Parameter(torch.ones(2, dtype=torch.int64), requires_grad=False)
    assert model_dtype(frozen_int) == torch.get_default_dtype()


# ---------------------------------------------------------------- token inputs, per-token logits


class _Bigram(nn.Module):
    """A language model on integer tokens ``(B, T)`` → logits ``(B, T, V)``: a table lookup; records the inputs."""

    def __init__(self, vocab=5, dtype=torch.float32):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab, dtype=dtype)
        self.seen = []

    def forward(self, tokens):
        self.seen.append(tokens.dtype)
        return self.table(tokens)


def _token_data(n=12, t=6, vocab=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, t + 1), generator=g)
    return TensorDataset(x[:, :-1], x[:, 1:])


def test_evaluate_scores_token_logits_per_token(device, dtype):
    torch.manual_seed(0)
    model, data = _Bigram(dtype=dtype), _token_data()
    ev = tc.evaluate(model, data, device=device, batch_size=5)
    assert set(model.seen) == {torch.int64}  # tokens are not cast to the model's dtype
    x, y = data.tensors
    logits = model.table.weight.detach().cpu().double()[x]  # (12, 6, 5), by hand
    nll = torch.logsumexp(logits, -1) - logits.gather(-1, y[..., None])[..., 0]
    assert ev.n == 72 and ev.loss == pytest.approx(float(nll.mean()), rel=1e-6)
    assert ev.accuracy == float((logits.argmax(-1) == y).double().mean())
    flat = nn.functional.cross_entropy(logits.reshape(-1, 5), y.reshape(-1))  # the flattened cross-entropy
    assert ev.loss == pytest.approx(float(flat), rel=1e-6)


def test_fit_trains_on_tokens_with_per_token_loss_and_accuracy(dtype):
    class Record(tc.Callback):
        def __init__(self):
            self.batches = []

        def on_batch_begin(self, state):  # the weights the step's loss is computed with
            self.batches.append((state.batch, state.model.table.weight.detach().clone()))

    torch.manual_seed(0)
    model, data, rec = _Bigram(dtype=dtype), _token_data(n=10), Record()
    h = tc.fit(model, data, epochs=2, lr=0.1, batch_size=4, progress=False, callbacks=[rec])
    assert set(model.seen) == {torch.int64}
    assert set(h[0]) == {"epoch", "loss", "accuracy", "lr"}
    first = rec.batches[:3]  # epoch 1: batches of 4, 4, 2 windows of 6 tokens
    assert [b[0][0].shape for b in first] == [(4, 6), (4, 6), (2, 6)]
    losses, correct = [], 0
    for (x, y), w in first:
        logits = w.double()[x]
        losses.append(nn.functional.cross_entropy(logits.reshape(-1, 5), y.reshape(-1), reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
    assert h[0]["loss"] == pytest.approx(float(sum(losses)) / 60, rel=1e-5)
    assert h[0]["accuracy"] == correct / 60
    assert h[1]["loss"] < h[0]["loss"]


# ---------------------------------------------------------------- images in channels-last memory order


@pytest.mark.parametrize("make", [tc.models.LeNet5, tc.models.SmallCNN, lambda: tc.models.LeNet5(in_channels=3)])
def test_images_enter_channels_last_with_nchw_logits(make):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(5, model.in_channels, 28, 28)
    moved = tc.train.channels_last_images(x)
    assert torch.equal(moved, x) and moved.shape == x.shape
    assert moved.is_contiguous(memory_format=torch.channels_last) and moved.stride()[1] == 1
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first(moved).is_contiguous(memory_format=torch.channels_last)  # and not NCHW: the layout is in effect
    assert not first(moved).is_contiguous()
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(model(moved), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_flatten_after_channels_last_reads_nchw_order():
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 6, 6)
    moved = tc.train.channels_last_images(x)
    with torch.no_grad():
        torch.testing.assert_close(conv(moved).flatten(1), conv(x).flatten(1), rtol=1e-6, atol=1e-6)
    # token ids, integer codes, vectors and sequences are passed as they are
    for t in (torch.randint(0, 9, (2, 3, 4, 5)), torch.randn(2, 5), torch.randn(2, 3, 5)):
        assert tc.train.channels_last_images(t) is t
