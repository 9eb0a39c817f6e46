"""Process-group set-up and the few collectives the trainer needs (gloo on CPU, NCCL on GPU).

Works under the ``deepspeed`` launcher, ``torchrun`` and a plain single ``python`` process alike."""
from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist


def init() -> tuple[int, int]:
    """Join (or, for a lone ``python`` process, create) the process group; returns (rank, world size)."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    import deepspeed  # here, not at the top: importing DeepSpeed takes ~2 s and free_port's users need none of it
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    if backend == "gloo":
        _without_shm_allreduce()
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(minutes=30))
    return dist.get_rank(), dist.get_world_size()


def _without_shm_allreduce() -> None:
    """Keep DeepSpeed from loading its CPU shared-memory all-reduce op, which only its inference all-reduce uses.

    Loading it JIT-builds under a file lock in ~/.cache/torch_extensions: a rank killed at start-up leaves the lock
    behind and every later run on the machine waits on it forever. And each rank's ~69 MB buffer in /dev/shm (RAM)
    was never unlinked, so every run, killed or not, leaked it until the OOM killer came. Training all-reduces go
    through gloo either way. DeepSpeed keeps this dict so that edits to it persist."""
    import deepspeed.ops  # see init()
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def device() -> torch.device:
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (all ranks must call it)."""
    if not dist.is_initialized():
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over ranks in one all-reduce, left on the device for the caller to read when it needs to
    (float64 values give every rank the identical sums)."""
    if not dist.is_initialized():
        return values
    values = values.to(_collective_device())
    dist.all_reduce(values)
    return values


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def close() -> None:
    """Destroy the process group so no rank is left hanging at exit."""
    if dist.is_initialized():
        dist.destroy_process_group()


def end_rank(code: int = 0) -> NoReturn:
    """End a rank process whose work is done and whose files are closed: all ranks meet, then it exits at once.

    Skipping interpreter shutdown is the point. DeepSpeed keeps references to its process groups (engine,
    optimizer, ZeRO-3 parameters), so ``destroy_process_group`` cannot join gloo's worker threads, and one of
    them may still be releasing the tensors of the last collective while the interpreter shuts down; taking
    the GIL then aborts the finished process (SIGABRT, "terminate called without an active exception")."""
    barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _collective_device() -> torch.device:
    return device() if dist.get_backend() == "nccl" else torch.device("cpu")


def free_port() -> int:
    """A TCP port on this machine that is free now (for a process group's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
