"""Teacher–student training (Distiller, distill): the teacher is untouched and runs once per batch, the loss is the
documented sum, regressors are trained apart from the student, a real distillation on scikit-learn digits learns."""

from __future__ import annotations

import copy
import re

import helpers
import pytest
import torch
from helpers import assert_model_unchanged, model_state, random_classification
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tensorcompress as tc

D = tc.distillation


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")


def data(n=50, d=4, k=5, seed=0, dtype=torch.float32):
    return random_classification(n, d, k, seed, dtype)


def images(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64),
                         torch.randint(0, 10, (n,), generator=g))


def mlp(seed, d=4, hidden=8, k=5, dropout=0.0, dtype=torch.float32):
    return helpers.mlp(d, hidden, k, seed=seed, dropout=dropout, dtype=dtype)


class Spy(nn.Module):
    """A teacher that records, for each forward pass, whether it was in train mode and whether grad was enabled."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.net(x)


# ---------------------------------------------------------------- the teacher


def test_teacher_is_frozen_in_eval_mode_called_once_per_batch_and_left_unchanged(device, dtype):
    teacher = Spy(mlp(0, dropout=0.5, dtype=dtype))
    teacher.train()
    teacher.net[3].eval()  # mixed modes must come back as they were
    before = model_state(teacher)
    student = mlp(1, dtype=dtype)
    history = D.distill(student, teacher, data(dtype=dtype), epochs=2, batch_size=16, device=device)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    assert teacher.calls == [(False, False)] * 8  # 2 epochs × 4 batches of 50 samples, eval mode, no grad
    assert_model_unchanged(teacher, before)
    assert next(teacher.parameters()).device.type == "cpu"  # moved back after training on `device`
    assert all(not m._forward_hooks for m in student.modules())


def test_with_hints_the_teacher_runs_once_more_to_size_the_regressors():
    teacher, student = Spy(mlp(0, hidden=8)), mlp(1, hidden=3)
    before = model_state(teacher)
    loader = DataLoader(data(), batch_size=10, shuffle=False)  # a DataLoader: the example batch comes from it
    D.distill(student, teacher, loader, epochs=2, hints={"1": "net.1"}, attention=None)
    assert teacher.calls == [(False, False)] * (1 + 2 * 5)
    assert_model_unchanged(teacher, before)


def test_models_returning_features_too():
    class WithFeatures(nn.Module):
        def __init__(self, seed, hidden):
            super().__init__()
            self.net = mlp(seed, hidden=hidden)

        def forward(self, x):
            return self.net(x), {"input": x}

    teacher, student = WithFeatures(0, 8), WithFeatures(1, 3)
    d = D.Distiller(teacher, T=2.0, alpha=0.5)
    check = Recompute(d, teacher, {}, {}, 0.0, 0.0)
    with d:
        tc.fit(student, data(), epochs=1, batch_size=25, callbacks=[d, check])
    assert check.checked == 2


def test_teacher_of_another_dtype():
    teacher, student = mlp(0, dtype=torch.float32), mlp(1, dtype=torch.float64)
    before = model_state(teacher)
    D.distill(student, teacher, data(dtype=torch.float64), epochs=1, batch_size=25)
    assert_model_unchanged(teacher, before)
    assert next(student.parameters()).dtype == torch.float64


def test_teacher_restored_when_training_fails():
    teacher = mlp(0)
    teacher.train()
    before = model_state(teacher)

    class Boom:
        def on_batch_end(self, state):
            raise RuntimeError("boom")

    student = mlp(1)
    with pytest.raises(RuntimeError, match="boom"):
        D.distill(student, teacher, data(), epochs=1, callbacks=[Boom()])
    assert_model_unchanged(teacher, before)
    assert all(not m._forward_hooks for m in student.modules())


# ---------------------------------------------------------------- the loss


class Recompute:
    """After the distiller's on_loss: the loss recomputed from scratch with the library's pieces."""

    def __init__(self, distiller: D.Distiller, teacher: nn.Module, hints, attention, hint_weight, beta):
        self.d, self.teacher = distiller, teacher
        self.hints, self.attention, self.hint_weight, self.beta = hints, attention, hint_weight, beta
        self.checked = 0

    def on_train_begin(self, state):
        self.s_hooks = D.FeatureHooks(state.model, [*self.hints, *self.attention]).attach()
        self.t_hooks = D.FeatureHooks(self.teacher, [*self.hints.values(), *self.attention.values()]).attach()

    def on_loss(self, state):
        x, y = state.batch
        assert not self.teacher.training
        with torch.no_grad():
            v = self.teacher(x)
        v = v[0] if isinstance(v, tuple) else v
        ref = tc.distillation.kd_loss(state.outputs, v, y, T=self.d.T, alpha=self.d.alpha)
        for k, (s, t) in enumerate(self.hints.items()):
            ref = ref + self.hint_weight * D.hint_loss(self.s_hooks[s], self.t_hooks[t], self.d.regressors[str(k)])
        for s, t in self.attention.items():
            ref = ref + D.attention_transfer_loss(self.s_hooks[s], self.t_hooks[t], beta=self.beta)
        torch.testing.assert_close(state.loss, ref, rtol=1e-12, atol=0)
        self.checked += 1

    def on_train_end(self, state):
        self.s_hooks.remove()
        self.t_hooks.remove()


@pytest.mark.parametrize("hints, attention", [
    ({}, {}),
    ({"features.0": "features.0"}, {}),
    ({}, {"features.1": "features.1"}),
    ({"features.0.2": "features.0.5", "features.1": "features.1"}, {"features.0": "features.0"}),
])
def test_loss_is_kd_plus_weighted_hint_and_attention_terms(hints, attention):
    torch.manual_seed(0)
    teacher = tc.models.SmallCNN(input_size=8, channels=(6, 10)).double()
    student = tc.models.SmallCNN(input_size=8, channels=(3, 4)).double()
    train = images()
    distiller = D.Distiller(teacher, T=3.0, alpha=0.7, hints=hints, hint_weight=0.3, attention=attention, beta=2.0,
                            example_input=train.tensors[0][:2])
    check = Recompute(distiller, teacher, hints, attention, 0.3, 2.0)
    with distiller:
        tc.fit(student, train, epochs=1, batch_size=8, callbacks=[distiller, check])
    assert check.checked == 3


def test_regressors_are_trained_apart_from_the_student():
    torch.manual_seed(0)
    teacher = tc.models.SmallCNN(input_size=8, channels=(6, 10)).double()
    student = tc.models.SmallCNN(input_size=8, channels=(3, 4)).double()
    keys = set(student.state_dict())
    train = images()
    distiller = D.Distiller(teacher, hints={"features.0": "features.0", "features.1": "features.1"},
                            example_input=train.tensors[0][:2])
    seen = {}

    class Watch:
        def on_train_begin(self, state):
            seen["groups"] = [list(g["params"]) for g in state.optimizer.param_groups]
            seen["start"] = {k: v.detach().clone() for k, v in distiller.regressors.state_dict().items()}

    with distiller:
        tc.fit(student, train, epochs=2, batch_size=8, optimizer="sgd", lr=0.05, callbacks=[distiller, Watch()])
    regs = list(distiller.regressors.parameters())
    assert [tuple(r.weight.shape) for r in distiller.regressors.values()] == [(6, 3, 1, 1), (10, 4, 1, 1)]
    assert len(seen["groups"]) == 2 and {id(p) for p in seen["groups"][1]} == {id(p) for p in regs}
    end = distiller.regressors.state_dict()
    assert all(not torch.equal(end[k], v) for k, v in seen["start"].items())  # they learnt
    assert set(student.state_dict()) == keys  # the student has no new submodule


def test_regressors_join_a_given_optimizer_instance():
    teacher, student = mlp(0, hidden=8), mlp(1, hidden=3)
    opt = torch.optim.SGD(student.parameters(), lr=0.01)
    d = D.distill(student, teacher, data(), epochs=1, hints={"1": "1"}, optimizer=opt)
    assert len(d) == 1
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 0.01
    assert [tuple(p.shape) for p in opt.param_groups[1]["params"]] == [(8, 3), (8,)]


def test_an_ensemble_as_teacher():
    members = [mlp(s) for s in (0, 1, 2)]
    befores = [model_state(m) for m in members]
    ens = D.Ensemble(members, mode="mean_probs")
    student = mlp(3, hidden=4)
    d = D.Distiller(ens, T=2.0, alpha=0.5)
    check = Recompute(d, ens, {}, {}, 0.0, 0.0)
    with d:
        tc.fit(student, data(), epochs=1, batch_size=25, callbacks=[d, check])
    assert check.checked == 2
    for m, b in zip(members, befores, strict=True):
        assert_model_unchanged(m, b)


def test_temperature_and_alpha_can_be_annealed_by_a_callback():
    teacher, student = mlp(0), mlp(1)
    d = D.Distiller(teacher, T=8.0, alpha=0.9)
    seen = []

    class Anneal:
        def on_epoch_begin(self, state):
            d.T, d.alpha = 8.0 / state.epoch, 0.9 - 0.2 * state.epoch

    check = Recompute(d, teacher, {}, {}, 0.0, 0.0)

    class Record:
        def on_loss(self, state):
            seen.append((d.T, d.alpha))

    with d:
        tc.fit(student, data(), epochs=2, batch_size=25, callbacks=[Anneal(), d, check, Record()])
    assert check.checked == 4 and seen == [(8.0, 0.7)] * 2 + [(4.0, 0.5)] * 2
    with pytest.raises(ValueError, match="T \\(the temperature\\) must be > 0"):
        d.T = 0.0
    with pytest.raises(ValueError, match="alpha"):
        d.alpha = -0.5


# ---------------------------------------------------------------- errors


def test_distill_errors():
    teacher, student = mlp(0), mlp(1)
    with pytest.raises(ValueError, match="T \\(the temperature\\) must be > 0, got 0.0"):
        D.distill(student, teacher, data(), T=0.0)
    with pytest.raises(ValueError, match="alpha.*\\[0, 1\\], got 2.0"):
        D.distill(student, teacher, data(), alpha=2.0)
    with pytest.raises(TypeError, match="loss_fn"):
        D.distill(student, teacher, data(), loss_fn=lambda z, y, x: z.sum())
    with pytest.raises(ValueError, match="teacher layers.*no layer named 'fc'"):
        D.distill(student, teacher, data(), attention={"0": "fc"})
    with pytest.raises(ValueError, match="hint_weight"):
        D.distill(student, teacher, data(), hints={"0": "0"}, hint_weight=-1.0)
    with pytest.raises(TypeError, match="hints must hold"):
        D.distill(student, teacher, data(), hints=[("0",)])
    with pytest.raises(ValueError, match="hints need example_input"):
        D.Distiller(teacher, hints={"0": "0"})
    with pytest.raises(TypeError, match="teacher must be"):
        D.Distiller("teacher")


def test_errors_found_when_training_starts_leave_the_teacher_as_it_was():
    teacher = mlp(0)
    teacher.train()
    before = model_state(teacher)
    with pytest.raises(ValueError, match="student layers.*no layer named 'conv1'"):
        D.distill(mlp(1), teacher, data(), hints={"conv1": "0"})
    assert_model_unchanged(teacher, before)
    with pytest.raises(ValueError, match="must not be the model being trained"):
        D.distill(teacher, teacher, data())
    with pytest.raises(ValueError, match="teacher's logits have shape \\(16, 7\\) but the student's \\(16, 5\\)"):
        D.distill(mlp(3), mlp(4, k=7), data(), batch_size=16)
    assert_model_unchanged(teacher, before)


# ---------------------------------------------------------------- tensors shared with the student


class Probe(nn.Module):
    """A tensor-free module that records the mode of each forward pass it runs in."""

    def __init__(self):
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        return x


def bn_pair(affine: bool):
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(8, affine=affine)
    teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), bn, nn.Linear(8, 5))
    student = nn.Sequential(nn.Linear(4, 8), bn, nn.Linear(8, 5))
    return student, teacher


@pytest.mark.parametrize(("affine", "names"), [
    (False, "student '1.running_mean' is teacher '2.running_mean'"),  # buffers only: trained through, unseen before
    (True, "student '1.weight' is teacher '2.weight'"),
])
def test_a_shared_batchnorm_is_refused_naming_it_in_both_models(affine, names):
    student, teacher = bn_pair(affine)
    teacher.train()
    before = model_state(teacher)
    with pytest.raises(ValueError, match=re.escape(names)):
        D.distill(student, teacher, data(), epochs=1)
    assert_model_unchanged(teacher, before)


def test_a_shared_linear_and_a_parameter_on_the_teachers_storage_are_refused():
    teacher = mlp(0)
    before = model_state(teacher)
    shared = mlp(2)
    shared[3] = teacher[3]
    with pytest.raises(ValueError, match=re.escape("shares 2 tensor(s) with the teacher (student '3.weight' is "
                                                   "teacher '3.weight', student '3.bias' is teacher '3.bias')")):
        D.distill(shared, teacher, data())
    aliased = mlp(3)
    aliased[0].weight = nn.Parameter(teacher[0].weight.data)  # another Parameter object, the teacher's memory
    with pytest.raises(ValueError, match=re.escape("student '0.weight' is teacher '0.weight'")):
        D.distill(aliased, teacher, data())
    viewing = mlp(4)
    viewing.register_buffer("rows", teacher[0].weight.data[1:3])  # a view of part of it
    with pytest.raises(ValueError, match=re.escape("student 'rows' is teacher '0.weight'")):
        D.distill(viewing, teacher, data())
    assert_model_unchanged(teacher, before)


def test_an_ensemble_teacher_sharing_a_batchnorm_with_the_student_is_refused():
    student, member = bn_pair(affine=False)
    teacher = D.Ensemble([member, mlp(5)])
    with pytest.raises(ValueError, match=re.escape("student '1.running_var' is teacher 'members.0.2.running_var'")):
        D.distill(student, teacher, data())


@pytest.mark.parametrize(("hints", "attention", "message"), [
    ({"1": "1"}, None, "the teacher layer '1' is also a layer of the student"),
    ({"2": "0"}, None, "the student layer '2' is also a layer of the teacher"),
    (None, {"1": "1"}, "the teacher layer '1' is also a layer of the student"),
])
def test_hint_and_attention_layers_shared_with_the_student_are_refused(hints, attention, message):
    # one module in both networks: its hooks fire in both forward passes, the teacher's features would be the student's
    act = nn.Tanh()
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 8), act, nn.Linear(8, 5))
    student = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), act, nn.Linear(8, 5))
    before = model_state(teacher)
    with pytest.raises(ValueError, match=re.escape(message)):
        D.distill(student, teacher, data(), hints=hints, attention=attention)
    assert_model_unchanged(teacher, before)


def test_a_shared_tensor_free_module_runs_in_eval_mode_in_the_teacher():
    probe = Probe()
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 8), probe, nn.Linear(8, 5))
    student = nn.Sequential(nn.Linear(4, 8), probe, nn.Linear(8, 5))
    teacher[2].train()  # mixed modes come back as they were
    teacher[0].weight.requires_grad_(False)  # and mixed requires_grad flags
    before = model_state(teacher)
    D.distill(student, teacher, data(), epochs=2, batch_size=25)
    # per batch: the teacher's forward (eval), then the student's (train); 2 epochs of 2 batches
    assert probe.modes == [False, True] * 4
    assert_model_unchanged(teacher, before)


# ---------------------------------------------------------------- a real distillation


@pytest.fixture(scope="module")
def digits_teacher():
    train, test = tc.data.load_digits()
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    tc.fit(teacher, train, epochs=8, lr=3e-3, batch_size=64, progress=False)
    return teacher, train, test


def test_a_small_student_learns_from_soft_targets_alone(digits_teacher):
    """alpha = 1: the student never sees a label, only the teacher's soft targets at T = 4."""
    teacher, train, test = digits_teacher
    teacher_acc = tc.evaluate(teacher, test).accuracy
    assert teacher_acc > 0.9
    torch.manual_seed(1)
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))  # 1,210 vs 9,610 params
    history = D.distill(student, copy.deepcopy(teacher), train, T=4.0, alpha=1.0, epochs=8, lr=3e-3)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    acc = tc.evaluate(student, test).accuracy
    assert acc > 0.7, f"distilled student test accuracy {acc:.3f} (chance 0.1, teacher {teacher_acc:.3f})"


# ---------------------------------------------------------------- the teacher cache


class Counting(nn.Module):
    """A teacher that counts the samples it runs on."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.seen = net, 0

    def forward(self, x):
        self.seen += x.shape[0]
        return self.net(x)


@pytest.mark.parametrize("low_precision", [False, True], ids=["fixture-dtype", "bfloat16"])
def test_cached_teacher_runs_once_per_sample_and_trains_like_the_uncached(device, dtype, low_precision):
    dtype = torch.bfloat16 if low_precision else dtype
    train = data(n=40, dtype=dtype)
    histories, students, counts = [], [], []
    for cache in (False, True):
        teacher, student = Counting(mlp(0, dtype=dtype)), mlp(1, dtype=dtype)
        before = model_state(teacher)
        d = D.Distiller(teacher, T=3.0, alpha=0.7, cache_teacher=cache)
        with d:
            histories.append(tc.fit(student, train, epochs=3, batch_size=16, seed=0, progress=False,
                                    device=device, callbacks=[d]))
        assert_model_unchanged(teacher, before)
        students.append(student)
        counts.append((teacher.seen, d.teacher_calls))
    assert counts[0] == (120, 120)  # three epochs of 40 samples without the cache
    assert counts[1] == (40, 40)  # each sample once with it
    # the same loss up to the rounding of a teacher run on another batch composition
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    for a, b in zip(histories[0], histories[1], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=tol, abs=tol)
    for p, q in zip(students[0].parameters(), students[1].parameters(), strict=True):
        assert p.device.type == torch.device(device).type
        assert torch.allclose(p.float(), q.float(), rtol=tol, atol=tol)


def test_cached_teacher_logits_follow_the_samples_not_the_batch_order():
    teacher = mlp(0).eval()
    d = D.Distiller(teacher, cache_teacher=True)
    x = data(n=10).tensors[0]
    first = d._cached_teacher_logits(x[:6])
    again = d._cached_teacher_logits(torch.cat([x[[5, 2]], x[[2]], x[6:]]))  # 2 cached, 1 repeated, 4 new
    with torch.no_grad():
        want = teacher(x)
    assert torch.allclose(first, want[:6], atol=1e-6)
    assert torch.allclose(again, want[[5, 2, 2, 6, 7, 8, 9]], atol=1e-6)
    assert d.teacher_calls == 10 and len(d._cache) == 10
    d.close()
    assert len(d._cache) == 0  # a closed distiller forgets: its teacher may change


def test_cache_errors():
    teacher = mlp(0)
    with pytest.raises(TypeError, match="cache_teacher must be True or False, got 1"):
        D.Distiller(teacher, cache_teacher=1)
    with pytest.raises(ValueError, match="cache_teacher=True caches the teacher's logits only"):
        D.distill(mlp(1), teacher, data(), attention={"0": "0"}, cache_teacher=True)


def test_a_language_model_distils_per_token_from_integer_inputs():
    class Table(nn.Module):  # tokens (B, T) -> logits (B, T, V); records what it was fed
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.table, self.seen = nn.Embedding(7, 7), []

        def forward(self, tokens):
            self.seen.append(tokens.dtype)
            return self.table(tokens)

    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, 7, (8, 6), generator=g)
    train = TensorDataset(windows[:, :-1], windows[:, 1:])
    teacher, student = Table(0), Table(1)

    class Record(tc.Callback):
        def __init__(self):
            self.losses = []

        def on_loss(self, state):
            self.losses.append((state.loss.detach().clone(), state.batch, state.model.table.weight.detach().clone()))

    rec = Record()
    D.distill(student, teacher, train, T=2.0, alpha=0.5, epochs=1, batch_size=4, lr=0.1, callbacks=[rec])
    assert set(teacher.seen) == set(student.seen) == {torch.int64}  # tokens never cast to float
    for loss, (x, y), w in rec.losses:  # the kd loss over the B·T next-token predictions
        z, v = w[x].reshape(-1, 7), teacher.table.weight.detach()[x].reshape(-1, 7)
        torch.testing.assert_close(loss, D.kd_loss(z, v, y.reshape(-1), T=2.0, alpha=0.5))
