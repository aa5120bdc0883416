"""Checkpoint files: atomic save, strict load (ours and official PySlowFast .pyth), resume discovery.

Layout and names match PySlowFast so files are interchangeable: a dict with ``epoch`` (0-based index
of the epoch just finished), ``model_state`` (no ``module.`` prefix), ``optimizer_state``, ``cfg``
(YAML string) and, with mixed precision, ``scaler_state``, saved as
``OUTPUT_DIR/checkpoints/checkpoint_epoch_{epoch+1:05d}.pyth``.

Unlike PySlowFast, loading is strict: a missing, unexpected or wrongly shaped tensor is an error
naming the keys, because a silently half-loaded model wastes a training run. The one exception is
the classification head when fine-tuning to a different number of classes.
"""

import contextlib
import os
import pickle
import re
import tempfile

import torch
from timm.utils import unwrap_model
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    StateDictOptions,
)
from torch.distributed.tensor import DTensor

from . import distributed as du
from . import logging
from .errors import UserError

logger = logging.get_logger(__name__)

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "atomic_write",
    "checkpoint_dir",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]

_NAME = re.compile(r"^checkpoint_epoch_(\d{5,})\.pyth$")
_TEMP = re.compile(r"^\.checkpoint_epoch_\d{5,}\.pyth\..+\.tmp$")  # atomic_write's names
_HEAD_PREFIX = "head."


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used as asked; the message names the file and the keys."""


class CheckpointWriteError(UserError):
    """A file could not be written (disk full, I/O error); nothing was left behind. ``errno`` is the cause's."""

    def __init__(self, message, errno=None):
        super().__init__(message)
        self.errno = errno


def _is_sharded(model):
    return any(isinstance(p, DTensor) for p in model.parameters())


def _full_states(model, optimizer):
    """Model and optimizer state as full, unsharded tensors in the layout of a plain run (optimizer
    state keyed by parameter index, as ``optimizer.state_dict()``), so FSDP and plain checkpoints are
    interchangeable. Under FSDP (MODEL.FSDP) every process must call this; only rank 0 gets the states."""
    if not _is_sharded(model):
        return model.state_dict(), optimizer.state_dict() if optimizer is not None else None
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    if optimizer is None:
        return model_state, None
    named = get_optimizer_state_dict(model, optimizer, options=options)
    if not named:  # not rank 0
        return model_state, None
    index = {}
    groups = [dict(g, params=[index.setdefault(n, len(index)) for n in g["params"]]) for g in named["param_groups"]]
    return model_state, {"state": {index[n]: v for n, v in named["state"].items()}, "param_groups": groups}


def _optimizer_state_by_name(state, model, optimizer):
    """An index-keyed optimizer state (``optimizer.state_dict()`` layout) keyed by parameter names,
    as ``set_optimizer_state_dict`` takes it."""
    name_of = {p: n for n, p in model.named_parameters()}
    names = [name_of[p] for g in optimizer.param_groups for p in g["params"]]
    groups = [dict(g, params=[names[i] for i in g["params"]]) for g in state["param_groups"]]
    return {"state": {names[i]: v for i, v in state["state"].items()}, "param_groups": groups}


def checkpoint_dir(output_dir):
    return os.path.join(output_dir, "checkpoints")


def checkpoint_path(output_dir, epoch):
    """Path for the checkpoint written after ``epoch`` epochs (1-based count, as in the name)."""
    return os.path.join(checkpoint_dir(output_dir), f"checkpoint_epoch_{epoch:05d}.pyth")


def list_checkpoints(output_dir):
    """Complete checkpoints in OUTPUT_DIR/checkpoints, oldest first (temporary files ignored)."""
    d = checkpoint_dir(output_dir)
    if not os.path.isdir(d):
        return []
    found = []
    for name in os.listdir(d):
        m = _NAME.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(d, name)))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir):
    files = list_checkpoints(output_dir)
    return files[-1] if files else None


class _KeepWriteError:
    """A binary file whose write() remembers the OSError it raised.

    torch.save reports a failed write as "RuntimeError: [enforce fail at inline_container.cc] .
    unexpected pos", which hides the cause (no space left, an I/O error); this keeps it.
    """

    def __init__(self, f):
        self._f = f
        self.error = None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        self._f.flush()


def atomic_write(path, write):
    """Call ``write(f)`` on a new binary file that then atomically replaces ``path``.

    The temporary file is created exclusively (mkstemp: O_CREAT | O_EXCL, mode 0600) under a random
    name in the target directory, so a file or symlink planted at a predictable name cannot redirect
    the write, and the rename stays within one file system. The data are flushed to disk before the
    rename, so a crash leaves either the old file or the complete new one. If anything fails, the
    temporary file is removed and ``path`` is untouched; an OSError (ENOSPC, EIO, ...) becomes a
    CheckpointWriteError naming its cause and the path.
    """
    directory = os.path.dirname(path) or "."
    tmp = sink = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file private (0600); the finished file gets the usual umask permissions.
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)
            sink = _KeepWriteError(f)
            write(sink)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        cause = sink.error if sink is not None and sink.error is not None else e
        if isinstance(cause, OSError):
            reason = cause.strerror or str(cause)
            raise CheckpointWriteError(
                f"{reason} writing {path} (nothing was left behind; the files already there are intact).", cause.errno
            ) from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def _torch_save(obj, path):
    return atomic_write(path, lambda f: torch.save(obj, f))


def _remove_stale_temp_files(directory):
    """Temporary files of a writer that was killed mid-write (SIGKILL skips every cleanup): they only
    take space, and on a full disk they are what keeps it full. Only rank 0 writes checkpoints."""
    for name in os.listdir(directory):
        if _TEMP.match(name):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))  # a symlink is removed, never followed


def save_checkpoint(output_dir, model, optimizer, epoch, cfg, scaler=None, class_names=None):
    """Write the checkpoint of finished epoch ``epoch`` (0-based) on rank 0; returns its path.

    ``class_names`` (the training set's, index = label) travel with the weights so that
    tools/predict.py can name its predictions. Written by ``atomic_write``: a kill or a full disk at
    any moment leaves either the previous set of checkpoints or the complete new one, never a
    truncated or temporary file.
    """
    path = checkpoint_path(output_dir, epoch + 1)
    model_state, optimizer_state = _full_states(unwrap_model(model), optimizer)  # collective under FSDP
    if not du.is_master_proc():
        return path
    try:
        os.makedirs(checkpoint_dir(output_dir), exist_ok=True)
    except OSError as e:
        raise CheckpointWriteError(f"{e.strerror} creating {checkpoint_dir(output_dir)}.", e.errno) from None
    _remove_stale_temp_files(checkpoint_dir(output_dir))
    state = {
        "epoch": epoch,
        "model_state": model_state,
        "optimizer_state": optimizer_state,
        "cfg": cfg.dump(),
    }
    if class_names is not None:
        state["class_names"] = list(class_names)
    if scaler is not None and scaler.is_enabled():
        state["scaler_state"] = scaler.state_dict()
    _torch_save(state, path)
    return path


def read_checkpoint(path):
    """Load a checkpoint dict on the CPU without executing any pickled code."""
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint file not found: '{path}'.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(
            f"Cannot read checkpoint '{path}': {e}. revvit loads checkpoints with weights_only=True, "
            "so the file must hold only tensors and plain Python values (as PySlowFast .pyth files do); "
            "a truncated file must be deleted."
        ) from e
    if not isinstance(ckpt, dict) or "model_state" not in ckpt:
        keys = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"Checkpoint '{path}' has no 'model_state' entry (found: {keys}); expected a PySlowFast-style .pyth dict.")
    return ckpt


def _clean_keys(state, clear_name_patterns):
    state = dict(state)
    consume_prefix_in_state_dict_if_present(state, "module.")  # saved from a DDP-wrapped model
    for pattern in clear_name_patterns or ():
        state = {k.replace(pattern, "", 1): v for k, v in state.items()}
    return state


def _fmt(keys, limit=20):
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_checkpoint(path, model, optimizer=None, scaler=None, finetune_num_classes=None, clear_name_patterns=()):
    """Load ``path`` into ``model`` (and optimizer / scaler when given and present in the file).

    ``finetune_num_classes``: when set, head tensors whose shape differs because the checkpoint was
    trained for another number of classes are skipped (kept at their fresh initialisation) and
    reported; every other mismatch is still an error. Returns a dict with ``epoch`` (the file's
    0-based epoch, -1 if absent), ``skipped_keys``, ``cfg`` (the file's YAML string or None) and
    ``class_names`` (the training set's class names, or None when the file does not carry them).
    """
    ckpt = read_checkpoint(path)
    target = unwrap_model(model)
    state = _clean_keys(ckpt["model_state"], clear_name_patterns)
    own = target.state_dict()

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    skipped = []
    if finetune_num_classes is not None:
        for k in list(mismatched):
            if k.startswith(_HEAD_PREFIX) and state[k].shape[0] != finetune_num_classes:
                skipped.append(k)
                mismatched.remove(k)
    problems = []
    if missing:
        problems.append(f"missing in the checkpoint: {_fmt(missing)}")
    if unexpected:
        problems.append(f"not in the model: {_fmt(unexpected)}")
    if mismatched:
        shapes = [f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})" for k in mismatched]
        problems.append(f"shape mismatch: {_fmt(shapes)}")
    if problems:
        raise CheckpointError(
            f"Checkpoint '{path}' does not fit the model built from this config; "
            + "; ".join(problems)
            + ". Use the config the checkpoint was trained with (its 'cfg' entry holds it)."
        )
    for k in skipped:
        logger.warning(
            f"Fine-tuning: not loading '{k}' (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}); "
            f"it keeps its fresh initialisation for MODEL.NUM_CLASSES {finetune_num_classes}."
        )
        del state[k]
    if _is_sharded(target):
        result = set_model_state_dict(target, state, options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        result = target.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == sorted(skipped) and not result.unexpected_keys, result

    # With a new head the saved optimizer state belongs to other parameters: leave it out.
    if optimizer is not None and not skipped and ckpt.get("optimizer_state") is not None:
        try:
            if _is_sharded(target):
                named = _optimizer_state_by_name(ckpt["optimizer_state"], target, optimizer)
                set_optimizer_state_dict(target, optimizer, named, options=StateDictOptions(full_state_dict=True))
            else:
                optimizer.load_state_dict(ckpt["optimizer_state"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"Optimizer state in '{path}' does not fit this model's parameter groups: {e}") from e
    if scaler is not None and not skipped and scaler.is_enabled() and ckpt.get("scaler_state"):
        scaler.load_state_dict(ckpt["scaler_state"])
    return {"epoch": int(ckpt.get("epoch", -1)), "skipped_keys": skipped, "cfg": ckpt.get("cfg"), "class_names": ckpt.get("class_names")}
