"""The processes of a training run: one, or a torchrun world on one machine or many. Free functions over
torch.distributed, each a no-op (or the obvious answer) in a single process, so that callers never branch on it.

torchrun sets RANK (global: 0 .. WORLD_SIZE-1 over every node), LOCAL_RANK (the process's GPU on its own machine)
and WORLD_SIZE. The main process is global rank 0: it alone writes files. A process picks its GPU by LOCAL_RANK and
nothing else; node 1's local rank 0 is not the main process.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def start(device: str | None = None) -> torch.device:
    """Join the torchrun process group when launched by torchrun; return this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")


def stop() -> None:
    """Wait for every process, then leave the process group."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    """This process's global rank: 0 in a single process."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes the run's files: global rank 0."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _device() -> torch.device:
    # NCCL reduces tensors on the GPU, gloo on the CPU.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sums of `values` over every process (in float64: token counts stay exact)."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_agree(ok: bool) -> bool:
    """True only when `ok` on every process: one process's bad batch is skipped everywhere."""
    return sum_over_ranks([0.0 if ok else 1.0])[0] == 0


def from_main(value):
    """The main process's `value` (any picklable object), on every process."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value) -> list:
    """Every process's `value` (any picklable object), in rank order, on every process."""
    if not dist.is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
