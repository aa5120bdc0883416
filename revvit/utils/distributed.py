"""Who am I in the job, and collective ops that are no-ops when the job is one process.

Everything that trains or evaluates asks these helpers instead of torch.distributed directly, so the
same code runs as one CPU process (no process group), one GPU, or many processes on many machines.
The launcher (revvit.engine.launch) is the only place that creates the process group; it records the
local rank here so that the device choice needs no environment variables.
"""

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_unaligned",
    "all_reduce",
    "barrier",
    "get_device",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "is_dist",
    "is_master_proc",
    "set_local_rank",
]

_LOCAL_RANK = 0


def set_local_rank(local_rank):
    """Called by the launcher once per process, before any model is built."""
    global _LOCAL_RANK
    _LOCAL_RANK = int(local_rank)


def get_local_rank():
    """This process's index among the processes of its machine (one download per machine, for example)."""
    return _LOCAL_RANK


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def get_rank():
    return dist.get_rank() if is_dist() else 0


def is_master_proc():
    """Rank 0 of the whole job writes checkpoints, logs and stats files."""
    return get_rank() == 0


def get_device(cfg):
    """CUDA device of this process when CUDA exists and NUM_GPUS > 0; otherwise the CPU."""
    if cfg.NUM_GPUS > 0 and torch.cuda.is_available():
        return torch.device("cuda", _LOCAL_RANK)
    return torch.device("cpu")


def barrier():
    if is_dist():
        dist.barrier()


def all_reduce(tensors, average=True):
    """Sum (or mean) each tensor over all processes; returns new tensors, inputs untouched."""
    out = [t.detach().clone() for t in tensors]
    if not is_dist():
        return out
    for t in out:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        if average:
            t.div_(get_world_size())
    return out


def all_gather_unaligned(tensor):
    """Gather tensors whose first dimension differs between processes (e.g. the last test batch)."""
    if not is_dist():
        return tensor
    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(n) for _ in range(get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(sizes),) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)
