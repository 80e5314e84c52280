"""Data-parallel training under `torchrun`: PyTorch's DistributedDataParallel, NCCL on GPUs and gloo on CPU.

`torchrun --nproc_per_node N -m vitdeploy train|compress ...` sets WORLD_SIZE/RANK/LOCAL_RANK; `init_from_env` joins
the process group. Every rank runs the same code on its shard of each global batch (the recipe's batch size is the
global batch), gradients are averaged by DDP, metrics are summed across ranks, and only rank 0 writes files.
Without torchrun everything here is a no-op and the world has one rank.
"""
from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from vitdeploy.errors import VitDeployError


def device_setting() -> str:
    """VITDEPLOY_DEVICE, checked: unset or empty means "cpu"; "cpu", "cuda" and "cuda:N" are the only values (a
    typo such as "tpu" or "gpu" must not quietly mean the CPU)."""
    value = os.environ.get("VITDEPLOY_DEVICE", "").strip().lower()
    if value in ("", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return value or "cpu"
    raise VitDeployError(f"VITDEPLOY_DEVICE={os.environ['VITDEPLOY_DEVICE']!r} is not a device: use cpu, cuda or "
                         f"cuda:N")


def init_from_env() -> None:
    """Check VITDEPLOY_DEVICE and join the process group torchrun describes (a no-op for a single process)."""
    setting = device_setting()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    cuda = torch.cuda.is_available() and setting != "cpu"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timedelta(minutes=30))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def device() -> torch.device:
    """Where this rank trains: its GPU under torchrun with NCCL; in a single process the GPU when
    VITDEPLOY_DEVICE=cuda; otherwise the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    setting = device_setting()
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise VitDeployError(f"VITDEPLOY_DEVICE={setting} but torch sees no CUDA GPU here")
        index = int(setting.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise VitDeployError(f"VITDEPLOY_DEVICE={setting} but torch sees {torch.cuda.device_count()} GPU(s)")
        return torch.device(setting)
    return torch.device("cpu")


def sum_across(values: Sequence[float]) -> list[float]:
    """Each value summed over all ranks (the values themselves for one process)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device())
    dist.all_reduce(t)
    return t.tolist()


def broadcast_flag(ok: bool) -> bool:
    """True on every rank only if `ok` on every rank (so a failure on one rank stops all of them together)."""
    if world_size() == 1:
        return ok
    t = torch.tensor([0.0 if ok else 1.0], device=device())
    dist.all_reduce(t)
    return t.item() == 0


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model DDP trains (gradients averaged across ranks); the model itself for one process."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    dev = device()
    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's share of every batch of `batches`: items rank, rank + W, rank + 2W, ... of each global batch.

    The global batches come from the same sampler, generator and seed as a single process uses, so W ranks together
    see exactly the batches one process would, in the same order. With equal shares, DDP's average of the per-rank
    mean losses is the mean over the global batch."""

    def __init__(self, batches: Sampler, rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield list(batch)[self.rank::self.world]

    def __len__(self) -> int:
        return len(self.batches)


def check_global_batch(batch_size: int, what: str = "batch_size") -> None:
    w = world_size()
    if batch_size % w:
        raise VitDeployError(f"{what} {batch_size} is the global batch and must be divisible by the {w} processes")
