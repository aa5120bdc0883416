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
    "collective_device",
    "cuda_index",
    "get_device",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "is_dist",
    "is_master_proc",
    "set_local_rank",
    "uses_cuda",
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


def cuda_index(local_rank, visible):
    """The CUDA device of the process with this local rank: its local rank modulo the devices it sees.

    Spawned processes and a plain ``torchrun`` see every GPU of the machine (rank i takes GPU i); SLURM's
    ``--gpus-per-task 1`` or a per-rank CUDA_VISIBLE_DEVICES show each rank one device (index 0), whatever
    its local rank.
    """
    if visible < 1:
        raise ValueError("no CUDA device is visible to this process")
    return local_rank % visible


def uses_cuda(cfg):
    """Whether the processes of this job compute on GPUs: NUM_GPUS > 0 and CUDA sees a device.

    ``NUM_GPUS 1`` on a machine without CUDA runs on the CPU, so every choice that depends on the
    device (the device itself, the process group's backend, pinned memory, the on-device data path)
    asks here rather than reading NUM_GPUS.
    """
    return cfg.NUM_GPUS > 0 and torch.cuda.is_available()


def get_device(cfg):
    """CUDA device of this process when ``uses_cuda(cfg)``; otherwise the CPU."""
    if uses_cuda(cfg):
        return torch.device("cuda", cuda_index(_LOCAL_RANK, torch.cuda.device_count()))
    return torch.device("cpu")


def collective_device(tensor):
    """Where ``tensor`` must be for a collective: NCCL takes only tensors on the process's GPU (the
    current device, set by the launcher); gloo takes CPU and CUDA tensors alike, so they stay put."""
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def barrier():
    if is_dist():
        dist.barrier()


def all_reduce(tensors, average=True):
    """Sum (or mean) each tensor over all processes; returns new tensors (on the collective's device),
    inputs untouched."""
    if not is_dist():
        return [t.detach().clone() for t in tensors]
    out = [t.detach().to(collective_device(t), copy=True) for t in tensors]
    for t in out:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        if average:
            t.div_(get_world_size())
    return out


def all_gather_unaligned(tensor):
    """Gather tensors whose first dimension differs between processes (e.g. the last test batch)."""
    if not is_dist():
        return tensor
    tensor = tensor.to(collective_device(tensor))
    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(n) for _ in range(get_world_size())]
    dist.all_gather(sizes, n)
    sizes = torch.cat(sizes).tolist()  # one device-to-host copy for all of them
    padded = torch.zeros((max(sizes),) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)
