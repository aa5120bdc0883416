"""Start a job function on every process of a run: one per device, on one or many machines.

Three ways in:

- Started by ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set) or by
  ``srun`` with one task per process (SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID): this process is
  already one member of the job, so it joins the process group and runs the function; nothing is
  spawned.
- Otherwise, NUM_GPUS x NUM_SHARDS > 1: spawn NUM_GPUS processes on this machine (SHARD_ID gives
  their global ranks) that meet at ``--init_method`` (tcp://host:port or file://path).
- NUM_GPUS <= 1 on one machine: run in this process, with no process group and no DDP.

Processes use NCCL on CUDA (DIST_BACKEND) and gloo on CPU. This module is the only place that reads
the distributed environment.
"""

import os
import re
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from revvit.utils import distributed as du

__all__ = ["LaunchError", "cpu_threads", "launch", "world_size_of"]


class LaunchError(RuntimeError):
    """The distributed environment and the config disagree; the message says what to change."""


def world_size_of(cfg):
    return max(1, cfg.NUM_GPUS) * cfg.NUM_SHARDS


def _backend(cfg):
    if cfg.NUM_GPUS > 0 and torch.cuda.is_available():
        return cfg.DIST_BACKEND
    return "gloo"


def _check_devices(cfg):
    if cfg.NUM_GPUS > 0 and torch.cuda.is_available() and torch.cuda.device_count() < cfg.NUM_GPUS:
        raise LaunchError(
            f"NUM_GPUS {cfg.NUM_GPUS} but this machine has {torch.cuda.device_count()} CUDA devices; "
            "set NUM_GPUS to at most that number."
        )


def _free_local_init_method():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def cpu_threads(cfg, procs_on_machine, cores=None):
    """Intra-op threads for one CPU training process: its share of the cores, less one per loader worker.

    torch starts one thread per core in every process, and each DataLoader worker keeps a core busy
    too; on a small machine the oversubscribed threads then wait on each other (a 2-core laptop
    running the demo with 2 threads and 2 workers is about 2x slower than with 1 thread).
    """
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, procs_on_machine) - cfg.DATA_LOADER.NUM_WORKERS)


def _limit_cpu_threads(cfg, procs_on_machine):
    # Only for CPU processes, and never against an explicit OMP_NUM_THREADS from the user.
    if (cfg.NUM_GPUS > 0 and torch.cuda.is_available()) or "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(cpu_threads(cfg, procs_on_machine))


def _run_member(local_rank, func, cfg, init_method, rank, world_size, procs_on_machine):
    du.set_local_rank(local_rank)
    if cfg.NUM_GPUS > 0 and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    _limit_cpu_threads(cfg, procs_on_machine)
    dist.init_process_group(backend=_backend(cfg), init_method=init_method, world_size=world_size, rank=rank)
    try:
        return func(cfg)
    finally:
        dist.destroy_process_group()


def _spawned(local_rank, func, cfg, init_method):
    procs = max(1, cfg.NUM_GPUS)
    rank = cfg.SHARD_ID * procs + local_rank
    _run_member(local_rank, func, cfg, init_method, rank, world_size_of(cfg), procs)


def _external_launcher(env):
    """(rank, world_size, local_rank, local_world_size, name) when torchrun or srun started us."""
    if all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        local_ws = int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"]))
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]), local_ws, "torchrun"
    if all(k in env for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")) and int(env["SLURM_NTASKS"]) > 1:
        # SLURM_NTASKS_PER_NODE looks like "8", "8(x4)" or "8,4"; only the CPU thread share uses it.
        per_node = re.match(r"\d+", env.get("SLURM_NTASKS_PER_NODE", ""))
        local_ws = int(per_node.group()) if per_node else int(env["SLURM_NTASKS"])
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env["SLURM_LOCALID"]), local_ws, "SLURM"
    return None


def launch(cfg, func, init_method=None, env=None):
    """Run ``func(cfg)`` on every process of the job; returns its result in a single process run."""
    env = os.environ if env is None else env
    _check_devices(cfg)
    external = _external_launcher(env)
    if external is not None:
        rank, world_size, local_rank, local_ws, name = external
        if world_size != world_size_of(cfg):
            raise LaunchError(
                f"{name} started {world_size} processes but the config asks for NUM_GPUS {cfg.NUM_GPUS} x "
                f"NUM_SHARDS {cfg.NUM_SHARDS} = {world_size_of(cfg)}; pass NUM_GPUS <processes per machine> "
                "NUM_SHARDS <machines> to match the launcher."
            )
        if world_size == 1:
            du.set_local_rank(local_rank)
            _limit_cpu_threads(cfg, 1)
            return func(cfg)
        if init_method is None:
            if not ("MASTER_ADDR" in env and "MASTER_PORT" in env):
                raise LaunchError(
                    f"Started by {name} without MASTER_ADDR/MASTER_PORT: pass --init_method tcp://<first host>:<port> "
                    "or export MASTER_ADDR and MASTER_PORT for every task."
                )
            init_method = "env://"
        return _run_member(local_rank, func, cfg, init_method, rank, world_size, local_ws)

    if world_size_of(cfg) == 1:
        _limit_cpu_threads(cfg, 1)
        return func(cfg)
    if init_method is None:
        if cfg.NUM_SHARDS > 1:
            raise LaunchError(
                f"NUM_SHARDS {cfg.NUM_SHARDS}: every machine must be given the same --init_method "
                "tcp://<host of shard 0>:<free port> (or file://<shared path>)."
            )
        init_method = _free_local_init_method()
    mp.spawn(_spawned, nprocs=max(1, cfg.NUM_GPUS), args=(func, cfg, init_method), join=True)
    return None
