"""A run owns its OUTPUT_DIR: one writer at a time, and nothing another run wrote is lost.

``claimed(cfg, purpose)`` is entered by every process of the job before any of them touches the
folder. Rank 0 takes the folder's lock (``revvit.utils.run_lock``) and, for training, checks what
would otherwise fail or destroy work later: the checkpoint folder must be writable (a symlink loop
would end the run after its first epoch), and a folder holding checkpoints is either resumed
(TRAIN.AUTO_RESUME) or refused, never trained over. Every rank learns rank 0's answer through one
broadcast, so a refusal ends the whole job with the same paragraph and no rank writes before rank 0
holds the lock.

``record_config`` writes ``config.yaml``; a different config already there (a resume with other
settings) is kept as ``config.yaml.1``, ``.2``, ... in the order they were replaced.
``prepare_output_dir`` creates OUTPUT_DIR and proves it writable before any work is done.
"""

import contextlib
import os
import re
import stat
import tempfile

import torch.distributed as dist
import yaml

from revvit.utils import checkpoint as cu
from revvit.utils import distributed as du
from revvit.utils import logging, run_lock
from revvit.utils.errors import UserError

logger = logging.get_logger(__name__)

__all__ = [
    "OutputDirError",
    "RunDirError",
    "claimed",
    "config_changes",
    "describe_changes",
    "log_notes",
    "prepare_output_dir",
    "record_config",
]

_DOING = {"train": "training", "test": "testing", None: "running"}
_NOTES = []  # what rank 0 has to say about the lock, until logging is set up (log_notes)


class RunDirError(UserError):
    """OUTPUT_DIR cannot be used by this run as it is; the message says what to change."""


class OutputDirError(UserError):
    """OUTPUT_DIR cannot hold the run's files (it is a file, or not writable)."""


def prepare_output_dir(output_dir):
    """Create OUTPUT_DIR and check that files can be written in it, before any work is done.

    Without this check an OUTPUT_DIR that is a file or read-only surfaces as a traceback from the
    logging setup, or after the first epoch when the checkpoint is saved.
    """
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f".revvit_write_test_{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        what = "is a file, not a directory" if os.path.isfile(output_dir) else f"cannot be written ({e.strerror}: {e.filename})"
        raise OutputDirError(
            f"OUTPUT_DIR '{output_dir}' {what}. Pass OUTPUT_DIR <a directory you can write to>."
        ) from None
    checkpoints = os.path.join(output_dir, "checkpoints")
    if os.path.exists(checkpoints) and not os.path.isdir(checkpoints):
        raise OutputDirError(
            f"{checkpoints} is a file, but checkpoints are saved in a directory of that name. Move the file away, "
            "or pass another OUTPUT_DIR."
        )


def _check_checkpoint_dir(output_dir):
    """Create the checkpoint folder and write a file in it before training, not after the first epoch."""
    d = cu.checkpoint_dir(output_dir)
    try:
        if not os.path.lexists(d):
            os.makedirs(d)
        elif not stat.S_ISDIR(os.stat(d).st_mode):  # os.stat follows links: a loop or a dangling link raises
            raise OutputDirError(f"{d} is not a folder, but checkpoints are saved in a folder of that name. Move it away, or pass another OUTPUT_DIR.")
        fd, probe = tempfile.mkstemp(prefix=".revvit_write_test_", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        link = f" (a symbolic link to '{os.readlink(d)}')" if os.path.islink(d) else ""
        raise RunDirError(
            f"The checkpoint folder {d}{link} cannot be used: {e.strerror}. Checkpoints are saved there after every "
            "epoch, so the run stopped before training. Make it a folder you can write to (or remove it: it is then "
            "created), or pass another OUTPUT_DIR."
        ) from None


def _check_not_over_another_run(cfg):
    last = cu.latest_checkpoint(cfg.OUTPUT_DIR)
    if last is not None and not cfg.TRAIN.AUTO_RESUME:
        raise RunDirError(
            f"OUTPUT_DIR '{cfg.OUTPUT_DIR}' holds the checkpoints of an earlier run (the newest: {os.path.basename(last)}) "
            "and TRAIN.AUTO_RESUME is False, so this run would start over and overwrite them one by one, leaving a "
            "mixture of two runs. Pass a new OUTPUT_DIR to start a new run, or set TRAIN.AUTO_RESUME True to continue "
            "that one."
        )


def _agree(message):
    """Rank 0's refusal (a message) or None, known to every rank: one broadcast, which the other ranks
    wait in until rank 0 holds the lock."""
    if du.get_world_size() == 1:
        return message
    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def claimed(cfg, purpose=None):
    """``with claimed(cfg, "train" | "test" | None):`` the job holds OUTPUT_DIR; a collective.

    Raises on every rank when rank 0 refused: the original error there, RunDirError with the same
    message elsewhere. The lock is released on the way out, however the block ends. Nested claims in
    one process (train, then test, inside one job) share the lock. What rank 0 has to say (a lock
    taken over from a dead run) waits for ``log_notes``, called once logging writes to OUTPUT_DIR.
    """
    error, locked = None, False
    if du.is_master_proc():
        try:
            prepare_output_dir(cfg.OUTPUT_DIR)
            note = run_lock.acquire(cfg.OUTPUT_DIR, _DOING[purpose])
            locked = True
            _NOTES.extend([note] if note else [])
            if purpose == "train":
                _check_checkpoint_dir(cfg.OUTPUT_DIR)
                _check_not_over_another_run(cfg)
        except UserError as e:
            error = e
            if locked:
                run_lock.release(cfg.OUTPUT_DIR)
                locked = False
    message = _agree(str(error) if error is not None else None)
    if error is not None:
        raise error
    if message is not None:
        raise RunDirError(message)
    try:
        yield
    finally:
        if locked:
            run_lock.release(cfg.OUTPUT_DIR)


def log_notes():
    while _NOTES:
        logger.info(_NOTES.pop(0))


def _flat(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def config_changes(old_yaml, new_yaml):
    """``[(key, old value, new value)]`` of every key whose value differs between two dumped configs
    (a key missing from one side has the value None there), sorted by key."""
    old, new = _flat(yaml.safe_load(old_yaml) or {}), _flat(yaml.safe_load(new_yaml) or {})
    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def describe_changes(changes, limit=20):
    shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changes[:limit])
    return shown + (f", ... ({len(changes)} in all)" if len(changes) > limit else "")


def record_config(output_dir, name, text):
    """Write ``text`` to ``output_dir/name`` (rank 0); a different file already there is kept as
    ``name.N`` (N one more than the highest kept), so the history of a run's settings survives its
    resumes. Returns ``(kept path or None, changes)``."""
    path = os.path.join(output_dir, name)
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = None
    kept, changes = None, []
    if old is not None and old != text:
        pattern = re.compile(re.escape(name) + r"\.(\d+)$")
        numbers = [int(m.group(1)) for m in map(pattern.match, os.listdir(output_dir)) if m]
        kept = f"{path}.{max(numbers, default=0) + 1}"
        os.replace(path, kept)
        try:
            changes = config_changes(old, text)
        except yaml.YAMLError:  # a file that is not a config: kept all the same
            changes = []
    cu.atomic_write(path, lambda f: f.write(text.encode()))
    return kept, changes
