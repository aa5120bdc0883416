"""Stopping on a signal: SIGTERM, SIGUSR1, SIGINT or SIGHUP stop every rank at the next step boundary.

Clusters end jobs with SIGTERM (SLURM's ``--signal=USR1@90`` warns earlier with SIGUSR1; Kubernetes
and spot instances send SIGTERM; a terminal sends SIGINT, and SIGHUP when it or the ssh session that
holds it closes). The training process does not die on them:
the handler only records the request, and the training loop asks ``StopRequest.should_stop()`` at
each step boundary. That answer is agreed by every rank (each rank's vote rides in the step's stats
all-reduce, which averages it: the mean is above 0 exactly when some rank voted), so all of them stop
after the same step and write one mid-epoch checkpoint together. The process then exits with 128 +
the signal's number (143 TERM, 138 USR1, 130 INT, 129 HUP).

Two ways out at once, for a run that cannot reach a step boundary in time: a second signal, or
TRAIN.STOP_GRACE_PERIOD seconds passing after the first (SLURM sends SIGKILL 30 s after SIGTERM by
default). The process then exits with the same code right away (``os._exit``); the checkpoint being
written, if any, was a temporary file and is removed, so no half-written file is left.

A launcher that spawned the ranks (revvit.engine.launch) receives the signal too, and may be the only
one to receive it (``kill <pid of run_net.py>``): it passes the request on through ``launcher_flag``, a
shared integer the ranks watch (signum: stop at the next step; -signum: stop now). A launcher that
dies without passing anything on (SIGKILL, the out-of-memory killer) leaves its ranks to another
parent: they see it, stop the same way as on SIGTERM, and report where they stopped themselves, since
no launcher is left to do it.

Loader workers forked from a rank inherit its handler; there it does nothing, so the workers keep
serving batches until the rank stops and shuts them down.
"""

import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

from revvit.utils import checkpoint as cu
from revvit.utils import distributed as du
from revvit.utils import logging
from revvit.utils.errors import Interrupted

logger = logging.get_logger(__name__)

__all__ = ["STOP_SIGNALS", "StopRequest", "handling", "set_launcher_flag", "signal_name", "stopped_at_once"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP)
_POLL_S = 0.1  # how often the watcher looks at the launcher's flag and the grace deadline

_launcher_flag = None  # a multiprocessing Value shared with the launcher of this spawned rank
_launcher_pid = None  # the pid of that launcher: this rank's parent while the launcher lives
_active = None  # the StopRequest of this process while training or testing runs


def set_launcher_flag(flag, launcher_pid=None):
    """Called in a spawned rank by the launcher: the shared integer through which it passes signals on,
    and the launcher's pid, whose death the rank watches for."""
    global _launcher_flag, _launcher_pid
    _launcher_flag = flag
    _launcher_pid = launcher_pid


def launcher_died():
    """Whether this rank's launcher is gone: the rank then has another parent (init or a subreaper)."""
    return _launcher_pid is not None and os.getppid() != _launcher_pid


def signal_name(signum):
    return signal.Signals(signum).name


def stopped_at_once(output_dir, signum, why):
    """The report of a run that exited without reaching a step boundary: what is left to resume from."""
    last = cu.latest_checkpoint(output_dir)
    resume = f"rerun the same command to resume from {last}" if last else "no checkpoint was saved yet: a rerun starts from the beginning"
    return f"Stopped at once by {signal_name(signum)} ({why}); no checkpoint of the current step was written; {resume}."


class StopRequest:
    """The stop signals of this process while it trains or tests; ``should_stop`` is the agreed answer.

    Interface for the training step: ``local_vote()`` is this rank's request (0, or the signal's
    number) as a float that can ride in an all-reduce the step already makes (the step's stats are
    averaged); the mean of the votes is > 0 exactly when some rank was asked to stop, and ``agree(reduced)`` records that
    answer so the next ``should_stop()`` needs no collective of its own.
    """

    def __init__(self, output_dir, grace_s):
        self.output_dir = output_dir
        self.grace_s = float(grace_s)
        self.signum = 0  # this process's request: the first signal's number
        self._signalled = False  # a signal reached this process itself (not only through the launcher)
        self._deadline = None
        self._pid = os.getpid()
        self._previous = {}
        self._agreed = None
        self.agreed_signum = 0  # the first stop every rank agreed on
        self._group = None
        self._done = threading.Event()
        self._watcher = None

    # -- installation -------------------------------------------------------------------------
    def __enter__(self):
        global _active
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        if du.get_world_size() > 1 and dist.get_backend() != "gloo":
            # The vote travels on the CPU: it must not add a device synchronisation to the step.
            self._group = dist.new_group(backend="gloo")
        self._watcher = threading.Thread(target=self._watch, name="revvit-stop-watch", daemon=True)
        self._watcher.start()
        _active = self
        return self

    def __exit__(self, exc_type, exc, tb):
        global _active
        self._done.set()
        self._watcher.join(timeout=10 * _POLL_S)  # it wakes within one poll: gone before the process group is
        if self._group is not None:
            dist.destroy_process_group(self._group)  # nothing may hold a group past the world's destruction
            self._group = None
        stopping = exc_type is not None and issubclass(exc_type, Interrupted)
        for s, handler in self._previous.items():
            # Stopping: the signals that keep coming (the launcher's clean-up, SLURM's repeats) must not cut
            # the report short; the process is about to exit anyway.
            signal.signal(s, signal.SIG_IGN if stopping else handler)
        _active = None
        return False

    def _on_signal(self, signum, frame):
        if os.getpid() != self._pid:  # a forked loader worker: the rank decides, the worker keeps serving
            return
        self.request(signum)

    def request(self, signum, direct=True):
        """First request: stop at the next step boundary, within the grace period. Second: stop now.

        ``direct``: the signal reached this process. Ctrl-C in a terminal reaches a spawned rank both
        directly and through its launcher; only two direct signals (or the launcher's -signum) mean "now".
        """
        if direct:
            if self._signalled:
                self.exit_now(signum, f"a second {signal_name(signum)}")
            self._signalled = True
        if self.signum:
            return
        self.signum = int(signum)
        self._deadline = time.monotonic() + self.grace_s
        logger.warning(
            f"{signal_name(signum)} received: stopping at the next step boundary and saving a checkpoint "
            f"(at most TRAIN.STOP_GRACE_PERIOD {self.grace_s:g} s; a second signal stops at once)."
        )

    def _watch(self):
        while not self._done.wait(_POLL_S):
            if launcher_died() and not self.signum:
                logger.warning(f"The launcher (pid {_launcher_pid}) died: stopping as on SIGTERM.")
                self.request(signal.SIGTERM, direct=False)
            shared = _launcher_flag.value if _launcher_flag is not None else 0
            if shared < 0:
                self.exit_now(-shared, f"a second {signal_name(-shared)} to the launcher")
            if shared > 0 and not self.signum:
                self.request(shared, direct=False)
            if self._deadline is not None and time.monotonic() > self._deadline:
                self.exit_now(self.signum, f"TRAIN.STOP_GRACE_PERIOD {self.grace_s:g} s ran out before a step boundary")

    def exit_now(self, signum, why):
        """Exit this process with the signal's code, leaving no temporary checkpoint file behind."""
        cu.remove_partial_files()
        if (_launcher_flag is None or launcher_died()) and du.get_rank() == 0:  # a live launcher reports instead
            sys.stderr.write(f"run_net.py: {stopped_at_once(self.output_dir, signum, why)}\n")
            sys.stderr.flush()
        os._exit(128 + signum)

    # -- the agreed answer ----------------------------------------------------------------------
    def local_vote(self):
        return float(self.signum)

    def agree(self, reduced):
        """``reduced``: the mean (or any other non-negative reduction) of every rank's ``local_vote``. A mean
        of signal numbers is no signal number: a rank that was not signalled itself reports the stop as SIGTERM."""
        self._agreed = (self.signum or int(signal.SIGTERM)) if reduced > 0 else 0

    def should_stop(self):
        """0, or a signal number, the same on every rank: whether some rank was asked to stop."""
        if self._agreed is not None:
            vote, self._agreed = self._agreed, None
        elif du.get_world_size() == 1:
            vote = self.signum
        else:
            t = torch.tensor([self.local_vote()])
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._group)
            vote = int(t.item())
        self.agreed_signum = self.agreed_signum or vote
        return vote

    def stopped(self, message, signum):
        if launcher_died():
            return Interrupted(f"Stopped because the launcher (pid {_launcher_pid}) died, {message}", signum)
        return Interrupted(f"Stopped by {signal_name(signum)} {message}", signum)


class _Nested:
    """``handling`` inside ``handling``: the outer request stays in charge."""

    def __init__(self, request):
        self.request = request

    def __enter__(self):
        return self.request

    def __exit__(self, *exc):
        return False


def handling(cfg):
    """``with handling(cfg) as stop:`` the stop signals of this process; nested uses share one request,
    so a signal that arrived while training is still known when the test would start."""
    if _active is not None:
        return _Nested(_active)
    return StopRequest(cfg.OUTPUT_DIR, cfg.TRAIN.STOP_GRACE_PERIOD)
