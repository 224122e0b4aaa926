"""tc.fit past one process: two CPU processes under ``torchrun`` (gloo) train as one process on the same global batch.

The comparison is exact in real arithmetic: every global batch of 7 samples is split 4 + 3 (the last one, of 2,
1 + 1) across the two processes, each scales its mean loss by n_r W / B, and DistributedDataParallel averages the
gradients, which gives the gradient of the global batch's mean loss (tensorcompress/train/distributed.py). SGD with
momentum, no shuffling difference (both processes draw the same permutation from the seed). In float64 the two runs
then differ only by the order of floating-point sums.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import free_port
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

import tensorcompress as tc
from tensorcompress.train.distributed import ProcessGroup

ROOT = Path(__file__).resolve().parents[1]

needs_distributed = pytest.mark.skipif(not torch.distributed.is_available(),
                                       reason="this torch build has no torch.distributed")

# Everything both the workers and the single-process reference build: data, model, fit's arguments.
SETUP = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    def setup():
        g = torch.Generator().manual_seed(0)
        y = torch.arange(30) % 3
        x = 3 * torch.eye(3, 5, dtype=torch.float64)[y] + torch.randn(30, 5, generator=g, dtype=torch.float64)
        xt = torch.randn(11, 5, generator=g, dtype=torch.float64)
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        kwargs = dict(epochs=3, lr=0.05, batch_size=7, optimizer="sgd", seed=0,
                      test=TensorDataset(xt, torch.arange(11) % 3))
        return model, TensorDataset(x, y), kwargs
''')

WORKER = SETUP + textwrap.dedent('''
    import os
    import sys

    import torch.distributed as dist

    import tensorcompress as tc

    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    sys.stderr = open(os.path.join(out, f"stderr{rank}.txt"), "w")  # tqdm writes here: only rank 0 may
    saves, real_save = [], torch.save
    torch.save = lambda obj, f, *a, **k: (saves.append(str(f)), real_save(obj, f, *a, **k))[1]

    class Seen:
        def on_train_begin(self, state):
            self.where = (state.rank, state.world_size, state.is_main, tc.train.is_main_process())

    model, data, kwargs = setup()
    seen = Seen()
    history = tc.fit(model, data, progress=True, callbacks=[seen], checkpoint=os.path.join(out, "ckpt.pt"), **kwargs)
    assert dist.is_initialized()  # fit initialised the process group from torchrun's environment, left it up

    again, data, kwargs = setup()  # a second call uses the same group
    history_again = tc.fit(again, data, progress=False, **kwargs)
    assert dist.is_initialized()
    dist.destroy_process_group()

    torch.save = real_save
    sys.stderr.close()
    torch.save({"state": model.state_dict(), "again": again.state_dict(), "history": history,
                "history_again": history_again, "seen": seen.where, "saves": saves},
               os.path.join(out, f"rank{rank}.pt"))
''')


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Run the worker under ``torchrun --nproc_per_node 2`` on a free loopback port; return both ranks' results."""
    out = tmp_path_factory.mktemp("ddp")
    (out / "worker.py").write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(out / "worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return out, results


def _reference():
    namespace: dict = {}
    exec(SETUP, namespace)  # noqa: S102 -- the same setup code the workers run
    model, data, kwargs = namespace["setup"]()
    history = tc.fit(model, data, progress=False, **kwargs)
    return model, history


def _initial():
    namespace: dict = {}
    exec(SETUP, namespace)  # noqa: S102
    return namespace["setup"]()[0]


@needs_distributed
def test_two_processes_end_with_equal_weights_equal_to_one_process(two_processes):
    _, (r0, r1) = two_processes
    for key in ("state", "again"):
        for name, w in r0[key].items():
            torch.testing.assert_close(r1[key][name], w, rtol=0, atol=1e-14)  # the same averaged steps on each
    model, history = _reference()
    start = {k: v for k, v in zip(model.state_dict(), _initial().state_dict().values(), strict=True)}
    for name, w in model.state_dict().items():
        assert not torch.allclose(w, start[name])  # training moved the weights ...
        torch.testing.assert_close(r0["state"][name], w, rtol=1e-10, atol=1e-12)  # ... the same way
        torch.testing.assert_close(r0["again"][name], w, rtol=1e-10, atol=1e-12)
    for h in (r0["history"], r1["history"], r0["history_again"]):
        assert [set(r) for r in h] == [set(r) for r in history]
        for got, want in zip(h, history, strict=True):  # losses and accuracies over both processes' shards
            for k, v in want.items():
                assert got[k] == pytest.approx(v, rel=1e-10, abs=1e-12), k


@needs_distributed
def test_rank_zero_alone_logs_and_saves(two_processes):
    out, (r0, r1) = two_processes
    assert r0["seen"] == (0, 2, True, True) and r1["seen"] == (1, 2, False, False)
    assert "fit" in (out / "stderr0.txt").read_text()  # the progress bar
    assert (out / "stderr1.txt").read_text() == ""
    assert len(r0["saves"]) == 1 and r0["saves"][0].startswith(str(out / "ckpt.pt")) and r1["saves"] == []
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert all(torch.equal(v, r0["state"][k]) for k, v in ckpt.items())


@given(n=st.integers(0, 50), world=st.integers(1, 6))
def test_shards_partition_a_batch_and_scales_average_to_one(n, world):
    shards = [ProcessGroup(r, world).shard(n) for r in range(world)]
    assert shards[0][0] == 0 and shards[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(shards, shards[1:], strict=False))
    sizes = [hi - lo for lo, hi in shards]
    assert max(sizes) - min(sizes) <= 1
    if n:  # DDP averages: (1/W) sum_r (n_r W / n) = 1, the weight of the global mean
        assert sum(s * world / n for s in sizes) / world == pytest.approx(1.0)


def test_single_process_group_is_training_alone(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert tc.train.is_main_process()
    model = nn.Linear(5, 3)
    data = TensorDataset(torch.randn(8, 5), torch.arange(8) % 3)
    seen = []

    class Where:
        def on_train_begin(self, state):
            seen.append((state.rank, state.world_size))

    tc.fit(model, data, epochs=1, progress=False, callbacks=[Where()])
    assert seen == [(0, 1)]
