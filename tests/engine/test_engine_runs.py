"""End-to-end runs of tools/run_net.py on tiny data: train, evaluate, resume after SIGKILL, video."""

import csv
import os
import signal

import pytest
import torch

from revvit.engine import cli
from revvit.utils import checkpoint as cu

from helpers import COMMON, REV_MVIT_VIDEO, REV_VIT
from tinyrun import RUN_NET, json_stats, make_images, make_videos, run_net, start_run_net_until

IMAGE_EPOCHS = 3


def _image_args(data, out, *extra):
    return ["--cfg", "configs/ImageNet/REV_VIT_S.yaml", *REV_VIT, *COMMON, "MODEL.NUM_CLASSES", "3",
            "DATA.PATH_TO_DATA_DIR", str(data), "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", str(IMAGE_EPOCHS), *extra]


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    return make_images(str(tmp_path_factory.mktemp("images")))


@pytest.fixture(scope="module")
def image_run(image_data, tmp_path_factory):
    """One uninterrupted 3-epoch Rev-ViT run (train, then test), shared by several tests."""
    out = tmp_path_factory.mktemp("image_run")
    proc = run_net(_image_args(image_data, out, "TENSORBOARD.ENABLE", "True"))
    assert proc.returncode == 0, proc.stdout[-4000:]
    return out, proc.stdout


def _final_state(out):
    return torch.load(cu.latest_checkpoint(str(out)), weights_only=True)["model_state"]


@pytest.mark.slow
def test_train_then_test_writes_checkpoints_logs_and_stats(image_run):
    out, stdout = image_run
    names = sorted(os.listdir(out / "checkpoints"))
    assert names == [f"checkpoint_epoch_{e:05d}.pyth" for e in range(1, IMAGE_EPOCHS + 1)]
    ckpt = torch.load(out / "checkpoints" / names[-1], weights_only=True)
    assert ckpt["epoch"] == IMAGE_EPOCHS - 1 and "optimizer_state" in ckpt and "MAX_EPOCH: 3" in ckpt["cfg"]

    stats = json_stats(str(out))
    epochs = [s for s in stats if s["_type" if "_type" in s else "split"] == "train_epoch"]
    assert [s["epoch"] for s in epochs] == ["1/3", "2/3", "3/3"]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert all(s["bad_samples"] == 0 for s in epochs)
    assert len([s for s in stats if s.get("_type") == "val_epoch"]) == IMAGE_EPOCHS
    (final,) = [s for s in stats if s.get("split") == "test_final"]
    assert final["num_samples"] == 9 and final["top1_acc"] >= 77.0  # 3 colour classes, 9 test images

    assert "json_stats: " in stdout and '"_type": "train_iter"' in stdout  # LOG_PERIOD 1
    log = (out / "stdout.log").read_text()
    assert "parameters" in log and "GFLOPs per input" in log
    assert "SOLVER:" in (out / "config.yaml").read_text()
    tb = os.listdir(out / "runs-imagenet")
    assert any(name.startswith("events.out.tfevents") for name in tb)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_resumes_to_identical_weights(image_data, image_run, tmp_path):
    reference, _ = image_run
    out = tmp_path / "killed"
    args = _image_args(image_data, out, "TENSORBOARD.ENABLE", "True")
    # An iteration line of epoch 2: we are past checkpoint 1, mid-epoch.
    proc = start_run_net_until(args, out, '"epoch": "2/3", "eta"', timeout=240)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    left = [os.path.basename(p) for p in cu.list_checkpoints(str(out))]
    # Killed mid-epoch 2: checkpoint 1 exists (2 only if the machine stalled us), the last one does not.
    assert left[0] == "checkpoint_epoch_00001.pyth" and f"checkpoint_epoch_{IMAGE_EPOCHS:05d}.pyth" not in left

    rerun = run_net(args)
    assert rerun.returncode == 0, rerun.stdout[-4000:]
    assert f"Resuming from {out / 'checkpoints' / left[-1]}" in rerun.stdout
    ref, got = _final_state(reference), _final_state(out)
    max_diff = max((ref[k] - got[k]).abs().max().item() for k in ref)
    print(f"resume max abs weight difference: {max_diff}")
    assert max_diff == 0.0


def test_evaluate_an_official_layout_checkpoint_alone(image_run, image_data, tmp_path):
    out, _ = image_run
    ours = torch.load(cu.latest_checkpoint(str(out)), weights_only=True)
    # What a PySlowFast run writes: same dict, trimmed of the optimizer; a DDP-prefixed copy too.
    official = tmp_path / "REV_VIT_TINY.pyth"
    torch.save({"epoch": 299, "model_state": {"module." + k: v for k, v in ours["model_state"].items()}, "cfg": ours["cfg"]}, official)
    args = _image_args(image_data, tmp_path / "eval", "TRAIN.ENABLE", "False", "TEST.ENABLE", "True",
                       "TEST.CHECKPOINT_FILE_PATH", str(official), "TEST.SAVE_RESULTS_PATH", "preds.pyth")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "config.yaml").write_text("the training run's config\n")
    results = cli.run(args)
    # A test-only run records its config beside the training run's, never over it.
    assert (tmp_path / "eval" / "config.yaml").read_text() == "the training run's config\n"
    assert "TEST:" in (tmp_path / "eval" / "config_test.yaml").read_text()
    reference = [s for s in json_stats(str(out)) if s.get("split") == "test_final"][0]
    assert results["test"]["top1_acc"] == pytest.approx(reference["top1_acc"], abs=1e-3)
    saved = torch.load(tmp_path / "eval" / "preds.pyth", weights_only=True)
    assert saved["scores"].shape == (9, 3) and saved["views"].tolist() == [1] * 9
    assert torch.allclose(saved["scores"].sum(1), torch.ones(9), atol=1e-5)  # softmax per view, one view


def test_finetune_to_new_classes_skips_only_the_head(image_run, image_data, tmp_path, capsys):
    out, _ = image_run
    ckpt = cu.latest_checkpoint(str(out))
    target = tmp_path / "ft"
    args = _image_args(image_data, target, "MODEL.NUM_CLASSES", "4", "SOLVER.MAX_EPOCH", "1", "SOLVER.WARMUP_EPOCHS", "0.5",
                       "TRAIN.CHECKPOINT_FILE_PATH", ckpt, "TEST.ENABLE", "False", "TRAIN.EVAL_PERIOD", "0")
    cli.run(args)
    log = (target / "stdout.log").read_text()
    assert "not loading 'head.projection.weight'" in log and "training starts at epoch 1" in log
    state = torch.load(cu.latest_checkpoint(str(target)), weights_only=True)["model_state"]
    assert state["head.projection.weight"].shape == (4, 32)

    # Any other mismatch is an error naming the key; main() reports it without a traceback.
    bad = _image_args(image_data, tmp_path / "bad", "MVIT.EMBED_DIM", "8", "TRAIN.CHECKPOINT_FILE_PATH", ckpt)
    assert cli.main(bad) == 1
    err = capsys.readouterr().err
    assert "shape mismatch" in err and "patch_embed.proj.weight" in err


@pytest.mark.slow
def test_rev_mvit_video_train_and_multiview_test(tmp_path):
    data = make_videos(str(tmp_path / "videos"))
    out = tmp_path / "video_run"
    proc = run_net(["--cfg", "configs/Kinetics/REV_MVIT_B_16x4_CONV.yaml", *REV_MVIT_VIDEO, *COMMON, "MODEL.NUM_CLASSES", "2",
                    "DATA.PATH_TO_DATA_DIR", data, "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "2",
                    "TRAIN.BATCH_SIZE", "4", "TEST.SAVE_RESULTS_PATH", "preds.csv"])
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert os.path.basename(cu.latest_checkpoint(str(out))) == "checkpoint_epoch_00002.pyth"
    with open(out / "preds.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["index"] for r in rows] == ["0", "1"] and all(r["views"] == "2" for r in rows)
    # Two views of softmax summed: the top score of each video lies in (1, 2].
    assert all(1.0 < float(r["score"]) <= 2.0 + 1e-6 for r in rows)
    (final,) = [s for s in json_stats(str(out)) if s.get("split") == "test_final"]
    assert final["num_samples"] == 2


def test_no_arguments_means_the_demo_config():
    from revvit.config import load_config

    args = cli.parse_args([], default_cfg="demo.yaml")
    assert args.cfg_file == "demo.yaml" and args.opts == []
    demo = os.path.join(os.path.dirname(os.path.dirname(RUN_NET)), cli.DEMO_CONFIG)
    cfg = load_config(cli.parse_args([], default_cfg=demo))
    assert cfg.DATA.DEMO == "digits" and cfg.TRAIN.ENABLE and cfg.TEST.ENABLE and cfg.MVIT.REV.ENABLE
    args = cli.parse_args(["--cfg", "x.yaml", "--opts", "SOLVER.BASE_LR", "0.1"])
    assert args.opts == ["SOLVER.BASE_LR", "0.1"]
    args = cli.parse_args(["--cfg", "x.yaml", "SOLVER.BASE_LR", "0.2"])
    assert args.opts == ["SOLVER.BASE_LR", "0.2"]
