"""The launcher reads torchrun / SLURM environments and refuses combinations that cannot work."""

import pytest
import torch

from revvit.config import get_cfg
from revvit.engine.launch import LaunchError, launch, world_size_of


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
