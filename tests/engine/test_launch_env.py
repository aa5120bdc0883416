"""The launcher reads torchrun / SLURM environments and refuses combinations that cannot work."""

import pytest
import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import ProcessExitedException

from revvit.config import get_cfg
from revvit.engine import launch as launch_module
from revvit.engine.launch import CollectiveTimeout, LaunchError, launch, world_size_of


@pytest.fixture(autouse=True)
def _keep_thread_count():
    # launch() sets this process's CPU thread count; give the other tests theirs back.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _cfg(num_gpus=2, num_shards=1):
    cfg = get_cfg()
    cfg.NUM_GPUS, cfg.NUM_SHARDS = num_gpus, num_shards
    return cfg


def _job(cfg):
    return "ran here"


def test_world_size_counts_cpu_processes():
    assert world_size_of(_cfg(0)) == 1 and world_size_of(_cfg(2, 3)) == 6


def test_single_process_runs_in_place_without_process_group():
    assert launch(_cfg(0), _job, env={}) == "ran here"
    assert launch(_cfg(1), _job, env={}) == "ran here"


def test_torchrun_world_must_match_the_config():
    env = {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    with pytest.raises(LaunchError, match="torchrun started 4 processes.*NUM_GPUS 2 x NUM_SHARDS 1 = 2"):
        launch(_cfg(2), _job, env=env)


def test_torchrun_single_process_runs_in_place():
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    assert launch(_cfg(1), _job, env=env) == "ran here"


def test_slurm_tasks_need_a_rendezvous_address():
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1"}
    with pytest.raises(LaunchError, match="--init_method tcp://"):
        launch(_cfg(2), _job, env=env)
    with pytest.raises(LaunchError, match="SLURM started 2 processes"):
        launch(_cfg(4), _job, env=env)


def test_several_machines_need_init_method():
    with pytest.raises(LaunchError, match="NUM_SHARDS 2"):
        launch(_cfg(1, 2), _job, env={})


def test_cpu_threads_leave_cores_for_loader_workers():
    from revvit.engine.launch import cpu_threads

    cfg = _cfg(0)
    cfg.DATA_LOADER.NUM_WORKERS = 0
    assert cpu_threads(cfg, 1, cores=2) == 2
    assert cpu_threads(cfg, 2, cores=8) == 4
    cfg.DATA_LOADER.NUM_WORKERS = 2
    assert cpu_threads(cfg, 1, cores=2) == 1
    assert cpu_threads(cfg, 2, cores=16) == 6


def _cuda(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_spawning_more_gpu_processes_than_devices_is_refused(monkeypatch):
    _cuda(monkeypatch, 1)
    with pytest.raises(LaunchError, match="NUM_GPUS 2 but this machine has 1 CUDA devices"):
        launch(_cfg(2), _job, env={})


def test_one_visible_gpu_per_task_is_not_refused(monkeypatch):
    """SLURM --gpus-per-task 1 / a per-rank CUDA_VISIBLE_DEVICES: each of the 4 ranks sees 1 device. The
    launcher goes on to the rendezvous (which this environment lacks) instead of refusing the device count."""
    _cuda(monkeypatch, 1)
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "3"}
    with pytest.raises(LaunchError, match="MASTER_ADDR"):
        launch(_cfg(4), _job, env=env)


def test_nccl_group_is_bound_to_the_process_gpu(monkeypatch):
    seen = []
    monkeypatch.setattr(launch_module.dist, "init_process_group", lambda **kw: seen.append(kw))
    launch_module._init_group(_cfg(2), "tcp://127.0.0.1:1", 2, 1, torch.device("cuda", 1))
    launch_module._init_group(_cfg(2), "tcp://127.0.0.1:1", 2, 1, torch.device("cpu"))
    assert seen[0]["device_id"] == torch.device("cuda", 1) and "device_id" not in seen[1]


@pytest.mark.parametrize("error,timeout", [
    (dist.DistStoreError("Timed out after 31 seconds waiting for clients. 1/2 clients joined."), True),
    (RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 2000ms for recv operation to complete"), True),
    (dist.DistBackendError("[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=9, OpType=ALLREDUCE, "
                           "Timeout(ms)=1800000) ran for 1800002 milliseconds before timing out."), True),
    (dist.DistBackendError("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error"), False),
    (dist.DistNetworkError("The client socket has timed out after 1800000ms while trying to connect to (10.0.0.1, 29500)."), True),
    (dist.DistNetworkError("Connection refused"), False),
    (RuntimeError("shape mismatch"), False),
])
def test_process_group_errors_that_mean_a_rank_never_arrived(error, timeout):
    assert launch_module._is_timeout(error) is timeout
    if timeout:
        message = str(launch_module._timeout_error(_cfg(2), 1, error))
        assert message.startswith("rank 1 waited DIST_TIMEOUT 1800 s for the other processes")
        where = "rendezvous" if isinstance(error, (dist.DistStoreError, dist.DistNetworkError)) else "collective operation"
        assert where in message


def test_an_nccl_rank_aborted_by_the_watchdog_is_reported_as_a_collective_timeout(monkeypatch):
    _cuda(monkeypatch, 2)
    cfg = _cfg(2)
    aborted = ProcessExitedException("process 1 terminated with signal SIGABRT", error_index=1, error_pid=7,
                                     exit_code=-6, signal_name="SIGABRT")
    killed = ProcessExitedException("process 1 terminated with signal SIGKILL", error_index=1, error_pid=7,
                                    exit_code=-9, signal_name="SIGKILL")
    assert launch_module._watchdog_abort(cfg, aborted) and not launch_module._watchdog_abort(cfg, killed)
    cfg.DIST_BACKEND = "gloo"
    assert not launch_module._watchdog_abort(cfg, aborted)
    error = launch_module._aborted_error(cfg, 1)
    assert isinstance(error, CollectiveTimeout) and error.rank == 1
    assert "rank 1 was stopped by NCCL's watchdog" in str(error) and "DIST_TIMEOUT 1800 s" in str(error)
