r"""Data-parallel training over several processes (``torchrun``): who this process is, its share of each batch, sums
over all processes.

:func:`~tensorcompress.fit` splits every *global* batch of ``batch_size`` samples into ``world_size`` contiguous
shards (sizes :math:`n_r` differing by at most one) and scales each process's mean loss by
:math:`n_r W / B` before ``backward``. DistributedDataParallel averages the gradients over the :math:`W` processes,
so every process receives

.. math:: \frac1W \sum_r \frac{n_r W}{B} \nabla \Big(\frac1{n_r} \sum_{i \in r} \ell_i\Big)
          = \nabla \Big(\frac1B \sum_{i} \ell_i\Big),

the gradient of the global batch's mean loss: the same step as one process on the whole batch, for any number of
processes and any uneven last batch (exact in real arithmetic; in floating point the sums are ordered differently).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["is_main_process", "ProcessGroup", "process_group"]


def is_main_process() -> bool:
    """Whether this process is rank 0 of the default process group (``True`` without one): the one that logs and
    saves."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@dataclass(frozen=True)
class ProcessGroup:
    """This process's ``rank`` among ``world_size`` processes (``0`` of ``1`` when training alone)."""

    rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> tuple[int, int]:
        """``(start, stop)`` of this process's contiguous share of ``n`` items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """``values`` summed over all processes (float64); unchanged when training alone."""
        if not self.active:
            return values
        on = device if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=on)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def process_group(device: torch.device) -> ProcessGroup:
    """The default process group if one is initialised; else, under ``torchrun`` (``WORLD_SIZE`` > 1 in the
    environment), one initialised here (gloo on the CPU, NCCL on CUDA); else training alone.

    A group initialised here stays up for the rest of the process, for later calls and the script's own collectives
    (``torch.distributed.destroy_process_group()`` ends it): destroying and re-initialising the default group in one
    process reuses the rendezvous store's keys, and gloo then connects to the stale addresses of the old group.
    """
    if dist.is_available() and dist.is_initialized():
        return ProcessGroup(dist.get_rank(), dist.get_world_size())
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ProcessGroup()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 asks for distributed training, but this torch build has no "
                           "torch.distributed")
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ProcessGroup(dist.get_rank(), dist.get_world_size())
