"""The loader's batches under DATA_LOADER.TIMEOUT: a read that stalls ends the run with one paragraph.

Training, validation and testing iterate their loaders through ``batches(loader, cfg)``.
"""

import contextlib
import signal
import threading

from revvit.utils import distributed as du
from revvit.utils.errors import UserError

__all__ = ["DataStallError", "batches"]


class DataStallError(UserError):
    """Reading one batch took more than DATA_LOADER.TIMEOUT seconds (in a worker or in the main process)."""


def _stall(cfg, who):
    return DataStallError(
        f"rank {du.get_rank()}: {who} produced no batch in DATA_LOADER.TIMEOUT {cfg.DATA_LOADER.TIMEOUT} s; it is "
        f"blocked reading its files (a hung network file system, a pipe or device among the data in "
        f"{cfg.DATA.PATH_TO_DATA_DIR}). Check that storage; raise DATA_LOADER.TIMEOUT only if decoding one batch "
        "really takes that long."
    )


@contextlib.contextmanager
def _read_deadline(cfg, loader):
    """DATA_LOADER.TIMEOUT for a loader without workers, which DataLoader does not bound.

    A real-time timer (SIGALRM) interrupts whatever the read is blocked in (a FIFO, a socket, a stalled
    network mount: any read that waits, not only files of one kind), and its handler raises the same
    DataStallError a stalled worker gives. Only the main thread receives signals; elsewhere (and with
    workers, or TIMEOUT 0) this does nothing.
    """
    timeout = cfg.DATA_LOADER.TIMEOUT
    if loader.num_workers > 0 or not timeout or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise _stall(cfg, "the data loader (DATA_LOADER.NUM_WORKERS 0)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def batches(loader, cfg):
    """The loader's batches; a read stalled past DATA_LOADER.TIMEOUT becomes a one-paragraph error.

    DataLoader applies its ``timeout`` only with workers (construct_loader passes DATA_LOADER.TIMEOUT
    then) and raises a bare RuntimeError, which would otherwise look like a bug; without workers
    ``_read_deadline`` bounds each batch. A UserError raised in a worker (every file unreadable)
    arrives wrapped in the worker's traceback: its own paragraph is raised again.
    """
    it = iter(loader)
    while True:
        try:
            with _read_deadline(cfg, loader):
                batch = next(it)
        except StopIteration:
            return
        except UserError as e:
            raise _unwrapped(e) from None
        except RuntimeError as e:
            if "DataLoader timed out" not in str(e):
                raise
            raise _stall(cfg, "a data loader worker") from None
        yield batch


def _unwrapped(error):
    """A UserError re-raised by DataLoader carries the worker's traceback in its message
    ("Caught X in DataLoader worker process 0. Original Traceback ... X: <message>"); keep the message."""
    text = str(error)
    if "Original Traceback" not in text:
        return error
    name = type(error).__name__
    last = [line for line in text.splitlines() if line.split(":", 1)[0].endswith(name)]
    if last:
        error.args = (last[-1].split(": ", 1)[1],) + tuple(error.args[1:])
    return error
