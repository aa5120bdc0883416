"""What a user sees when things go wrong: one paragraph (exit 1), no hang, no traceback (stop signals:
test_preemption.py; config mistakes: tests/config; damaged checkpoints: tests/utils/test_checkpoint_files.py).

Bugs are the exception: they keep their traceback, also from a spawned process.
"""

import os
import re
import socket

import pytest
import torch
from torch.multiprocessing.spawn import ProcessRaisedException

from revvit.config import load_config
from revvit.engine import cli
from revvit.engine import train as train_module
from revvit.engine.launch import CollectiveTimeout, LaunchError, _spawn_error, launch
from revvit.models import build_model
from revvit.utils import checkpoint as cu

from spawn_jobs import bug_on_rank_1, launch_cfg
from helpers import COMMON, REV_VIT
from tinyrun import make_images, run_net


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(str(tmp_path_factory.mktemp("images")))


def _args(data, out, *extra):
    return ["--cfg", "configs/ImageNet/REV_VIT_S.yaml", *REV_VIT, *COMMON, "MODEL.NUM_CLASSES", "3",
            "DATA.PATH_TO_DATA_DIR", str(data), "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "2", *extra]


def _one_paragraph(err):
    assert "Traceback" not in err
    assert err.startswith("run_net.py: ") and err.strip().count("\n") == 0, err


def test_output_dir_that_is_a_file_is_named(images, tmp_path, capsys):
    taken = tmp_path / "results"
    taken.write_text("not a directory")
    assert cli.main(_args(images, taken)) == 1
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert f"OUTPUT_DIR '{taken}' is a file" in err
    assert cli.main(_args(images, taken / "run")) == 1
    assert f"OUTPUT_DIR '{taken / 'run'}' cannot be written" in capsys.readouterr().err


def test_a_finite_loss_explosion_stops_with_log_period_1(images, tmp_path, capsys, monkeypatch):
    """The loss goes 2.3 -> 104 -> 6017; the guard stops at 104 (> 10 x 2.3), before any checkpoint."""
    trajectory = iter([2.3, 104.0, 6017.0] + [1.0] * 100)

    class Exploding(torch.nn.Module):
        def forward(self, logits, labels):
            return logits.sum() * 0 + next(trajectory)

    monkeypatch.setattr(train_module, "build_loss", lambda cfg: Exploding())
    out = tmp_path / "run"
    assert cli.main(_args(images, out, "LOG_PERIOD", "1", "TRAIN.KILL_LOSS_EXPLOSION_FACTOR", "10")) == 1
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert "loss exploded at epoch 1, iteration 2: 104 is more than TRAIN.KILL_LOSS_EXPLOSION_FACTOR 10 x 2.3" in err
    assert "non-finite" not in err and "loss is" not in err
    assert cu.list_checkpoints(str(out)) == []


def test_initialising_from_a_finished_schedule_says_how_to_restart_it(images, tmp_path, capsys):
    cfg = load_config(cli.parse_args(_args(images, tmp_path / "old")))
    done = cu.save_checkpoint(cfg.OUTPUT_DIR, build_model(cfg), None, 0, cfg)  # after epoch 1
    new = tmp_path / "new"
    assert cli.main(_args(images, new, "SOLVER.MAX_EPOCH", "1", "SOLVER.WARMUP_EPOCHS", "0.5",
                         "TRAIN.CHECKPOINT_FILE_PATH", done)) == 1
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert "saved after epoch 1 and SOLVER.MAX_EPOCH is 1" in err and "TRAIN.CHECKPOINT_EPOCH_RESET True" in err
    assert "already done" not in err


# The closing paragraph of run_net (the start-up line "run_net.py: N processes on ..." also begins with run_net.py).
REPORT = ("run_net.py: error:", "run_net.py: Interrupted")


@pytest.mark.slow
def test_a_bug_in_a_spawned_process_keeps_its_traceback(tmp_path):
    with pytest.raises(ProcessRaisedException, match=r"(?s)Traceback.*ZeroDivisionError"):
        launch(launch_cfg(tmp_path), bug_on_rank_1)


@pytest.mark.slow
def test_one_rank_s_data_error_is_one_paragraph_naming_the_rank_and_the_file(tmp_path):
    """NUM_GPUS 2, a loader worker each, one bad file and no retries: the rank that reads it stops the job;
    the error travels from the worker to the rank to the launcher and is shown as one line."""
    data = make_images(str(tmp_path / "images"))
    bad = os.path.join(data, "train", "class1", "0.jpg")
    with open(bad, "w") as f:
        f.write("not a JPEG")
    proc = run_net(_args(data, tmp_path / "run", "NUM_GPUS", "2", "DATA_LOADER.NUM_WORKERS", "1", "DATA_LOADER.NUM_RETRIES", "0",
                         "TRAIN.EVAL_PERIOD", "0", "TEST.ENABLE", "False"))
    assert proc.returncode == 1, proc.stdout[-3000:]
    (line,) = [l for l in proc.stdout.splitlines() if l.startswith(REPORT)]
    assert re.match(rf"run_net.py: error: rank [01]: 1 training file\(s\) in a row could not be read \({re.escape(bad)}; ", line), line
    assert "DATA_LOADER.NUM_RETRIES 0" in line
    assert "Traceback" not in proc.stdout and "ProcessRaisedException" not in proc.stdout


def test_every_training_file_unreadable_is_one_paragraph(tmp_path, capsys):
    data = make_images(str(tmp_path / "images"))
    for c in range(3):
        for i in range(8):
            (tmp_path / "images" / "train" / f"class{c}" / f"{i}.jpg").write_text("not a JPEG")
    assert cli.main(_args(data, tmp_path / "run", "DATA_LOADER.NUM_WORKERS", "1", "DATA_LOADER.NUM_RETRIES", "2")) == 1
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert err.startswith("run_net.py: error: 3 training file(s) in a row could not be read (") and "DATA_LOADER.NUM_RETRIES 2" in err


@pytest.mark.slow
def test_a_fifo_in_the_training_set_ends_without_loader_workers_too(images, tmp_path, capsys):
    """DataLoader has no timeout without workers; the read deadline gives the worker stall's paragraph."""
    data = make_images(str(tmp_path / "images"))
    os.mkfifo(os.path.join(data, "train", "class0", "stuck.jpg"))
    # 25 training files in batches of 5: every file, the FIFO too, is read in epoch 1.
    assert cli.main(_args(data, tmp_path / "run", "TRAIN.BATCH_SIZE", "5", "DATA_LOADER.TIMEOUT", "3")) == 1
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert "rank 0: the data loader (DATA_LOADER.NUM_WORKERS 0) produced no batch in DATA_LOADER.TIMEOUT 3 s" in err


def test_a_checkpoints_file_in_output_dir_is_found_before_training(images, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").write_text("a file")
    assert cli.main(_args(images, out)) == 1
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert f"{out / 'checkpoints'} is a file, but checkpoints are saved in a directory of that name" in err
    assert not (out / "stdout.log").exists()  # found before logging, let alone training, started


@pytest.mark.slow
def test_an_init_method_on_a_port_in_use_says_how_to_fix_it(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        init = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(LaunchError, match=rf"^rank 0: cannot open the meeting point --init_method {init} .*Choose a free port"):
            launch(launch_cfg(tmp_path, "DIST_TIMEOUT", "20"), bug_on_rank_1, init_method=init)


@pytest.mark.slow
def test_a_rank_blocked_reading_a_fifo_ends_the_training_job(tmp_path):
    """A file that blocks its reader (a FIFO, as a stalled network file system would)."""
    data = make_images(str(tmp_path / "images"))
    os.mkfifo(os.path.join(data, "train", "class0", "stuck.jpg"))
    # Batch 1 per process: no sample is dropped, so the FIFO is read in epoch 1 by one of the two ranks.
    # DIST_TIMEOUT 10 s also bounds the rendezvous: room for the two processes to start at different
    # times on a busy machine.
    proc = run_net(_args(data, tmp_path / "run", "NUM_GPUS", "2", "TRAIN.BATCH_SIZE", "2", "DIST_TIMEOUT", "10"), timeout=400)
    assert proc.returncode == 1, proc.stdout[-3000:]
    (line,) = [l for l in proc.stdout.splitlines() if l.startswith(REPORT)]
    assert re.match(r"run_net.py: error: rank [01] stalled: .* waited DIST_TIMEOUT 10 s", line), line
    assert "Traceback" not in proc.stdout


class _Reports:
    """What the spawned processes put in the launcher's queue: (rank, error)."""

    def __init__(self, *items):
        self.items = list(items)

    def empty(self):
        return not self.items

    def get(self):
        return self.items.pop()


def _timed_out(rank):
    return rank, CollectiveTimeout(f"rank {rank} waited DIST_TIMEOUT 7 s ...", rank=rank)


def test_the_stalled_rank_is_the_one_that_did_not_wait():
    cfg = launch_cfg("/nonexistent", "NUM_GPUS", "4", "DIST_TIMEOUT", "7")
    err = _spawn_error(cfg, _Reports(_timed_out(3), _timed_out(0), _timed_out(1)))
    assert str(err).startswith("rank 2 stalled: it never reached the collective operation that the others waited "
                               "DIST_TIMEOUT 7 s for, and the job was stopped (rank 0 waited")
    err = _spawn_error(cfg, _Reports(_timed_out(0), _timed_out(1)))
    assert str(err).startswith("ranks 2, 3 stalled")
    # A user error explains the others' timeouts: it is the one shown.
    err = _spawn_error(cfg, _Reports(_timed_out(0), (2, cu.CheckpointError("Checkpoint file not found: 'x'."))))
    assert isinstance(err, cu.CheckpointError) and str(err) == "rank 2: Checkpoint file not found: 'x'."
    # Every rank of this machine waited: the stalled one is elsewhere.
    cfg = launch_cfg("/nonexistent", "NUM_GPUS", "2", "NUM_SHARDS", "2", "SHARD_ID", "1", "DIST_TIMEOUT", "7")
    assert str(_spawn_error(cfg, _Reports(_timed_out(2), _timed_out(3)))).startswith("A rank on another machine stalled")
    assert _spawn_error(cfg, _Reports()) is None  # nothing reported: a bug, whose traceback is kept


@pytest.mark.slow
def test_a_rank_killed_by_sigkill_is_one_paragraph_naming_it_and_the_checkpoint(images, tmp_path):
    """The out-of-memory killer ends one rank: the others fail only because it is gone; the report names the
    killed rank and where to resume, instead of the launcher's ProcessExitedException."""
    import psutil
    import signal
    import subprocess

    from tinyrun import start_run_net_until

    out = tmp_path / "run"
    args = _args(images, out, "NUM_GPUS", "2", "TRAIN.BATCH_SIZE", "2", "TRAIN.EVAL_PERIOD", "0", "TEST.ENABLE", "False",
                 "DIST_TIMEOUT", "30")
    run = start_run_net_until(args, out, '"epoch": "2/2", "eta"', stdout=subprocess.PIPE)  # epoch 1 is saved
    try:
        ranks = [p for p in psutil.Process(run.pid).children() if "resource_tracker" not in " ".join(p.cmdline())]
        assert len(ranks) == 2
        ranks[1].send_signal(signal.SIGKILL)
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    (line,) = [l for l in output.splitlines() if l.startswith(REPORT)]
    assert re.fullmatch(r"run_net.py: error: rank [01] was killed by SIGKILL \(the kernel's out-of-memory killer, see "
                        r"dmesg, or the job scheduler\), and the other ranks were stopped; rerun the same command to "
                        rf"resume from {re.escape(cu.checkpoint_path(str(out), 1))}\.", line), line


@pytest.mark.parametrize("url", ["foo://bar", "tcp://127.0.0.1", "tcp://host:port", "file://", "127.0.0.1:29500"])
def test_an_init_method_that_is_no_meeting_point_is_one_paragraph(images, tmp_path, capsys, url):
    assert cli.main(["--init_method", url, *_args(images, tmp_path / "run", "NUM_GPUS", "2")]) == 1
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert err.startswith(f"run_net.py: error: --init_method {url} is not a meeting point processes can use: give tcp://")
    assert not (tmp_path / "run" / "checkpoints").exists()
