"""Which weights a run starts from: one answer for training, testing and predicting.

Training: the newest checkpoint of OUTPUT_DIR (TRAIN.AUTO_RESUME; it continues that schedule), else
TRAIN.CHECKPOINT_FILE_PATH, else the official weights of MODEL.PRETRAINED, else a fresh model.
Testing: TEST.CHECKPOINT_FILE_PATH, else the newest checkpoint of OUTPUT_DIR, else
TRAIN.CHECKPOINT_FILE_PATH, else MODEL.PRETRAINED. Predicting: the file or official model name given
on the command line, else MODEL.PRETRAINED.

``resume_or_init`` loads a training run's ``Start`` into the model, optimizer and scaler and returns
the ``Position`` (epoch, iteration, RNG states) its epoch loop continues from.
"""

import os
from dataclasses import dataclass

import yaml

from revvit.models.factory import list_models, pretrained_checkpoint, pretrained_file
from revvit.utils import checkpoint as cu
from revvit.utils import logging

from . import resume, run_dir, sharding

logger = logging.get_logger(__name__)

__all__ = ["Position", "Start", "resume_or_init", "start_weights"]


@dataclass(frozen=True)
class Start:
    path: str  # "" for a fresh model
    source: str  # what chose it, for messages
    resume: bool = False  # this run's own checkpoint: continue its schedule (optimizer, epoch, iteration)
    new_run: bool = False  # official weights: train them from epoch 1 with a fresh optimizer, whatever their epoch


def _train(cfg):
    last = cu.latest_checkpoint(cfg.OUTPUT_DIR) if cfg.TRAIN.AUTO_RESUME else None
    if last is not None:
        return Start(last, "OUTPUT_DIR", resume=True)
    if cfg.TRAIN.CHECKPOINT_FILE_PATH:
        return Start(cfg.TRAIN.CHECKPOINT_FILE_PATH, "TRAIN.CHECKPOINT_FILE_PATH")
    if cfg.MODEL.PRETRAINED:
        return Start(pretrained_checkpoint(cfg), "MODEL.PRETRAINED", new_run=True)
    return Start("", "a fresh initialisation")


def _test(cfg):
    if cfg.TEST.CHECKPOINT_FILE_PATH:
        return Start(cfg.TEST.CHECKPOINT_FILE_PATH, "TEST.CHECKPOINT_FILE_PATH")
    last = cu.latest_checkpoint(cfg.OUTPUT_DIR)
    if last is not None:
        return Start(last, "OUTPUT_DIR")
    if cfg.TRAIN.CHECKPOINT_FILE_PATH:
        return Start(cfg.TRAIN.CHECKPOINT_FILE_PATH, "TRAIN.CHECKPOINT_FILE_PATH")
    if cfg.MODEL.PRETRAINED:
        return Start(pretrained_checkpoint(cfg), "MODEL.PRETRAINED")
    raise cu.CheckpointError(
        f"Nothing to test: TEST.CHECKPOINT_FILE_PATH is empty and {cu.checkpoint_dir(cfg.OUTPUT_DIR)} holds no "
        "checkpoint. Pass TEST.CHECKPOINT_FILE_PATH <file.pyth> (or MODEL.PRETRAINED <name>) or train first (TRAIN.ENABLE True)."
    )


def _looks_like_a_name(given):
    """``rev_vit_xl``: no folder, no extension, and no such file. A model name, probably misspelt."""
    return not os.path.exists(given) and os.sep not in given and not os.path.splitext(given)[1]


def _predict(cfg, given):
    if given in list_models(pretrained=True):
        return Start(pretrained_file(given), "--checkpoint")
    if given and _looks_like_a_name(given):
        raise cu.CheckpointError(
            f"--checkpoint '{given}' is neither a file nor an official model name; names with weights: "
            f"{', '.join(list_models(pretrained=True))} (revvit.list_models(pretrained=True))."
        )
    if given:
        return Start(given, "--checkpoint")
    if cfg.MODEL.PRETRAINED:
        return Start(pretrained_checkpoint(cfg), "MODEL.PRETRAINED")
    raise cu.CheckpointError("No weights to predict with: pass --checkpoint FILE (or an official model name), or set MODEL.PRETRAINED.")


def start_weights(cfg, purpose, given=""):
    """The ``Start`` of a ``purpose`` ("train", "test" or "predict"; ``given``: predict's --checkpoint)."""
    if purpose == "train":
        return _train(cfg)
    if purpose == "test":
        return _test(cfg)
    if purpose == "predict":
        return _predict(cfg, given)
    raise ValueError(f"unknown purpose {purpose!r}")


@dataclass(frozen=True)
class Position:
    """Where training starts: 0-based epoch, iterations of it already done, and the ranks' RNG states."""

    epoch: int
    iteration: int = 0
    resume_state: dict = None


def _load(path, model, optimizer=None, scaler=None, **kwargs):
    return cu.load_checkpoint(path, model, optimizer, scaler, set_states=sharding.set_full_states, **kwargs)


def _log_config_changes(saved_cfg, cfg, path):
    """Say which settings a resume changes: the run continues with this config, not the checkpoint's."""
    try:
        changes = run_dir.config_changes(saved_cfg, cfg.dump()) if saved_cfg else []
    except yaml.YAMLError:
        return
    if changes:
        logger.info(f"The config differs from the one {path} was trained with: {run_dir.describe_changes(changes)}")


def resume_or_init(cfg, model, optimizer, scaler):
    """The position to start from: the run's own newest checkpoint (AUTO_RESUME), else initial weights.

    A mid-epoch position carries the checkpoint's record with the samples of the epoch consumed;
    ``iteration`` is the saved run's count until ``resume.first_iteration`` renumbers it for this
    job's batches (the loader is built later).
    """
    start = start_weights(cfg, "train")
    if start.resume:
        info = _load(start.path, model, optimizer, scaler)
        _log_config_changes(info["cfg"], cfg, start.path)
        if info["iteration"]:
            state = resume.with_samples(info["resume_state"], info["iteration"], info["cfg"])
            logger.info(
                f"Resuming from {start.path} (epoch {info['epoch'] + 2}, after iteration {info['iteration']}): "
                f"{state['samples']} samples of the epoch trained"
            )
            return Position(info["epoch"] + 1, info["iteration"], state)
        logger.info(f"Resuming from {start.path} (epoch {info['epoch'] + 1} of {cfg.SOLVER.MAX_EPOCH} done)")
        return Position(info["epoch"] + 1)
    if not start.path:
        return Position(0)
    return Position(_initialise(cfg, start, model, optimizer, scaler))


def _initialise(cfg, start, model, optimizer, scaler):
    """Load TRAIN.CHECKPOINT_FILE_PATH or MODEL.PRETRAINED; returns the epoch to start at."""
    path = start.path
    reset = cfg.TRAIN.CHECKPOINT_EPOCH_RESET or start.new_run
    info = _load(
        path,
        model,
        None if reset else optimizer,
        None if reset else scaler,
        finetune_num_classes=cfg.MODEL.NUM_CLASSES,
        clear_name_patterns=cfg.TRAIN.CHECKPOINT_CLEAR_NAME_PATTERN,
    )
    if info["skipped_keys"]:
        # A new head means a new task: the old optimizer state and epoch count do not apply.
        logger.info(f"Initialised from {path} with a new head; training starts at epoch 1")
        return 0
    if reset or info["epoch"] < 0:
        logger.info(f"Initialised from {path}; training starts at epoch 1")
        return 0
    if info["epoch"] + 1 >= cfg.SOLVER.MAX_EPOCH:
        raise cu.CheckpointError(
            f"TRAIN.CHECKPOINT_FILE_PATH '{path}' was saved after epoch {info['epoch'] + 1} and SOLVER.MAX_EPOCH is "
            f"{cfg.SOLVER.MAX_EPOCH}, so this run would have nothing left to train. To train these weights on a new "
            "schedule from epoch 1, set TRAIN.CHECKPOINT_EPOCH_RESET True; to continue the old schedule, set "
            f"SOLVER.MAX_EPOCH above {info['epoch'] + 1}."
        )
    logger.info(
        f"Initialised from {path} (epoch {info['epoch'] + 1}); continuing at epoch {info['epoch'] + 2} of "
        f"{cfg.SOLVER.MAX_EPOCH}. Set TRAIN.CHECKPOINT_EPOCH_RESET True to start at epoch 1."
    )
    return info["epoch"] + 1
