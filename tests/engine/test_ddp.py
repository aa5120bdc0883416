"""Reversible training under DistributedDataParallel: 2 gloo processes == 1 process, same global batch."""

import os

import torch

from revvit.engine import cli
from revvit.engine.launch import launch
from revvit.utils import checkpoint as cu

from tinyrun import COMMON, REV_VIT, ddp_cfg, ddp_steps, json_stats, make_images


def test_two_gloo_processes_match_one_process(tmp_path):
    launch(ddp_cfg(0, tmp_path), ddp_steps)
    launch(ddp_cfg(2, tmp_path), ddp_steps)
    one = torch.load(tmp_path / "world1.pt", weights_only=True)
    two = torch.load(tmp_path / "world2.pt", weights_only=True)
    moved = max((one["final"][k] - one["initial"][k]).abs().max().item() for k in one["final"])
    diff = max((one["final"][k] - two["final"][k]).abs().max().item() for k in one["final"])
    print(f"DDP 2 processes vs 1: max abs parameter difference {diff:.3g} (parameters moved up to {moved:.3g})")
    assert moved > 1e-2
    assert diff < 1e-5
    assert torch.allclose(one["losses"], two["losses"], atol=1e-5)  # the all-reduced loss is the global mean


def test_run_net_with_two_cpu_processes_trains_and_tests_every_image_once(tmp_path):
    data = make_images(str(tmp_path / "images"), counts={"train": 8, "val": 3, "test": 3})
    out = tmp_path / "ddp_run"
    # In this process (the spawned workers are the only new interpreters): what run_net.py does.
    cli.run(["--cfg", "configs/ImageNet/REV_VIT_S.yaml", *REV_VIT, *COMMON, "MODEL.NUM_CLASSES", "3", "NUM_GPUS", "2",
             "DATA.PATH_TO_DATA_DIR", data, "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "1", "SOLVER.WARMUP_EPOCHS", "0.5"])
    assert os.path.basename(cu.latest_checkpoint(str(out))) == "checkpoint_epoch_00001.pyth"
    stats = json_stats(str(out))
    (epoch,) = [s for s in stats if s.get("_type") == "train_epoch"]
    assert epoch["epoch"] == "1/1" and epoch["bad_samples"] == 0
    log = (out / "stdout.log").read_text()
    assert log.count('"_type": "train_iter"') == 3  # 24 images / global batch 8, logged once (by rank 0)
    (final,) = [s for s in stats if s.get("split") == "test_final"]
    assert final["num_samples"] == 9  # 9 test images over 2 processes: the padded repeat is not counted twice
    assert "did not get exactly" not in log
