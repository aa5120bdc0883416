"""A run owns its OUTPUT_DIR: a second run is refused while one trains, checkpoints of an earlier run are
never trained over, an unusable checkpoint folder is found before training, and config.yaml keeps its history."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from revvit.engine import cli
from revvit.utils import checkpoint as cu
from revvit.utils import run_lock

from helpers import COMMON, REV_VIT
from tinyrun import REPO, make_images


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(str(tmp_path_factory.mktemp("images")))


def _args(data, out, *extra):
    return ["--cfg", "configs/ImageNet/REV_VIT_S.yaml", *REV_VIT, *COMMON, "MODEL.NUM_CLASSES", "3", "DATA.PATH_TO_DATA_DIR",
            str(data), "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "1", "SOLVER.WARMUP_EPOCHS", "0.5", "TRAIN.EVAL_PERIOD", "0", "TEST.ENABLE", "False",
            *extra]


def _one_paragraph(err):
    assert "Traceback" not in err
    assert err.startswith("run_net.py: error: ") and err.strip().count("\n") == 0, err


def _holder(out_dir):
    """Another process holding OUTPUT_DIR's lock, as a training run does, until its stdin closes."""
    os.makedirs(out_dir, exist_ok=True)
    code = textwrap.dedent(f"""
        import sys
        from revvit.utils import run_lock
        run_lock.acquire({str(out_dir)!r}, "training")
        print("locked", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("processes", ["0", "2"])
def test_a_second_run_stops_at_once_while_one_holds_the_folder(images, tmp_path, capsys, processes):
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        assert cli.main(_args(images, out, "NUM_GPUS", processes, "SOLVER.BASE_LR", "0.1")) == 1
        err = capsys.readouterr().err
        _one_paragraph(err)
        # Spawned ranks: every one stopped; the launcher shows rank 0's paragraph.
        prefix = "run_net.py: error: rank 0: " if processes == "2" else "run_net.py: error: "
        assert err.startswith(f"{prefix}OUTPUT_DIR '{out}' is in use by another run: pid {holder.pid} on host "
                              f"{socket.gethostname()}, training there since ")
        assert sorted(os.listdir(out)) == [run_lock.LOCK_NAME]  # nothing written: no config.yaml, log or checkpoint
    finally:
        holder.stdin.close()
        holder.wait(30)


@pytest.mark.slow
def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_log_line(images, tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    holder.kill()
    holder.wait(30)
    assert cli.main(_args(images, out)) == 0
    log = (out / "stdout.log").read_text()
    assert f"Took over {os.path.realpath(out / run_lock.LOCK_NAME)}, left by pid {holder.pid} on host " in log
    assert "that process no longer exists" in log
    assert (out / run_lock.LOCK_NAME).read_text() == ""  # released at the end
    assert os.path.basename(cu.latest_checkpoint(str(out))) == "checkpoint_epoch_00001.pyth"


def test_auto_resume_off_refuses_a_folder_with_checkpoints_naming_both_ways_out(images, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_args(images, out, "SOLVER.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_PERIOD", "1")) == 0
    before = {p: os.path.getmtime(p) for p in cu.list_checkpoints(str(out))}
    config = (out / "config.yaml").read_text()
    assert cli.main(_args(images, out, "SOLVER.MAX_EPOCH", "2", "TRAIN.AUTO_RESUME", "False")) == 1
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert (f"OUTPUT_DIR '{out}' holds the checkpoints of an earlier run (the newest: checkpoint_epoch_00002.pyth) and "
            "TRAIN.AUTO_RESUME is False") in err
    assert "Pass a new OUTPUT_DIR to start a new run, or set TRAIN.AUTO_RESUME True to continue that one." in err
    assert {p: os.path.getmtime(p) for p in cu.list_checkpoints(str(out))} == before
    assert (out / "config.yaml").read_text() == config and not (out / "config.yaml.1").exists()


def test_a_checkpoint_folder_that_is_a_symlink_loop_is_found_before_training(images, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    os.symlink("checkpoints", out / "checkpoints")  # points at itself
    assert cli.main(_args(images, out)) == 1
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert (f"The checkpoint folder {out / 'checkpoints'} (a symbolic link to 'checkpoints') cannot be used: Too many "
            "levels of symbolic links. Checkpoints are saved there after every epoch, so the run stopped before training.") in err
    assert not (out / "json_stats.log").exists()


def test_a_resume_with_other_settings_keeps_the_config_history_and_says_what_changed(images, tmp_path):
    out = tmp_path / "run"
    assert cli.main(_args(images, out, "SOLVER.MAX_EPOCH", "1")) == 0
    first = (out / "config.yaml").read_text()
    assert cli.main(_args(images, out, "SOLVER.MAX_EPOCH", "2", "SOLVER.BASE_LR", "0.002")) == 0
    assert (out / "config.yaml.1").read_text() == first
    assert "BASE_LR: 0.002" in (out / "config.yaml").read_text()
    log = (out / "stdout.log").read_text()
    assert f"Kept the previous config.yaml as {out / 'config.yaml.1'}; this run's config differs in SOLVER.BASE_LR 0.005 -> 0.002, SOLVER.MAX_EPOCH 1 -> 2" in log
    assert "was trained with: SOLVER.BASE_LR 0.005 -> 0.002, SOLVER.MAX_EPOCH 1 -> 2" in log
    # The same config again: nothing new to keep.
    assert cli.main(_args(images, out, "SOLVER.MAX_EPOCH", "2", "SOLVER.BASE_LR", "0.002")) == 0
    assert sorted(n for n in os.listdir(out) if n.startswith("config.yaml")) == ["config.yaml", "config.yaml.1"]
    assert torch.load(cu.latest_checkpoint(str(out)), weights_only=True)["epoch"] == 1
