"""Checkpoint files: atomic save, strict load (ours and official PySlowFast .pyth), resume discovery.

Layout and names match PySlowFast so files are interchangeable: a dict with ``epoch`` (0-based index
of the epoch just finished), ``model_state`` (no ``module.`` prefix), ``optimizer_state``, ``cfg``
(YAML string) and, with mixed precision, ``scaler_state``, saved as
``OUTPUT_DIR/checkpoints/checkpoint_epoch_{epoch+1:05d}.pyth``.

Unlike PySlowFast, loading is strict: a missing, unexpected or wrongly shaped tensor is an error
naming the keys, because a silently half-loaded model wastes a training run. The one exception is
the classification head when fine-tuning to a different number of classes.
"""

import os
import pickle
import re

import torch

from . import distributed as du
from . import logging

logger = logging.get_logger(__name__)

__all__ = [
    "CheckpointError",
    "checkpoint_dir",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "unwrap_model",
]

_NAME = re.compile(r"^checkpoint_epoch_(\d{5,})\.pyth$")
_HEAD_PREFIX = "head."


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as asked; the message names the file and the keys."""


def unwrap_model(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


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


def _atomic_torch_save(obj, path):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_checkpoint(output_dir, model, optimizer, epoch, cfg, scaler=None, class_names=None):
    """Write the checkpoint of finished epoch ``epoch`` (0-based) on rank 0; returns its path.

    ``class_names`` (the training set's, index = label) travel with the weights so that
    tools/predict.py can name its predictions.

    Written to ``<path>.tmp``, flushed to disk and renamed, so a kill at any moment leaves either
    the previous set of checkpoints or the complete new one, never a truncated file.
    """
    path = checkpoint_path(output_dir, epoch + 1)
    if not du.is_master_proc():
        return path
    os.makedirs(checkpoint_dir(output_dir), exist_ok=True)
    state = {
        "epoch": epoch,
        "model_state": unwrap_model(model).state_dict(),
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "cfg": cfg.dump(),
    }
    if class_names is not None:
        state["class_names"] = list(class_names)
    if scaler is not None and scaler.is_enabled():
        state["scaler_state"] = scaler.state_dict()
    _atomic_torch_save(state, path)
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
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
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
    result = target.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == sorted(skipped) and not result.unexpected_keys, result

    # With a new head the saved optimizer state belongs to other parameters: leave it out.
    if optimizer is not None and not skipped and ckpt.get("optimizer_state") is not None:
        try:
            optimizer.load_state_dict(ckpt["optimizer_state"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"Optimizer state in '{path}' does not fit this model's parameter groups: {e}") from e
    if scaler is not None and not skipped and scaler.is_enabled() and ckpt.get("scaler_state"):
        scaler.load_state_dict(ckpt["scaler_state"])
    return {"epoch": int(ckpt.get("epoch", -1)), "skipped_keys": skipped, "cfg": ckpt.get("cfg"), "class_names": ckpt.get("class_names")}
