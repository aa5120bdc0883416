"""Checkpoint files: atomic save, strict load (ours and official PySlowFast .pyth), resume discovery.

Layout and names match PySlowFast so files are interchangeable: a dict with ``epoch`` (0-based index
of the epoch just finished), ``model_state`` (no ``module.`` prefix), ``optimizer_state``, ``cfg``
(YAML string) and, with mixed precision, ``scaler_state``, saved as
``OUTPUT_DIR/checkpoints/checkpoint_epoch_{epoch+1:05d}.pyth``.

A run stopped by a signal mid-epoch (revvit.engine.preemption) saves
``checkpoint_epoch_{N:05d}_iter_{K:06d}.pyth``: N epochs and K iterations of the next one done, with
``iteration`` K and ``resume_state`` (every rank's RNG states and ``samples``, the samples of the
epoch the whole job has trained on, by which a resume with another batch size or another number of
processes finds its place) beside the usual entries. It sorts after the checkpoint of epoch N and is
removed once a newer checkpoint is saved.

Unlike PySlowFast, loading is strict: a missing, unexpected or wrongly shaped tensor is an error
naming the keys, because a silently half-loaded model wastes a training run. The one exception is
the classification head when fine-tuning to a different number of classes. Weights that are not
finite (NaN, inf) are refused wherever they are read (``read_checkpoint``): tested, they would score
like chance; trained from, they would stop the run at its first step.
"""

import contextlib
import os
import pickle
import re
import tempfile

import stat

import torch
from timm.utils import unwrap_model
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from . import distributed as du
from . import logging
from .errors import UserError

logger = logging.get_logger(__name__)

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "atomic_write",
    "check_finite",
    "checkpoint_dir",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "plain_states",
    "read_checkpoint",
    "remove_partial_files",
    "save_checkpoint",
    "set_plain_states",
]

_NAME = re.compile(r"^checkpoint_epoch_(\d{5,})(?:_iter_(\d{6,}))?\.pyth$")
_TEMP = re.compile(r"^\.checkpoint_epoch_\d{5,}(?:_iter_\d{6,})?\.pyth\..+\.tmp$")  # atomic_write's names
_WRITING = set()  # temporary files being written now, for remove_partial_files
_HEAD_PREFIX = "head."


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used as asked; the message names the file and the keys."""


class CheckpointWriteError(UserError):
    """A file could not be written (disk full, I/O error); nothing was left behind. ``errno`` is the cause's."""

    def __init__(self, message, errno=None):
        super().__init__(message)
        self.errno = errno


def checkpoint_dir(output_dir):
    return os.path.join(output_dir, "checkpoints")


def checkpoint_path(output_dir, epoch, iteration=0):
    """Path for the checkpoint written after ``epoch`` epochs (1-based count, as in the name) and
    ``iteration`` iterations of the next epoch (a mid-epoch checkpoint when > 0)."""
    mid = f"_iter_{iteration:06d}" if iteration else ""
    return os.path.join(checkpoint_dir(output_dir), f"checkpoint_epoch_{epoch:05d}{mid}.pyth")


def _progress(path):
    """(epochs, iterations) done when ``path`` was saved, from its name; None for another file."""
    m = _NAME.match(os.path.basename(path))
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def list_checkpoints(output_dir):
    """Complete checkpoints in OUTPUT_DIR/checkpoints, oldest first (temporary files ignored)."""
    d = checkpoint_dir(output_dir)
    if not os.path.isdir(d):
        return []
    found = [(_progress(name), os.path.join(d, name)) for name in os.listdir(d) if _NAME.match(name)]
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
        _WRITING.add(tmp)
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
    finally:
        _WRITING.discard(tmp)
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def remove_partial_files():
    """Remove the temporary files being written now: called by a process about to exit at once
    (a second stop signal), which skips every ``finally``; the finished files are untouched."""
    for tmp in list(_WRITING):
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _torch_save(obj, path):
    return atomic_write(path, lambda f: torch.save(obj, f))


def _remove_stale_temp_files(directory):
    """Temporary files of a writer that was killed mid-write (SIGKILL skips every cleanup): they only
    take space, and on a full disk they are what keeps it full. Only rank 0 writes checkpoints."""
    for name in os.listdir(directory):
        if _TEMP.match(name):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))  # a symlink is removed, never followed


def plain_states(model, optimizer):
    """(model state, optimizer state) of an unsharded model, without the wrapper's ``module.`` prefix."""
    return unwrap_model(model).state_dict(), optimizer.state_dict() if optimizer is not None else None


def _remove_superseded(path):
    """Mid-epoch checkpoints older than ``path``: a resume never needs them again (rank 0 only)."""
    newest = _progress(path)
    for other in list_checkpoints(os.path.dirname(os.path.dirname(path))):
        done = _progress(other)
        if done[1] and done < newest:
            with contextlib.suppress(OSError):
                os.unlink(other)


def save_checkpoint(
    output_dir, model, optimizer, epoch, cfg, scaler=None, class_names=None, iteration=0, resume_state=None, states=plain_states
):
    """Write the checkpoint of finished epoch ``epoch`` (0-based) on rank 0; returns its path.

    ``iteration`` > 0: a mid-epoch checkpoint, ``iteration`` steps into epoch ``epoch + 1``, with
    ``resume_state`` (what the trainer needs to continue exactly: every rank's RNG states and the
    samples of the epoch trained on). ``states`` gives (model state, optimizer state) in the plain
    layout; under FSDP pass ``revvit.engine.sharding.full_states``, a collective that every process must call.
    ``class_names`` (the training set's, index = label) travel with the weights so that
    tools/predict.py can name its predictions. Written by ``atomic_write``: a kill or a full disk at
    any moment leaves either the previous set of checkpoints or the complete new one, never a
    truncated or temporary file.
    """
    path = checkpoint_path(output_dir, epoch + 1, iteration)
    model_state, optimizer_state = states(model, optimizer)
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
    if iteration:
        state.update(iteration=int(iteration), resume_state=resume_state)
    if class_names is not None:
        state["class_names"] = list(class_names)
    if scaler is not None and scaler.is_enabled():
        state["scaler_state"] = scaler.state_dict()
    _torch_save(state, path)
    _remove_superseded(path)
    return path


def _unreadable(path, reason):
    return CheckpointError(
        f"Cannot read checkpoint '{path}': {reason}. A checkpoint is a file written by torch.save (a PySlowFast "
        ".pyth or a revvit checkpoint) holding only tensors and plain Python values, since revvit loads with "
        "weights_only=True; a truncated or damaged file must be deleted (an older checkpoint, if any, is then used)."
    )


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_PICKLE_PROTO = 0x80  # the legacy format (_use_new_zipfile_serialization=False) is a pickle, protocol >= 2


def _not_a_torch_file(path):
    """Why ``path`` cannot have been written by torch.save, from its first bytes; None when it may have been.

    Without this a text file reaches the unpickler, whose complaint about its first character comes
    with torch's advice to load with weights_only=False: the wrong advice for a file that is no
    checkpoint at all.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        return f"it cannot be opened ({e.strerror})"
    if not head:
        return "it is empty (0 bytes)"
    if head.startswith(_ZIP_MAGIC) or head[0] == _PICKLE_PROTO:
        return None
    return (
        f"it is not a checkpoint: a file written by torch.save is a zip archive (starting with 'PK') or a legacy "
        f"pickle (starting with byte 0x80), and this one starts with {head[:12]!r}"
    )


def _unpickling_reason(error):
    """What a weights_only refusal says about the file, without torch's advice to lift the restriction."""
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (
            f"it holds a Python object of type {found.group(1)}, and revvit loads only tensors and plain values "
            "(weights_only=True: a checkpoint cannot run code)"
        )
    found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    return f"its pickled data are not plain values ({(found.group(1) if found else text.splitlines()[0]).strip()})"


def check_finite(state, path):
    """Raise CheckpointError, naming ``path`` and the first tensor (in the file's order), if any floating
    tensor of ``state`` holds NaN or inf.

    A diverged run's weights load and run without complaint: a test then reports chance accuracy and
    predictions print nan. Integer tensors (counters, indices) cannot be non-finite and are skipped.
    """
    bad = [k for k, v in state.items() if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())]
    if not bad:
        return
    first = state[bad[0]]
    nan, inf = int(torch.isnan(first).sum()), int(torch.isinf(first).sum())
    more = f"; {len(bad) - 1} more tensor(s) too" if len(bad) > 1 else ""
    raise CheckpointError(
        f"Checkpoint '{path}' holds non-finite weights: '{bad[0]}' has {nan} NaN and {inf} inf of its "
        f"{first.numel()} values{more}. The run that saved it diverged; use an earlier checkpoint (delete this one "
        "to resume from the one before it)."
    )


def read_checkpoint(path):
    """Load a checkpoint dict on the CPU without executing any pickled code; its weights are finite.

    Whatever the file holds (text, a truncated zip, a pickle of classes, a FIFO, NaN weights), the
    result is the checkpoint dict or a CheckpointError naming the file: the unpickler and the zip
    reader raise IndexError, KeyError, UnpicklingError, RuntimeError ... for damaged input, all of them
    the file's fault.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise CheckpointError(f"Checkpoint file not found: '{path}'.") from None
    if not stat.S_ISREG(mode):  # a directory, a FIFO, a device: torch.load would block or fail obscurely
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a pipe or a device)"
        raise CheckpointError(f"Checkpoint '{path}' is {kind}; pass a checkpoint file (.pyth).")
    reason = _not_a_torch_file(path)
    if reason is not None:
        raise CheckpointError(f"Cannot read checkpoint '{path}': {reason}. Pass a checkpoint file (.pyth) written by torch.save.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _unreadable(path, _unpickling_reason(e)) from None
    except Exception as e:  # any other failure of the zip reader / unpickler: a damaged file
        raise _unreadable(path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'damaged data'}") from None
    state = ckpt.get("model_state") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        found = sorted(map(str, ckpt))[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"Checkpoint '{path}' has no 'model_state' dict of named tensors (found: {found}); expected a PySlowFast-style "
            ".pyth dict."
        )
    check_finite(state, path)
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


def _head_keys_to_skip(path, state, own, finetune_num_classes):
    """The head tensors left at their fresh initialisation (fine-tuning), or CheckpointError naming
    every missing, unexpected and misshapen key."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    skipped = []
    if finetune_num_classes is not None:
        skipped = [k for k in mismatched if k.startswith(_HEAD_PREFIX) and state[k].shape[0] != finetune_num_classes]
        mismatched = [k for k in mismatched if k not in skipped]
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
    return skipped


def set_plain_states(model, model_state, optimizer=None, optimizer_state=None):
    """Load states into an unsharded model (and optimizer); returns the model keys the state left out."""
    result = model.load_state_dict(model_state, strict=False)
    if optimizer is not None:
        optimizer.load_state_dict(optimizer_state)
    return result.missing_keys


def load_checkpoint(
    path, model, optimizer=None, scaler=None, finetune_num_classes=None, clear_name_patterns=(), set_states=set_plain_states
):
    """Load ``path`` into ``model`` (and optimizer / scaler when given and present in the file).

    ``finetune_num_classes``: when set, head tensors whose shape differs because the checkpoint was
    trained for another number of classes are skipped (kept at their fresh initialisation) and
    reported; every other mismatch is an error. ``set_states(model, model_state, optimizer,
    optimizer_state)`` loads the plain-layout states and returns the keys left out of the model
    (``revvit.engine.sharding.set_full_states`` under FSDP). Returns a dict with ``epoch`` (the file's
    0-based epoch, -1 if absent), ``iteration`` (> 0 for a mid-epoch checkpoint), ``resume_state``,
    ``skipped_keys``, ``cfg`` (the file's YAML string or None) and ``class_names`` (or None).
    """
    ckpt = read_checkpoint(path)
    target = unwrap_model(model)
    state = _clean_keys(ckpt["model_state"], clear_name_patterns)
    skipped = _head_keys_to_skip(path, state, target.state_dict(), finetune_num_classes)
    for k in skipped:
        del state[k]
    # With a new head the saved optimizer state belongs to other parameters: leave it out.
    optimizer_state = ckpt.get("optimizer_state") if optimizer is not None and not skipped else None
    try:
        left_out = set_states(target, state, optimizer if optimizer_state is not None else None, optimizer_state)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"Optimizer state in '{path}' does not fit this model's parameter groups: {e}") from e
    assert sorted(left_out) == sorted(skipped), left_out
    if scaler is not None and not skipped and scaler.is_enabled() and ckpt.get("scaler_state"):
        scaler.load_state_dict(ckpt["scaler_state"])
    return {
        "epoch": int(ckpt.get("epoch", -1)),
        "iteration": int(ckpt.get("iteration", 0)),
        "resume_state": ckpt.get("resume_state"),
        "skipped_keys": skipped,
        "cfg": ckpt.get("cfg"),
        "class_names": ckpt.get("class_names"),
    }
