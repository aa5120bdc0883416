"""Which weights a run starts from: one answer for training, testing and predicting.

Training: the newest checkpoint of OUTPUT_DIR (TRAIN.AUTO_RESUME; it continues that schedule), else
TRAIN.CHECKPOINT_FILE_PATH, else the official weights of MODEL.PRETRAINED, else a fresh model.
Testing: TEST.CHECKPOINT_FILE_PATH, else the newest checkpoint of OUTPUT_DIR, else
TRAIN.CHECKPOINT_FILE_PATH, else MODEL.PRETRAINED. Predicting: the file or official model name given
on the command line, else MODEL.PRETRAINED.
"""

import os
from dataclasses import dataclass

from revvit.models.factory import list_models, pretrained_checkpoint, pretrained_file
from revvit.utils import checkpoint as cu

__all__ = ["Start", "start_weights"]


@dataclass(frozen=True)
class Start:
    path: str  # "" for a fresh model
    source: str  # what chose it, for messages
    resume: bool = False  # this run's own checkpoint: continue its schedule (optimizer, epoch, iteration)


def _train(cfg):
    last = cu.latest_checkpoint(cfg.OUTPUT_DIR) if cfg.TRAIN.AUTO_RESUME else None
    if last is not None:
        return Start(last, "OUTPUT_DIR", resume=True)
    if cfg.TRAIN.CHECKPOINT_FILE_PATH:
        return Start(cfg.TRAIN.CHECKPOINT_FILE_PATH, "TRAIN.CHECKPOINT_FILE_PATH")
    if cfg.MODEL.PRETRAINED:
        return Start(pretrained_checkpoint(cfg), "MODEL.PRETRAINED")
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
