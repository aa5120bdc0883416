"""AUG.ON_DEVICE True through tools/run_net.py: the device pipeline trains, and a resumed run replays it."""

import os
import shutil

import pytest
import torch

from revvit.utils import checkpoint as cu

from helpers import COMMON, REV_VIT
from tinyrun import make_images, run_net

pytestmark = pytest.mark.slow  # every test here spawns processes or trains

# The tiny runs' settings with the recipe on: RandAugment, erasing and Mixup, all on the device.
ON_DEVICE = ["AUG.ENABLE", "True", "AUG.AA_TYPE", "rand-m9-n3-mstd0.5-inc1", "AUG.RE_PROB", "0.5",
             "MIXUP.ENABLE", "True", "AUG.ON_DEVICE", "True", "TRAIN.EVAL_PERIOD", "0"]


def _args(data, out, epochs):
    return ["--cfg", "configs/ImageNet/REV_VIT_S.yaml", *REV_VIT, *COMMON, *ON_DEVICE, "MODEL.NUM_CLASSES", "3",
            "DATA.PATH_TO_DATA_DIR", str(data), "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", str(epochs), "TEST.ENABLE", "False"]


def _weights(out):
    return torch.load(cu.latest_checkpoint(str(out)), weights_only=True)["model_state"]


def test_on_device_run_trains_and_a_resumed_run_replays_it(tmp_path):
    data = make_images(str(tmp_path / "images"))
    whole = tmp_path / "whole"
    proc = run_net(_args(data, whole, 2))
    assert proc.returncode == 0, proc.stdout[-4000:]
    ref = _weights(whole)
    # The run as if stopped after epoch 1: its last checkpoint gone, run again to resume from epoch 1.
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    os.remove(resumed / "checkpoints" / "checkpoint_epoch_00002.pyth")
    proc = run_net(_args(data, resumed, 2))
    assert proc.returncode == 0 and "Resuming from" in proc.stdout, proc.stdout[-4000:]
    got = _weights(resumed)
    # Every device-side draw is a function of (RNG_SEED, epoch, rank, step): the same weights, bit for bit.
    assert max((ref[k] - got[k]).abs().max().item() for k in ref) == 0.0
