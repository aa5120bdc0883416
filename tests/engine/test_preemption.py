"""Stop signals (revvit.engine.preemption): every rank stops at a step boundary with a mid-epoch checkpoint,
exits with the signal's code, and the rerun ends with exactly the weights of an uninterrupted run.

Each setup is one tiny run three times (uninterrupted, stopped, resumed): 12 iterations per epoch, the
signal sent once the first iteration line is logged, so the stop lands mid-epoch.
"""

import os
import re
import signal
import subprocess
import time

import pytest
import torch

from revvit.engine import cli
from revvit.utils import checkpoint as cu

from helpers import COMMON, REV_VIT
from tinyrun import make_images, run_net, start_run_net_until


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(str(tmp_path_factory.mktemp("images")))


def _args(data, out, *extra):
    return ["--cfg", "configs/ImageNet/REV_VIT_S.yaml", *REV_VIT, *COMMON, "MODEL.NUM_CLASSES", "3",
            "DATA.PATH_TO_DATA_DIR", str(data), "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "1", "SOLVER.WARMUP_EPOCHS", "0.5", "TRAIN.BATCH_SIZE", "2",
            "TRAIN.EVAL_PERIOD", "0", "TEST.ENABLE", "False", *extra]


def _states(out):
    ckpt = torch.load(cu.checkpoint_path(str(out), 1), weights_only=True)
    return ckpt["model_state"], ckpt["optimizer_state"]["state"]


# (setup, signal, sent to the whole process group or to the launcher only)
SETUPS = [
    pytest.param(["NUM_GPUS", "0"], signal.SIGINT, True, id="1-process-no-workers-ctrl-c"),
    pytest.param(["NUM_GPUS", "2", "DATA_LOADER.NUM_WORKERS", "1"], signal.SIGTERM, False, id="2-ddp-workers-term-to-launcher"),
    pytest.param(["NUM_GPUS", "2", "MODEL.FSDP", "True"], signal.SIGUSR1, True, id="2-fsdp-usr1"),
]


@pytest.mark.slow
@pytest.mark.parametrize("setup, signum, whole_group", SETUPS)
def test_a_stop_signal_saves_mid_epoch_and_the_rerun_reaches_the_same_weights(images, tmp_path, setup, signum, whole_group):
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    proc = run_net(_args(images, reference, *setup))
    assert proc.returncode == 0, proc.stdout[-3000:]

    args = _args(images, stopped, *setup)
    run = start_run_net_until(args, stopped, '"epoch": "1/1", "eta"', stdout=subprocess.PIPE)
    try:
        (os.killpg if whole_group else os.kill)(run.pid, signum)  # to the launcher only: it passes it on at once
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 128 + signum, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    (line,) = [l for l in output.splitlines() if l.startswith("run_net.py: Stopped")]
    name = signal.Signals(signum).name
    m = re.fullmatch(rf"run_net.py: Stopped by {name} at epoch 1, iteration (\d+) of 12: saved (.*); rerun the same "
                     r"command to resume from there\.", line)
    assert m, line
    iteration, path = int(m.group(1)), m.group(2)
    assert path == cu.latest_checkpoint(str(stopped)) == cu.checkpoint_path(str(stopped), 0, iteration)
    assert not [f for f in os.listdir(cu.checkpoint_dir(str(stopped))) if f.endswith(".tmp")]
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == -1 and saved["iteration"] == iteration and len(saved["resume_state"]["rng"]) == saved["resume_state"]["world_size"]

    proc = run_net(args)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert f"Resuming from {path} (epoch 1, after iteration {iteration})" in proc.stdout
    assert cu.list_checkpoints(str(stopped)) == [cu.checkpoint_path(str(stopped), 1)]  # the mid-epoch one is gone
    (ref_weights, ref_moments), (weights, moments) = _states(reference), _states(stopped)
    assert max((ref_weights[k] - weights[k]).abs().max().item() for k in ref_weights) == 0.0
    assert max((ref_moments[i][k].float() - moments[i][k].float()).abs().max().item() for i in ref_moments for k in ref_moments[i]) == 0.0


def test_a_signal_after_the_last_step_does_not_claim_an_interruption(images, tmp_path, capsys, monkeypatch):
    """SIGTERM during the last step: training completes and saves; the test is skipped, and said so."""
    from revvit.engine import train as train_module

    real_step = train_module.train_step
    calls = []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 12:  # the last step of the only epoch
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", step)
    out = tmp_path / "run"
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        assert cli.main(_args(images, out, "NUM_GPUS", "0", "TEST.ENABLE", "True")) == 143
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # the exiting process ignores further signals
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    err = capsys.readouterr().err
    assert err.startswith("run_net.py: Stopped by SIGTERM after training finished (all 1 epochs); the test was not run.")
    assert "iteration" not in err and "Traceback" not in err
    assert cu.list_checkpoints(str(out)) == [cu.checkpoint_path(str(out), 1)]


@pytest.mark.slow
@pytest.mark.parametrize("second", [None, signal.SIGINT])
def test_a_run_that_cannot_reach_a_step_boundary_ends_at_once(tmp_path, second):
    """Every training file a FIFO and no DATA_LOADER.TIMEOUT: the first read blocks for ever. The grace
    period (1 s) or a second signal ends the run at once, with the signal's code and nothing half-written."""
    data = make_images(str(tmp_path / "images"), counts={"train": 1, "val": 1, "test": 1})
    for c in range(3):
        os.remove(os.path.join(data, "train", f"class{c}", "0.jpg"))
        for i in range(2):
            os.mkfifo(os.path.join(data, "train", f"class{c}", f"{i}.jpg"))
    out = tmp_path / "run"
    args = _args(data, out, "NUM_GPUS", "0", "DATA_LOADER.TIMEOUT", "0", "TRAIN.STOP_GRACE_PERIOD", "1" if second is None else "600")
    run = start_run_net_until(args, out, "Training epochs", stdout=subprocess.PIPE)
    try:
        os.kill(run.pid, signal.SIGTERM)
        if second is not None:  # once the first is handled: two pending signals would be handled as one
            _wait_for(out / "stdout.log", "SIGTERM received")
            os.kill(run.pid, second)
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 128 + (second or signal.SIGTERM), output[-3000:]
    why = "TRAIN.STOP_GRACE_PERIOD 1 s ran out before a step boundary" if second is None else "a second SIGINT"
    (line,) = [l for l in output.splitlines() if l.startswith("run_net.py: Stopped")]
    assert line.startswith(f"run_net.py: Stopped at once by {signal.Signals(second or signal.SIGTERM).name} ({why}); "
                           "no checkpoint of the current step was written; no checkpoint was saved yet"), line
    assert not os.path.exists(cu.checkpoint_dir(str(out))) or os.listdir(cu.checkpoint_dir(str(out))) == []


def _wait_for(log, text, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline and not (log.exists() and text in log.read_text()):
        time.sleep(0.02)


def test_a_temporary_checkpoint_being_written_is_removed_by_an_exit_at_once(tmp_path):
    target = tmp_path / "checkpoint_epoch_00001.pyth"
    seen = []

    def write(f):
        (tmp,) = [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
        seen.append(tmp)
        cu.remove_partial_files()  # what StopRequest.exit_now does before os._exit
        raise SystemExit(143)

    with pytest.raises(SystemExit):
        cu.atomic_write(str(target), write)
    assert seen and os.listdir(tmp_path) == []


def test_a_vote_folded_into_the_step_s_all_reduce_is_the_agreed_answer():
    """The interface for a training step that all-reduces its statistics anyway (no collective of its own)."""
    from revvit.engine.preemption import StopRequest

    stop = StopRequest(".", 20)
    stop.agree(0.0)
    assert stop.should_stop() == 0
    stop.signum = signal.SIGUSR1
    stop.agree(2 * stop.local_vote() / 3)  # the mean over three ranks, two signalled: no signal number of its own
    assert stop.should_stop() == signal.SIGUSR1
    stop.signum = 0
    stop.agree(10.0)  # another rank was signalled
    assert stop.should_stop() == signal.SIGTERM
    assert stop.should_stop() == 0  # the folded answer is used once; then this rank's own (none)


@pytest.mark.slow
def test_sighup_from_a_closed_terminal_stops_like_sigterm(images, tmp_path):
    """A terminal or ssh session that closes sends SIGHUP to its process group: a checkpoint, not a silent death."""
    out = tmp_path / "run"
    run = start_run_net_until(_args(images, out, "NUM_GPUS", "0"), out, '"epoch": "1/1", "eta"', stdout=subprocess.PIPE)
    try:
        os.killpg(run.pid, signal.SIGHUP)
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 128 + signal.SIGHUP, output[-3000:]
    (line,) = [l for l in output.splitlines() if l.startswith("run_net.py: Stopped")]
    m = re.fullmatch(r"run_net.py: Stopped by SIGHUP at epoch 1, iteration (\d+) of 12: saved (.*); rerun the same "
                     r"command to resume from there\.", line)
    assert m, line
    assert m.group(2) == cu.latest_checkpoint(str(out)) == cu.checkpoint_path(str(out), 0, int(m.group(1)))


@pytest.mark.slow
def test_ranks_whose_launcher_was_killed_save_and_say_where_they_stopped(images, tmp_path):
    """SIGKILL reaches the launcher alone (the out-of-memory killer, ``kill -9 <pid>``): nothing is passed on,
    so the ranks see their parent change, stop at the next step boundary with a checkpoint, and rank 0
    writes the last line itself."""
    out = tmp_path / "run"
    run = start_run_net_until(_args(images, out, "NUM_GPUS", "2"), out, '"epoch": "1/1", "eta"', stdout=subprocess.PIPE)
    try:
        launcher = run.pid
        os.kill(launcher, signal.SIGKILL)
        output, _ = run.communicate(timeout=120)  # EOF once the ranks, which share the pipe, have exited
    finally:
        try:
            os.killpg(run.pid, signal.SIGKILL)  # the orphaned ranks too, should they still run
        except ProcessLookupError:
            pass
    assert "Traceback" not in output, output[-3000:]
    (line,) = [l for l in output.splitlines() if l.startswith("run_net.py: Stopped")]
    m = re.fullmatch(rf"run_net.py: Stopped because the launcher \(pid {launcher}\) died, at epoch 1, iteration (\d+) "
                     r"of 12: saved (.*); rerun the same command to resume from there\.", line)
    assert m, line
    saved = torch.load(m.group(2), weights_only=True)
    assert m.group(2) == cu.latest_checkpoint(str(out)) and saved["iteration"] == int(m.group(1))
    assert not [f for f in os.listdir(cu.checkpoint_dir(str(out))) if f.endswith(".tmp")]
