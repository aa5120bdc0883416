"""Job functions for the failure tests of spawned processes.

Spawned processes import the module of their job function; this one imports only what the jobs need,
so that each spawned process starts in a few seconds even on a busy machine.
"""

from revvit.config import get_cfg, merge_opts
from revvit.utils import distributed as du


def launch_cfg(out_dir, *opts):
    """Two CPU processes (gloo), writing to ``out_dir``."""
    cfg = get_cfg()
    merge_opts(cfg, ["NUM_GPUS", "2", "NUM_SHARDS", "1", "OUTPUT_DIR", str(out_dir), *opts])
    cfg.freeze()
    return cfg


def bug_on_rank_1(cfg):
    if du.get_rank() == 1:
        return 1 // 0
    du.barrier()


def mark_interpreter_finalization(cfg):
    """Leave a file when the interpreter finalizes this rank (atexit runs only then)."""
    import atexit
    import os

    path = os.path.join(cfg.OUTPUT_DIR, f"finalized-rank{du.get_rank()}")
    atexit.register(lambda: open(path, "w").close())
    du.barrier()
