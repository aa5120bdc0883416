"""The command line of tools/run_net.py: parse, load the config, train and/or test.

Without any argument it runs the image demo (configs/Demo/REV_VIT_DIGITS.yaml: train, then test),
so a new user sees the whole pipeline work with one command.
"""

import argparse
import os
import sys

from revvit.config import ConfigError, load_config
from revvit.solver import check_schedule
from revvit.utils.errors import UserError

from .evaluate import evaluate
from .launch import launch
from .train import train

__all__ = ["DEMO_CONFIG", "main", "parse_args", "run", "train_and_test"]

DEMO_CONFIG = os.path.join("configs", "Demo", "REV_VIT_DIGITS.yaml")


def parse_args(argv, default_cfg=None):
    parser = argparse.ArgumentParser(
        prog="run_net.py",
        description="Train and/or test a Reversible ViT / MViT: --cfg CONFIG [KEY VALUE ...]. "
        "Without arguments, trains and tests the digits demo.",
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
    parser.add_argument("--opts", dest="flag_opts", nargs=argparse.REMAINDER, default=[], help="PySlowFast spelling of the overrides")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="Config overrides as KEY VALUE pairs, e.g. SOLVER.BASE_LR 0.001")
    args = parser.parse_args(argv)
    args.opts = list(args.opts or []) + list(args.flag_opts or [])
    return args


def train_and_test(cfg):
    """The job of every process: train (TRAIN.ENABLE), then test (TEST.ENABLE) in the same process group."""
    results = {}
    if cfg.TRAIN.ENABLE:
        results["train"] = train(cfg)
    if cfg.TEST.ENABLE:
        results["test"] = evaluate(cfg)
    return results


def run(argv, default_cfg=None):
    """Parse, load the config and launch; returns {"train": ..., "test": ...} of a one-process run."""
    args = parse_args(argv, default_cfg=default_cfg)
    if not args.cfg_file:
        raise SystemExit("run_net.py: --cfg CONFIG is required")
    cfg = load_config(args)
    if cfg.TRAIN.ENABLE:
        check_schedule(cfg)  # fail here, before any process is spawned
    return launch(cfg, train_and_test, args.init_method) or {}


def main(argv=None, default_cfg=None):
    """Exit status 0 on success; 1 with a one-paragraph message (no traceback) for user errors; 130 on Ctrl-C."""
    try:
        run(sys.argv[1:] if argv is None else argv, default_cfg=default_cfg)
    except (ConfigError, UserError) as e:
        print(f"run_net.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # revvit.utils.errors.Interrupted says where and how to resume
        print(f"run_net.py: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130
    return 0
