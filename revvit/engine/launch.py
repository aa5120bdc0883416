"""Start a job function on every process of a run: one per device, on one or many machines.

Three ways in:

- Started by ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set) or by
  ``srun`` with one task per process (SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID): this process is
  already one member of the job, so it joins the process group and runs the function; nothing is
  spawned.
- Otherwise, NUM_GPUS x NUM_SHARDS > 1: spawn NUM_GPUS processes on this machine (SHARD_ID gives
  their global ranks) that meet at ``--init_method`` (tcp://host:port or file://path).
- NUM_GPUS <= 1 on one machine: run in this process, with no process group and no DDP.

Processes use NCCL on CUDA (DIST_BACKEND) and gloo on CPU. This module is the only place that reads
the distributed environment.

What the user sees of a job of spawned processes is what one process would have shown: a user error
(``UserError``, ``ConfigError``) raised on any rank travels to this process through a queue and is
raised here again, its message prefixed with the rank, so the command line prints one paragraph;
a stop signal (Ctrl-C, SIGTERM, SIGUSR1), sent to the process group or to this process alone, is
passed on to every rank at once (revvit.engine.preemption), which stop together and report where;
a collective that waited DIST_TIMEOUT seconds names the ranks that never arrived. Anything else is a
bug and keeps the rank's traceback.
"""

import datetime
import logging
import os
from multiprocessing import resource_tracker
import pickle
import re
import signal
import socket
import sys
import threading

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException, ProcessRaisedException

from revvit.config import ConfigError
from revvit.datasets.loader import num_workers
from revvit.utils import checkpoint as cu
from revvit.utils import distributed as du
from revvit.utils.errors import Interrupted, UserError

from . import preemption

__all__ = ["CollectiveTimeout", "LaunchError", "RankKilled", "check_init_method", "end_process", "exit_process", "cpu_threads", "external_launcher", "launch", "world_size_of"]

# Seconds the spawned processes get to report and exit on their own once one of them has failed
# or Ctrl-C was pressed, before they are stopped.
_GRACE_S = 10.0


class LaunchError(UserError, RuntimeError):
    """The distributed environment and the config disagree; the message says what to change."""


class CollectiveTimeout(UserError):
    """A collective operation waited DIST_TIMEOUT seconds: some rank never arrived."""

    def __init__(self, message, rank=None):
        super().__init__(message)
        self.rank = rank


def world_size_of(cfg):
    return max(1, cfg.NUM_GPUS) * cfg.NUM_SHARDS


def _backend(cfg):
    if du.uses_cuda(cfg):
        return cfg.DIST_BACKEND
    return "gloo"


def _check_devices(cfg):
    """Processes spawned here all see the same devices, one each: there must be enough. (Under torchrun
    or SLURM a rank may see one device of its own, whatever NUM_GPUS is: that is not checked.)"""
    if du.uses_cuda(cfg) and torch.cuda.device_count() < cfg.NUM_GPUS:
        raise LaunchError(
            f"NUM_GPUS {cfg.NUM_GPUS} but this machine has {torch.cuda.device_count()} CUDA devices "
            f"(CUDA_VISIBLE_DEVICES '{os.environ.get('CUDA_VISIBLE_DEVICES', '')}'); set NUM_GPUS to at most that number."
        )


def _free_local_init_method():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def cpu_threads(cfg, procs_on_machine, cores=None):
    """Intra-op threads for one CPU training process: its share of the cores, less one per loader worker.

    torch starts one thread per core in every process, and each DataLoader worker keeps a core busy
    too; on a small machine the oversubscribed threads then wait on each other (a 2-core laptop
    running the demo with 2 threads and 2 workers is about 2x slower than with 1 thread).
    """
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, procs_on_machine) - num_workers(cfg))


def _limit_cpu_threads(cfg, procs_on_machine):
    # Only for CPU processes, and never against an explicit OMP_NUM_THREADS from the user.
    if du.uses_cuda(cfg) or "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(cpu_threads(cfg, procs_on_machine))


def _is_timeout(error):
    """Whether a process-group error means that some rank never arrived within DIST_TIMEOUT.

    By type where torch gives one: DistStoreError is the rendezvous (init_process_group waiting for
    the others). NCCL raises DistBackendError for every communicator failure, a timeout among them,
    and gloo a plain RuntimeError ("Timed out waiting 5000ms for recv operation"): for those only the
    message tells a timeout from another failure.
    """
    if isinstance(error, UserError) or not isinstance(error, RuntimeError):
        return False
    if isinstance(error, dist.DistStoreError):
        return True
    text = str(error).lower()
    return "timed out" in text or "timeout" in text


def _timeout_error(cfg, rank, error):
    rendezvous = isinstance(error, (dist.DistStoreError, dist.DistNetworkError))  # the store: init_process_group
    where = "at the rendezvous (init_process_group)" if rendezvous else "in a collective operation"
    return CollectiveTimeout(
        f"rank {rank} waited DIST_TIMEOUT {cfg.DIST_TIMEOUT} s for the other processes {where} "
        f"and stopped ({str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}).",
        rank=rank,
    )


def _aborted_error(cfg, rank):
    """A rank that NCCL's watchdog ended: it reports nothing itself, the parent sees it die by SIGABRT."""
    return CollectiveTimeout(
        f"rank {rank} was stopped by NCCL's watchdog (SIGABRT): a collective operation it was in did not complete "
        f"within DIST_TIMEOUT {cfg.DIST_TIMEOUT} s, because another rank stalled (blocked reading data, deadlocked) "
        "or failed. Look at the other ranks' output for the first error; raise DIST_TIMEOUT only if its steps are "
        "really that slow.",
        rank=rank,
    )


def check_init_method(init_method):
    """--init_method names where the processes meet, in one of the forms torch.distributed understands."""
    if init_method is None or init_method == "env://":
        return
    scheme, sep, rest = init_method.partition("://")
    port = rest.rpartition(":")[2].split("?")[0] if scheme == "tcp" else ""
    if not sep or scheme not in ("tcp", "file") or not rest or (scheme == "tcp" and not port.isdigit()):
        raise LaunchError(
            f"--init_method {init_method} is not a meeting point processes can use: give tcp://<host of shard 0>:<free "
            "port>, file:///<path on a file system every machine shares>, or env:// (MASTER_ADDR and MASTER_PORT); "
            "on one machine leave it out and a free local port is chosen."
        )


def _init_group(cfg, init_method, world_size, rank, device):
    """The process group; on CUDA bound to this process's GPU (``device_id``: NCCL connects eagerly
    and never guesses the device from the rank)."""
    # The timeout bounds every collective (and the rendezvous): a rank that stalls ends the job.
    timeout = datetime.timedelta(seconds=cfg.DIST_TIMEOUT)
    bound = {"device_id": device} if device.type == "cuda" else {}
    try:
        dist.init_process_group(
            backend=_backend(cfg), init_method=init_method, world_size=world_size, rank=rank, timeout=timeout, **bound
        )
    except dist.DistNetworkError as e:
        if _is_timeout(e):
            raise
        # The meeting point cannot be opened: the port is taken (or the host is not this machine's).
        reason = str(e).strip().splitlines()[0]
        raise LaunchError(
            f"rank {rank}: cannot open the meeting point --init_method {init_method} ({reason}). Choose a free port "
            "(another process, perhaps an earlier run, holds this one), or on one machine leave --init_method out "
            "and a free local port is chosen."
        ) from None


def _bind_device(cfg, local_rank, procs_on_machine):
    """This process's device (its local rank modulo the visible GPUs, or the CPU) and CPU threads."""
    du.set_local_rank(local_rank)
    device = du.get_device(cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the current device: where NCCL and the collectives' tensors go
    _limit_cpu_threads(cfg, procs_on_machine)
    return device


def _run_member(local_rank, func, cfg, init_method, rank, world_size, procs_on_machine):
    global _was_member
    device = _bind_device(cfg, local_rank, procs_on_machine)
    try:
        _init_group(cfg, init_method, world_size, rank, device)
        _was_member = True
        try:
            return func(cfg)
        finally:
            dist.destroy_process_group()
    except RuntimeError as e:
        if _is_timeout(e):
            raise _timeout_error(cfg, rank, e) from e
        raise


def _spawned(local_rank, func, cfg, init_method, reports, stop_flag, launcher_pid):
    """One spawned process: a user error or a stop goes to the parent through ``reports``; a bug raises.

    ``stop_flag``: the launcher's shared integer through which it passes on the signals it receives.
    ``launcher_pid``: the launcher; when it has died, rank 0 writes the report itself.
    """
    preemption.set_launcher_flag(stop_flag, launcher_pid)
    procs = max(1, cfg.NUM_GPUS)
    rank = cfg.SHARD_ID * procs + local_rank
    try:
        _run_member(local_rank, func, cfg, init_method, rank, world_size_of(cfg), procs)
    except (UserError, ConfigError) as e:
        _report(reports, rank, e, f"error: {_with_rank(rank, e)}")
        end_process(1)
    except KeyboardInterrupt as e:
        # A second Ctrl-C while we report would cut the report short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stopped = e if isinstance(e, Interrupted) else Interrupted(str(e) or "Interrupted")
        _report(reports, rank, stopped, str(stopped))
        end_process(stopped.exit_code)
    end_process(0)


_was_member = False  # this process joined a process group (and left it)


def end_process(code):
    """Exit a process that was a member of a process group, without interpreter finalization.

    FSDP2's state holds its process group past ``destroy_process_group`` (its reference cycles run
    through tensors that C++ holds, which the garbage collector cannot see; measured: a 2-process gloo
    job keeps the group's 3 threads after destroy_process_group and gc.collect()), so the group's C++
    threads are still running when the interpreter finalizes and frees it. A C++ thread that needs
    the GIL then is ended by the interpreter in a way C++ cannot unwind, and the process aborts with
    ``terminate called without an active exception``: a finished run reported as failed (SIGABRT).
    Once the job's work is done, its logs flushed and the group destroyed, finalization has nothing
    left to do that the operating system does not.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed terminal or pipe
            pass
    os._exit(code)


def exit_process(code):
    """The end of ``run_net.py``: ``end_process`` where this process was a member of a process group
    (started by torchrun or SLURM), a plain exit otherwise."""
    if _was_member:
        end_process(code)
    sys.exit(code)


def _report(reports, rank, error, line):
    """Send ``error`` to the launcher; without a launcher left to print it, rank 0 prints ``line`` itself
    (to the launcher's terminal or log, which the ranks share)."""
    reports.put((rank, error))
    if preemption.launcher_died() and rank == 0:
        try:
            sys.stderr.write(f"run_net.py: {line}\n")
            sys.stderr.flush()
        except OSError:  # the terminal is gone too (SIGHUP): nowhere left to write
            pass


def _drain(reports):
    found = []
    while not reports.empty():
        found.append(reports.get())
    return sorted(found, key=lambda item: item[0])


def _with_rank(rank, error):
    """Prefix the message with the rank that raised it, unless it already names it (DataStallError does)."""
    prefix = f"rank {rank}: "
    if not str(error).startswith(prefix):
        error.args = (prefix + str(error),) + tuple(error.args[1:])
    return error


def _stop(context, grace_s):
    """Let the processes finish reporting for ``grace_s``, then interrupt them, then terminate them."""
    for attempt in (None, signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in context.processes if p.is_alive()]
        if not alive:
            return
        if attempt is not None:
            for p in alive:
                os.kill(p.pid, attempt)
        for p in alive:
            p.join(grace_s / len(alive))


def _spawn_error(cfg, reports):
    """The error to show for a failed spawned job, or None when no rank reported one (a bug).

    A rank that stalled reports nothing; the ranks of this machine that timed out waiting for it
    report. When every rank here waited, the stalled one is on another machine.
    """
    found = _drain(reports)
    users = [(r, e) for r, e in found if not isinstance(e, (CollectiveTimeout, KeyboardInterrupt))]
    if users:
        return _with_rank(*users[0])
    waited = [(r, e) for r, e in found if isinstance(e, CollectiveTimeout)]
    if waited:
        waiting = {r for r, _ in waited}
        procs = max(1, cfg.NUM_GPUS)
        here = range(cfg.SHARD_ID * procs, (cfg.SHARD_ID + 1) * procs)
        stalled = [r for r in here if r not in waiting]
        first = waited[0][1]
        if stalled:
            who = f"rank {stalled[0]}" if len(stalled) == 1 else "ranks " + ", ".join(map(str, stalled))
            return CollectiveTimeout(
                f"{who} stalled: it never reached the collective operation that the others waited DIST_TIMEOUT "
                f"{cfg.DIST_TIMEOUT} s for, and the job was stopped ({first}). A rank stalls when it is blocked reading "
                "data (a hung network file system, a pipe) or deadlocked: check what it reads; raise DIST_TIMEOUT only "
                "if its steps are really that slow."
            )
        if cfg.NUM_SHARDS > 1:
            return CollectiveTimeout(
                f"A rank on another machine stalled: every rank of machine SHARD_ID {cfg.SHARD_ID} waited DIST_TIMEOUT "
                f"{cfg.DIST_TIMEOUT} s for it in a collective operation ({first}). Look at the other machines' output."
            )
        return first
    stopped = [e for _, e in found if isinstance(e, KeyboardInterrupt)]
    return stopped[0] if stopped else None


class _PassOn:
    """The launcher's stop signals, passed on to its ranks through a shared integer: the first as
    signum (stop at the next step boundary), the second as -signum (stop now)."""

    def __init__(self, flag):
        self.flag = flag
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._on_signal) for s in preemption.STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False

    def _on_signal(self, signum, frame):
        self.flag.value = -signum if self.flag.value else signum

    @property
    def signum(self):
        return abs(self.flag.value)


def _start_resource_tracker():
    """multiprocessing's helper process ignores SIGINT and SIGTERM but not SIGUSR1, which SLURM's
    --signal=USR1 sends to every process of the job, nor SIGHUP, which a closing terminal sends: started
    with both blocked (the mask is inherited), it outlives them instead of dying with a traceback."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGHUP})
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _spawn(cfg, func, init_method):
    _start_resource_tracker()
    ctx = mp.get_context("spawn")
    reports, stop_flag = ctx.SimpleQueue(), ctx.Value("i", 0, lock=False)
    # Handlers first: the ranks start with their own (exec resets a Python handler), and a signal
    # that arrives while they start is passed on rather than ending this process alone.
    with _PassOn(stop_flag) as passed:
        context = mp.start_processes(
            _spawned, args=(func, cfg, init_method, reports, stop_flag, os.getpid()), nprocs=max(1, cfg.NUM_GPUS),
            join=False, start_method="spawn"
        )
        try:
            while not context.join(grace_period=_GRACE_S):
                pass
        except KeyboardInterrupt:  # only when the handlers could not be installed (not the main thread)
            _stop(context, _GRACE_S)
            stopped = [e for _, e in _drain(reports) if isinstance(e, KeyboardInterrupt)]
            raise (stopped[0] if stopped else Interrupted("Interrupted; rerun the same command to resume from the last checkpoint.")) from None
        except ProcessException as raised:
            if passed.signum:  # the ranks are stopping: let them all finish their reports (bounded)
                _stop(context, cfg.TRAIN.STOP_GRACE_PERIOD + _GRACE_S)
            error = _spawn_error(cfg, reports)
            if error is None and _watchdog_abort(cfg, raised):
                error = _aborted_error(cfg, cfg.SHARD_ID * max(1, cfg.NUM_GPUS) + raised.error_index)
            if error is None and passed.signum:  # they stopped at once: nothing reported
                why = "a second signal, or TRAIN.STOP_GRACE_PERIOD ran out, or the signal came before training started"
                error = Interrupted(preemption.stopped_at_once(cfg.OUTPUT_DIR, passed.signum, why), passed.signum)
            if error is None:
                error = _killed_rank_error(cfg, context, raised)
            if error is None:
                raise _root_cause(context, raised) from None
            raise error from None


class RankKilled(UserError):
    """A rank was ended by a signal it cannot handle (SIGKILL: the out-of-memory killer, a scheduler)."""


def _killed_rank_error(cfg, context, raised):
    """The paragraph for a rank that a signal ended while the others ran: they fail only because it is
    gone (their collectives lose the connection), so theirs are not the errors to show. ``join`` has
    stopped every process by now; the first to die is the one ``raised`` names, when a signal ended it."""
    ended = {i: -p.exitcode for i, p in enumerate(context.processes) if p.exitcode is not None and p.exitcode < 0}
    if not ended:
        return None
    index = raised.error_index if raised.error_index in ended else min(ended)
    signum = ended[index]
    rank = cfg.SHARD_ID * max(1, cfg.NUM_GPUS) + index
    why = " (the kernel's out-of-memory killer, see dmesg, or the job scheduler)" if signum == signal.SIGKILL else ""
    last = cu.latest_checkpoint(cfg.OUTPUT_DIR)
    resume = f"rerun the same command to resume from {last}" if last else "no checkpoint was saved yet: a rerun starts from the beginning"
    return RankKilled(
        f"rank {rank} was killed by {preemption.signal_name(signum)}{why}, and the other ranks were stopped; {resume}."
    )


def _watchdog_abort(cfg, raised):
    """A spawned NCCL rank that died by SIGABRT: NCCL's watchdog ends a rank that way when its collective
    times out or its communicator fails (TORCH_NCCL_ASYNC_ERROR_HANDLING, on by default)."""
    return isinstance(raised, ProcessExitedException) and raised.signal_name == "SIGABRT" and _backend(cfg) == "nccl"


# How gloo reports a peer that exited; such an error is the consequence of another rank's failure.
# Matched as text: a spawned rank's error file holds only its formatted traceback, not the exception.
_PEER_GONE = re.compile(r"Connection closed by peer|Connection reset by peer|Broken pipe")


def _root_cause(context, raised):
    """A bug on one rank makes its peers fail too (their collectives lose the connection), and either
    may be seen first: show the traceback of the rank whose error is not a lost peer."""
    for index, path in enumerate(context.error_files):
        if not os.access(path, os.R_OK):
            continue
        with open(path, "rb") as f:
            trace = pickle.load(f)
        if not _PEER_GONE.search(trace):
            msg = f"\n\n-- Process {index:d} terminated with the following error:\n{trace}"
            return ProcessRaisedException(msg, index, context.processes[index].pid)
    return raised


def external_launcher(env):
    """(rank, world_size, local_rank, local_world_size, name) when torchrun or srun started us."""
    if all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        local_ws = int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"]))
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]), local_ws, "torchrun"
    if all(k in env for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")) and int(env["SLURM_NTASKS"]) > 1:
        # SLURM_NTASKS_PER_NODE looks like "8", "8(x4)" or "8,4"; only the CPU thread share uses it.
        per_node = re.match(r"\d+", env.get("SLURM_NTASKS_PER_NODE", ""))
        local_ws = int(per_node.group()) if per_node else int(env["SLURM_NTASKS"])
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env["SLURM_LOCALID"]), local_ws, "SLURM"
    return None


def launch(cfg, func, init_method=None, env=None):
    """Run ``func(cfg)`` on every process of the job; returns its result in a single process run."""
    env = os.environ if env is None else env
    check_init_method(init_method)
    external = external_launcher(env)
    if external is not None:
        rank, world_size, local_rank, local_ws, name = external
        if world_size != world_size_of(cfg):
            raise LaunchError(
                f"{name} started {world_size} processes but the config asks for NUM_GPUS {cfg.NUM_GPUS} x "
                f"NUM_SHARDS {cfg.NUM_SHARDS} = {world_size_of(cfg)}; pass NUM_GPUS <processes per machine> "
                "NUM_SHARDS <machines> to match the launcher."
            )
        if world_size == 1:
            _bind_device(cfg, local_rank, 1)
            return func(cfg)
        if init_method is None:
            if not ("MASTER_ADDR" in env and "MASTER_PORT" in env):
                raise LaunchError(
                    f"Started by {name} without MASTER_ADDR/MASTER_PORT: pass --init_method tcp://<first host>:<port> "
                    "or export MASTER_ADDR and MASTER_PORT for every task."
                )
            init_method = "env://"
        return _run_member(local_rank, func, cfg, init_method, rank, world_size, local_ws)

    if world_size_of(cfg) == 1:
        _bind_device(cfg, 0, 1)
        return func(cfg)
    if init_method is None:
        if cfg.NUM_SHARDS > 1:
            raise LaunchError(
                f"NUM_SHARDS {cfg.NUM_SHARDS}: every machine must be given the same --init_method "
                "tcp://<host of shard 0>:<free port> (or file://<shared path>)."
            )
        init_method = _free_local_init_method()
    _check_devices(cfg)
    _spawn(cfg, func, init_method)
    return None
