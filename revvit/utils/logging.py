"""Where a run's text goes: stdout, OUTPUT_DIR/stdout.log, JSON stats lines, TensorBoard scalars.

Only rank 0 writes files and info lines; other ranks print warnings and errors only (prefixed with
their rank) so that a failure on any process is still visible. JSON stats lines keep the PySlowFast
format (``json_stats: {...}`` with sorted keys) so existing log parsers and plotting scripts work.

In a terminal the per-iteration ``json_stats`` lines (``_type`` ``*_iter``) go to stdout.log only, so
the progress bar and the one line per epoch stay readable; ``LOG_ITER_STATS_STDOUT True`` prints
them too. Piped or redirected stdout (a cluster job's log) keeps every line.
"""

import decimal
import logging
import os
import sys

import simplejson

from . import distributed as du

__all__ = ["TensorboardWriter", "get_logger", "log_json_stats", "setup_logging"]

_PACKAGE = "revvit"
_HANDLER_TAG = "_revvit_handler"


def get_logger(name):
    return logging.getLogger(name)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of the record (it may be replaced, e.g. by
    a test harness or a notebook), instead of the object that was stdout at setup."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


class _IterStatsInTerminal(logging.Filter):
    """Drops per-iteration json_stats records while stdout is a terminal (checked per record: stdout may change)."""

    def filter(self, record):
        return not (getattr(record, "iter_stats", False) and sys.stdout.isatty())


def _tag(handler):
    setattr(handler, _HANDLER_TAG, True)
    return handler


def setup_logging(output_dir=None, iter_stats_stdout=False):
    """(Re)configure the ``revvit`` logger for this process; safe to call more than once.

    ``iter_stats_stdout`` (LOG_ITER_STATS_STDOUT): per-iteration json_stats on a terminal stdout too.
    """
    logger = logging.getLogger(_PACKAGE)
    for h in [h for h in logger.handlers if getattr(h, _HANDLER_TAG, False)]:
        logger.removeHandler(h)
        h.close()
    logger.setLevel(logging.INFO)
    rank = du.get_rank()
    if du.is_master_proc():
        fmt = logging.Formatter("[%(asctime)s][%(levelname)s] %(name)s: %(message)s", datefmt="%m/%d %H:%M:%S")
        stream = _tag(_StdoutHandler())
        stream.setFormatter(fmt)
        if not iter_stats_stdout:
            stream.addFilter(_IterStatsInTerminal())
        logger.addHandler(stream)
        if output_dir:
            os.makedirs(output_dir, exist_ok=True)
            fh = _tag(logging.FileHandler(os.path.join(output_dir, "stdout.log"), mode="a"))
            fh.setFormatter(fmt)
            logger.addHandler(fh)
    else:
        fmt = logging.Formatter(f"[%(asctime)s][%(levelname)s][rank {rank}] %(name)s: %(message)s", datefmt="%m/%d %H:%M:%S")
        stream = _tag(_StdoutHandler())
        stream.setLevel(logging.WARNING)
        stream.setFormatter(fmt)
        logger.addHandler(stream)
    return logger


def _round_floats(stats):
    out = {}
    for k, v in stats.items():
        if isinstance(v, float):
            out[k] = decimal.Decimal(f"{v:.5f}") if v == v and abs(v) != float("inf") else str(v)
        else:
            out[k] = v
    return out


def log_json_stats(stats, output_dir=None):
    """Log ``json_stats: {...}``; rank 0 also appends the line to OUTPUT_DIR/json_stats.log."""
    line = "json_stats: " + simplejson.dumps(_round_floats(stats), sort_keys=True, use_decimal=True)
    per_iter = str(stats.get("_type", "")).endswith("_iter")
    get_logger(__name__).info(line, extra={"iter_stats": per_iter})
    if output_dir and du.is_master_proc():
        with open(os.path.join(output_dir, "json_stats.log"), "a") as f:
            f.write(line + "\n")
    return line


class TensorboardWriter:
    """Scalars to OUTPUT_DIR/<TENSORBOARD.LOG_DIR or runs-<dataset>> (rank 0 only)."""

    def __init__(self, cfg):
        from torch.utils.tensorboard import SummaryWriter

        sub = cfg.TENSORBOARD.LOG_DIR or f"runs-{cfg.TRAIN.DATASET}"
        self.log_dir = os.path.join(cfg.OUTPUT_DIR, sub)
        self._writer = SummaryWriter(log_dir=self.log_dir)

    def add_scalars(self, scalars, global_step):
        for key, value in scalars.items():
            if value is not None:
                self._writer.add_scalar(key, value, global_step)

    def close(self):
        self._writer.flush()
        self._writer.close()
