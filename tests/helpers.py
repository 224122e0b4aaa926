"""Helpers shared by the tests (``from helpers import ...``; pytest puts ``tests/`` on ``sys.path`` for conftest).

Seeded tensors and data sets, tiny seeded models, a model's whole observable state for "the input is not changed"
checks, a module that takes a known minimum time (for latency tests that cannot pass by accident), the shipped
checkpoints' manifest and a free loopback port.
"""

from __future__ import annotations

import json
import socket
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

from tensorcompress.models.pretrained import CHECKPOINT_DIR

# ---------------------------------------------------------------- tensors and data


def tolerance(dtype: torch.dtype) -> float:
    """A relative tolerance suited to ``dtype``."""
    return 1e-4 if dtype == torch.float32 else 1e-10


def randn(shape, seed: int, device="cpu", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A seeded standard-normal tensor, drawn in float64 on the CPU so the values are the same on every device."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def random_classification(n: int, d: int, k: int, seed: int, dtype: torch.dtype = torch.float32) -> TensorDataset:
    """``n`` standard-normal inputs of size ``d`` with labels drawn uniformly from ``k`` classes (nothing to learn:
    for tests of the training machinery, not of accuracy)."""
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, d, generator=g).to(dtype), torch.randint(0, k, (n,), generator=g))


def correlated_inputs(n_tokens: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Tokens with correlated features (a random mixing) and a few outlier features 10-30x larger, as
    transformer activations have."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_tokens, d, generator=g, dtype=torch.float64)
    mix = torch.eye(d, dtype=torch.float64) + torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    x = z @ mix
    outliers = torch.randperm(d, generator=g)[: max(1, d // 16)]
    x[:, outliers] *= 10 + 20 * torch.rand(len(outliers), generator=g, dtype=torch.float64)
    return x.to(dtype)


def hessian_of(x: torch.Tensor) -> torch.Tensor:
    """The layer-wise Hessian 2 XᵀX / N of the tokens ``x`` (one per row)."""
    return 2 * x.T @ x / x.shape[0]


# ---------------------------------------------------------------- models


def mlp(d: int, hidden: int, k: int, *, seed: int, dropout: float | None = None,
        dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """``Linear(d, hidden) → ReLU [→ Dropout(dropout)] → Linear(hidden, k)``, initialised after
    ``torch.manual_seed(seed)`` (the global generator, as the layers' own initialisation draws from it)."""
    torch.manual_seed(seed)
    middle = [] if dropout is None else [nn.Dropout(dropout)]
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), *middle, nn.Linear(hidden, k)).to(dtype)


def tied_mlp(*, seed: int = 0, width: int = 8) -> nn.Sequential:
    """``Linear(width, width) → ReLU → Linear(width, width)`` whose two layers hold one weight Parameter (names
    ``0.weight`` and ``2.weight``), initialised after ``torch.manual_seed(seed)``; in training mode."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
    net[2].weight = net[0].weight
    return net


def conv_net(*, seed: int = 0) -> nn.Sequential:
    """For ``N x 2 x 6 x 6`` inputs and 3 classes: ``Conv2d(2, 4, 3) → ReLU → Flatten → Linear(64, 5) → ReLU →
    Linear(5, 3)``, initialised after ``torch.manual_seed(seed)``: a conv and two linears to quantize, one excluded
    by name (``"5"``)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.ReLU(),
                         nn.Linear(5, 3))


class Sleep(nn.Module):
    """Returns its input after sleeping ``seconds``: a forward pass that takes at least that long on any machine, so a
    latency test can bound a measurement from below (and a ratio of two such models) without timing real kernels."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x


# ---------------------------------------------------------------- "the model is not changed"


def model_state(model: nn.Module) -> tuple[dict, dict, dict, dict, list, dict]:
    """Everything a transform must leave as it was: every parameter and buffer by name (tied names included, values
    copied), every submodule's train/eval mode, every parameter's ``requires_grad``, the number of hooks, the ties
    (the groups of names that hold one parameter object) and every parameter's ``.grad`` (copied, or ``None``)."""
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    hooks = {name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
             for name, m in model.named_modules(remove_duplicate=False)}
    holders: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        holders.setdefault(id(p), []).append(name)
    return ({k: v.detach().clone() for k, v in tensors},
            {n: m.training for n, m in model.named_modules(remove_duplicate=False)},
            {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)},
            hooks,
            sorted(sorted(names) for names in holders.values()),
            {n: None if p.grad is None else p.grad.detach().clone()
             for n, p in model.named_parameters(remove_duplicate=False)})


def assert_model_unchanged(model: nn.Module, before: tuple[dict, dict, dict, dict, list, dict]) -> None:
    """``model`` is as :func:`model_state` saw it: the same tensors bit for bit (dtype too), modes, flags, hooks,
    ties and gradients (none where there was none)."""
    tensors, modes, flags, hooks, ties, grads = model_state(model)
    assert tensors.keys() == before[0].keys()
    old = before[0]
    changed = [k for k, v in tensors.items() if v.dtype != old[k].dtype or not torch.equal(v, old[k])]
    assert not changed, f"changed tensors: {changed}"
    assert modes == before[1], "a submodule's train/eval mode changed"
    assert flags == before[2], "a parameter's requires_grad changed"
    assert hooks == before[3], "hooks were left on (or removed from) the model"
    assert ties == before[4], f"tied parameters were untied or tied: {before[4]} became {ties}"
    moved = [n for n, g in grads.items() if (g is None) != (before[5][n] is None)
             or (g is not None and not torch.equal(g, before[5][n]))]
    assert not moved, f"gradients appeared or changed: {moved}"


# ---------------------------------------------------------------- notebooks, files and ports


def notebook_of(*cells: str):
    """An nbformat v4 notebook of code cells, or Markdown cells for sources starting with ``"md:"``."""
    from nbformat import v4  # imported here: the helpers load with the library alone (no notebooks extra)

    return v4.new_notebook(cells=[v4.new_markdown_cell(c[3:]) if c.startswith("md:") else v4.new_code_cell(c)
                                  for c in cells])



def checkpoint_manifest() -> dict:
    """The shipped checkpoints' ``manifest.json``."""
    return json.loads((CHECKPOINT_DIR / "manifest.json").read_text())


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
