"""torchrun environment helpers (RANK / LOCAL_RANK / WORLD_SIZE)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_distributed(device: str = "auto") -> torch.device:
    """Initialise the process group from torchrun's environment (gloo on CPU, nccl on CUDA) and pick the device.

    Without torchrun (WORLD_SIZE unset or 1) nothing is initialised. Returns the device this process should use.
    """
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device not in ("auto", "cuda", "cpu") and not device.startswith("cuda:"):
        raise ValueError(f"engine.device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda:"):
        want_cuda = True
    if want_cuda and not torch.cuda.is_available():
        raise RuntimeError("engine.device asks for CUDA but torch.cuda.is_available() is False")
    if env_world_size() > 1 and not is_distributed():
        backend = "nccl" if want_cuda else "gloo"
        if want_cuda:
            torch.cuda.set_device(env_local_rank())
        dist.init_process_group(backend=backend)
    if want_cuda:
        if device.startswith("cuda:") and env_world_size() == 1:
            return torch.device(device)
        return torch.device("cuda", env_local_rank() if env_world_size() > 1 else torch.cuda.current_device())
    return torch.device("cpu")


def shard(items: list, rank_: int | None = None, world: int | None = None) -> list:
    """The slice of ``sorted(items)`` this rank processes: ``sorted_items[rank::world_size]``."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return sorted(items)[r::w]


def all_reduce_sum(*tensors: torch.Tensor, device: torch.device | None = None) -> None:
    """Sum CPU tensors over all ranks in place (a no-op without torchrun).

    NCCL reduces only CUDA tensors, so under ``nccl`` each tensor makes a round trip through ``device``; under
    ``gloo`` they are reduced where they are.
    """
    if not is_distributed():
        return
    on = device if device is not None and dist.get_backend() == "nccl" else torch.device("cpu")
    for t in tensors:
        buf = t.to(on)
        dist.all_reduce(buf)
        t.copy_(buf.cpu() if t.device.type == "cpu" else buf)
