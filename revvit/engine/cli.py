"""The command line of tools/run_net.py: parse, load the config, train and/or test.

Without any argument it runs the image demo (configs/Demo/REV_VIT_DIGITS.yaml: train, then test),
so a new user sees the whole pipeline work with one command.

Everything a user can get wrong in the config, the launch flags or the data layout is checked here,
in this process, before any worker process starts: the config gate (revvit/config/validate.py), the
meeting point of a several-machine job, and the files of every split the run will read.
"""

import argparse
import os
import sys

import torch

from revvit.config import load_config
from revvit.config.validate import check_launch
from revvit.datasets import check_layout
from revvit.utils.distributed import cuda_index, uses_cuda
from revvit.utils.errors import UserError

from . import preemption, run_dir
from .evaluate import evaluate
from .launch import cpu_threads, external_launcher, launch, world_size_of
from .precision import precision
from .train import train

__all__ = ["DEMO_CONFIG", "check_data", "describe_processes", "main", "parse_args", "run", "train_and_test"]

DEMO_CONFIG = os.path.join("configs", "Demo", "REV_VIT_DIGITS.yaml")


def parse_args(argv, default_cfg=None):
    """Flags wherever they appear (PySlowFast's README puts --init_method after the overrides); every other
    token, in order, is a KEY VALUE override (``args.opts``)."""
    parser = argparse.ArgumentParser(
        prog="run_net.py",
        usage="run_net.py [-h] [--cfg CONFIG] [--init_method URL] [--num_shards N] [--shard_id I] [KEY VALUE ...]",
        description="Train and/or test a Reversible ViT / MViT: --cfg CONFIG [KEY VALUE ...], e.g. SOLVER.BASE_LR 0.001. "
        "Without arguments, trains and tests the digits demo.",
        allow_abbrev=False,  # a value such as --init would otherwise be read as --init_method
    )
    parser.add_argument("--cfg", dest="cfg_file", default=default_cfg, help="YAML config (default: the demo config)")
    parser.add_argument(
        "--init_method",
        default=None,
        help="Where processes meet: tcp://host:port (the host of shard 0) or file:///shared/path. "
        "Needed with NUM_SHARDS > 1; on one machine a free local port is chosen.",
    )
    parser.add_argument("--num_shards", type=int, default=None, help="Machines in the job (overrides NUM_SHARDS)")
    parser.add_argument("--shard_id", type=int, default=None, help="Index of this machine, 0..num_shards-1 (overrides SHARD_ID)")
    parser.add_argument("--opts", action="store_true", help="PySlowFast's marker before the overrides (optional)")
    args, opts = parser.parse_known_args(list(argv))
    unknown = [key for key in opts[0::2] if key.startswith("--")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.opts = opts
    return args


def train_and_test(cfg):
    """The job of every process: train (TRAIN.ENABLE), then test (TEST.ENABLE) in the same process group.

    One stop request spans both: a signal that arrives once training is done (while it saves its last
    checkpoint) skips the test instead of being forgotten, and does not claim training was interrupted.
    """
    results = {}
    with run_dir.claimed(cfg), preemption.handling(cfg) as stop:  # one hold on OUTPUT_DIR from training to the test's end
        if cfg.TRAIN.ENABLE:
            results["train"] = train(cfg)
        if cfg.TEST.ENABLE:
            signum = stop.should_stop() if cfg.TRAIN.ENABLE else 0
            if signum:
                raise stop.stopped(
                    f"after training finished (all {cfg.SOLVER.MAX_EPOCH} epochs); the test was not run. "
                    "Test the last checkpoint with TRAIN.ENABLE False.",
                    signum,
                )
            results["test"] = evaluate(cfg)
    return results


def check_data(cfg):
    """The layout of every split the run reads (val only when training evaluates), before training starts.

    An empty test.csv would otherwise be found after hours of training. Demo sets are built here on
    first use, once, before processes start.
    """
    splits = []
    if cfg.TRAIN.ENABLE:
        splits += ["train", "val"] if cfg.TRAIN.EVAL_PERIOD > 0 else ["train"]
    if cfg.TEST.ENABLE:
        splits.append("test")
    for split in splits:
        check_layout(cfg, split)


def _cuda_devices(procs, external):
    """Which GPU each process takes: its local rank modulo the devices it sees (utils.distributed.cuda_index)."""
    n = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0)
    if external is not None:
        return f"this rank on cuda:{cuda_index(external[2], n)} of the {n} it sees, {name}"
    if procs == 1:
        return f"cuda:0 of {n}, {name}"
    return f"local rank i on cuda:i of {n}, {name}"


def describe_processes(cfg, external=None, env=None):
    """One line saying what actually runs: processes, machines, device, threads, precision.

    ``NUM_GPUS 1`` on a machine without CUDA is one CPU process, not a GPU run; a user reading the
    README's commands should see that before the first iteration, not infer it from the speed.
    """
    env = os.environ if env is None else env
    cuda = uses_cuda(cfg)
    if external is not None:
        _, world, _, local, name = external
        procs, shards = local, max(1, world // max(1, local))
    else:
        world, procs, shards = world_size_of(cfg), max(1, cfg.NUM_GPUS), cfg.NUM_SHARDS
    if world == 1:
        where = "1 process"
    elif shards == 1:
        where = f"{procs} processes on this machine"
    else:
        where = f"{procs} processes on each of {shards} machines ({world} in all)"
    if external is not None:
        where += f", started by {name}"
    if cuda:
        arith = precision(cfg, torch.device("cuda", cuda_index(external[2] if external else 0, torch.cuda.device_count())))
        backend = cfg.DIST_BACKEND if world > 1 else "no process group"
        return f"{where} on CUDA ({_cuda_devices(procs, external)}; {backend}), {arith.describe()}"
    why = "NUM_GPUS 0" if cfg.NUM_GPUS == 0 else "no CUDA device found"
    each = " each" if world > 1 else ""
    if "OMP_NUM_THREADS" in env:
        threads = f"OMP_NUM_THREADS {env['OMP_NUM_THREADS']} threads{each}"
    else:
        n = cpu_threads(cfg, procs)
        threads = (
            f"{n} thread{'s' if n > 1 else ''}{each} ({os.cpu_count()} cores, "
            f"{cfg.DATA_LOADER.NUM_WORKERS} loader workers per process)"
        )
    return f"{where} on CPU ({why}{', gloo' if world > 1 else ''}), {threads}, {precision(cfg, torch.device('cpu')).describe()}"


def run(argv, default_cfg=None):
    """Parse, check config, launch flags and data, then launch; returns {"train": ..., "test": ...} of a one-process run."""
    args = parse_args(argv, default_cfg=default_cfg)
    if not args.cfg_file:
        raise SystemExit("run_net.py: --cfg CONFIG is required")
    cfg = load_config(args)
    external = external_launcher(os.environ)
    check_launch(cfg, args.init_method, external[-1] if external else None)
    check_data(cfg)
    print(f"run_net.py: {describe_processes(cfg, external)}", flush=True)
    return launch(cfg, train_and_test, args.init_method) or {}


def main(argv=None, default_cfg=None):
    """Exit status 0 on success; 1 with a one-paragraph message (no traceback) for user errors; 128 + the
    signal's number when a signal stopped the run (130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1)."""
    try:
        run(sys.argv[1:] if argv is None else argv, default_cfg=default_cfg)
    except UserError as e:
        print(f"run_net.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # revvit.utils.errors.Interrupted says where and how to resume
        print(f"run_net.py: {str(e) or 'interrupted'}", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    return 0
