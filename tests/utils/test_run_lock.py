"""OUTPUT_DIR's lock: a second process is refused with the holder's name; a dead holder's lock is taken over."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from revvit.utils import run_lock

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _holder(out_dir):
    """Another process holding the lock of ``out_dir`` until its stdin closes; returns it once it holds it."""
    code = textwrap.dedent(f"""
        import sys
        from revvit.utils import run_lock
        run_lock.acquire({str(out_dir)!r}, "training")
        print("locked", flush=True)
        sys.stdin.read()
    """)
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow
def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(run_lock.RunLockError) as e:
            run_lock.acquire(str(tmp_path), "training")
        message = str(e.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}, training there since " in message
        assert "Wait for that run to end (or stop it), or pass another OUTPUT_DIR" in message and "\n" not in message
    finally:
        holder.stdin.close()
        holder.wait(30)
    # The holder exited without releasing it: the kernel dropped the lock with the process.
    assert run_lock.acquire(str(tmp_path), "training").startswith("Took over ")
    run_lock.release(str(tmp_path))
    assert run_lock.acquire(str(tmp_path), "training") is None  # released cleanly: nothing to take over
    run_lock.release(str(tmp_path))


@pytest.mark.slow
def test_a_killed_holder_s_lock_is_taken_over_and_said_so(tmp_path):
    holder = _holder(tmp_path)
    holder.kill()  # SIGKILL: no release, the record stays in the file
    holder.wait(30)
    record = json.loads((tmp_path / run_lock.LOCK_NAME).read_text())
    assert record["pid"] == holder.pid
    note = run_lock.acquire(str(tmp_path), "testing")
    try:
        assert note.startswith(f"Took over {os.path.realpath(tmp_path / run_lock.LOCK_NAME)}, left by pid {holder.pid} on host ")
        assert "that process no longer exists" in note
        assert json.loads((tmp_path / run_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        run_lock.release(str(tmp_path))
    assert (tmp_path / run_lock.LOCK_NAME).read_text() == ""  # released cleanly: nothing to take over next time


def _try_from_another_process(out_dir):
    return subprocess.run(
        [sys.executable, "-c", f"from revvit.utils import run_lock; run_lock.acquire({str(out_dir)!r}, 'x')"],
        env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
    )


@pytest.mark.slow
def test_taking_it_again_in_the_same_process_counts(tmp_path):
    # The holder never opens the lock file a second time (closing that would drop its record lock):
    # what it holds is checked from other processes.
    run_lock.acquire(str(tmp_path), "training")
    run_lock.acquire(str(tmp_path), "testing")  # train then test in one job
    run_lock.release(str(tmp_path))
    refused = _try_from_another_process(tmp_path)
    assert refused.returncode == 1 and f"pid {os.getpid()} on host" in refused.stderr  # still held
    run_lock.release(str(tmp_path))
    assert _try_from_another_process(tmp_path).returncode == 0


def test_a_lock_file_that_cannot_be_opened_is_one_paragraph(tmp_path):
    (tmp_path / run_lock.LOCK_NAME).mkdir()  # as unusable as another user's file (root could open that one)
    with pytest.raises(run_lock.RunLockError) as e:
        run_lock.acquire(str(tmp_path), "training")
    assert str(e.value).startswith(f"Cannot open the lock file {os.path.realpath(tmp_path / run_lock.LOCK_NAME)} of OUTPUT_DIR "
                                   f"'{tmp_path}' (Is a directory)")
