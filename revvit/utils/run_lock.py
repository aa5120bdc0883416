"""One run at a time in an OUTPUT_DIR: an OS lock on ``OUTPUT_DIR/run.lock`` naming its holder.

Two runs writing one folder overwrite each other's checkpoints and config, and the second may resume
from the first's half-trained epoch: both then finish "successfully" with a mixture of the two. The
lock makes the second one stop at once with a paragraph naming the first (pid, host, since when).

The lock is a POSIX record lock (``fcntl.lockf``), which the kernel drops the moment its process
dies, however it dies (SIGKILL, a crash, the machine's OOM killer), and which works on NFS. Not
``flock``: forked DataLoader workers would share a flock and keep it after their trainer was killed.
A record lock belongs to the process alone, so one process must not open and close the file a second
time while it holds the lock (that would drop it): the holder is counted here instead, and taking
the lock again in the same process only counts up.

The file keeps the holder's pid, host and start time while it is held and is emptied on release, so
a record found in a file that nobody locks was left by a process that ended without releasing it;
the lock is then taken over, and said so.
"""

import errno
import fcntl
import json
import os
import socket
import threading
import time

from . import logging
from .errors import UserError

logger = logging.get_logger(__name__)

__all__ = ["LOCK_NAME", "RunLockError", "acquire", "release"]

LOCK_NAME = "run.lock"

_HELD = {}  # real path of the lock file -> [fd, count]
_GUARD = threading.Lock()


class RunLockError(UserError):
    """Another process holds the lock of this OUTPUT_DIR; the message names it."""


def _record(what):
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "what": what}


def _read_record(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    try:
        record = json.loads(data.decode())
    except ValueError:  # empty (released cleanly, or the holder has not written it yet) or foreign text
        return None
    return record if isinstance(record, dict) and "pid" in record else None


def _describe(record):
    if record is None:
        return "a process that has not yet written its name into the lock file"
    return f"pid {record.get('pid')} on host {record.get('host')}, {record.get('what', 'running')} there since {record.get('since')}"


def _alive_here(record):
    """Whether the recorded process still exists; None when it ran on another host (cannot tell)."""
    if record.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def acquire(output_dir, what):
    """Take the lock of ``output_dir`` for this process (``what``: "training", "testing", for the holder's
    record); raises RunLockError naming the holder when another process has it.

    Returns a log line when a lock left by a process that ended without releasing it was taken over,
    else None. Taking it again in the same process counts up; ``release`` counts down.
    """
    path = os.path.realpath(os.path.join(output_dir, LOCK_NAME))
    with _GUARD:
        if path in _HELD:
            _HELD[path][1] += 1
            return None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # another user's run left it, or a folder of that name
            raise RunLockError(
                f"Cannot open the lock file {path} of OUTPUT_DIR '{output_dir}' ({e.strerror}); it keeps a second run "
                "out while one trains there. Pass an OUTPUT_DIR of your own, or remove the file if no run uses the folder."
            ) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_record(fd) if e.errno in (errno.EACCES, errno.EAGAIN) else None
            os.close(fd)
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise RunLockError(
                    f"OUTPUT_DIR '{output_dir}' is in use by another run: {_describe(holder)} (lock file {path}). Two runs "
                    "in one OUTPUT_DIR overwrite each other's checkpoints and config.yaml, so this one stopped before "
                    "writing anything. Wait for that run to end (or stop it), or pass another OUTPUT_DIR."
                ) from None
            # A file system without locks (ENOLCK, an old NFS): run unprotected rather than not at all.
            logger.warning(f"Cannot lock {path} ({e.strerror}): nothing keeps a second run out of OUTPUT_DIR '{output_dir}'.")
            return None
        previous = _read_record(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_record(what)).encode() + b"\n", 0)
        _HELD[path] = [fd, 1]
    if previous is None:
        return None
    alive = _alive_here(previous)
    ended = "that process no longer exists" if alive is False else "no process holds the lock any more"
    return f"Took over {path}, left by {_describe(previous)}: {ended}, so it ended without releasing it."


def release(output_dir):
    """Count down the lock of ``output_dir`` taken by this process; the last release empties the file and unlocks it."""
    path = os.path.realpath(os.path.join(output_dir, LOCK_NAME))
    with _GUARD:
        held = _HELD.get(path)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[path]
        fd = held[0]
        try:
            os.ftruncate(fd, 0)  # a record left in the file means its writer died holding the lock
        except OSError:
            pass
        os.close(fd)  # closing the process's only descriptor of the file drops the lock
