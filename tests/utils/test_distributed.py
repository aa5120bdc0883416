"""Device choice and collectives: every process on its own device (local rank modulo the visible GPUs),
every collective's tensor on the device of the process group (NCCL refuses CPU tensors)."""

import os

import pytest
import torch
import torch.distributed as dist

from revvit.config import get_cfg
from revvit.datasets import BadSampleCounter
from revvit.datasets.bad_samples import report_bad_samples
from revvit.utils import distributed as du

META = torch.device("meta")  # stands for a GPU: a device other than the CPU that this machine has


class _Reached(Exception):
    pass


@pytest.fixture
def local_rank():
    yield du.set_local_rank
    du.set_local_rank(0)


def test_device_is_the_local_rank_modulo_the_visible_devices():
    assert [du.cuda_index(r, 4) for r in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]  # torchrun, 8 ranks on 2 x 4 GPUs
    assert [du.cuda_index(r, 1) for r in range(4)] == [0, 0, 0, 0]  # SLURM --gpus-per-task 1: each sees its own
    with pytest.raises(ValueError, match="no CUDA device"):
        du.cuda_index(0, 0)


def test_get_device_on_a_one_gpu_per_task_node(monkeypatch, local_rank):
    cfg = get_cfg()
    cfg.NUM_GPUS = 4
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    local_rank(3)
    assert du.get_device(cfg) == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert du.get_device(cfg) == torch.device("cuda", 3)
    cfg.NUM_GPUS = 0
    assert du.get_device(cfg) == torch.device("cpu")


def test_a_process_uses_cuda_only_with_num_gpus_and_a_visible_device(monkeypatch):
    cfg = get_cfg()
    for num_gpus, available, expected in [(1, True, True), (1, False, False), (0, True, False), (0, False, False)]:
        cfg.NUM_GPUS = num_gpus
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        assert du.uses_cuda(cfg) is expected


def test_nccl_collectives_use_the_current_gpu_and_gloo_leaves_tensors_in_place(monkeypatch):
    monkeypatch.setattr(du, "is_dist", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    assert du.collective_device(torch.zeros(1)) == torch.device("cuda", 2)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")
    assert du.collective_device(torch.zeros(1)) == torch.device("cpu")


def _fake_process_group(monkeypatch, seen):
    """A 2-process NCCL group whose device is META; the collective records its tensors' devices and stops."""
    monkeypatch.setattr(du, "is_dist", lambda: True)
    monkeypatch.setattr(du, "get_world_size", lambda: 2)
    monkeypatch.setattr(du, "collective_device", lambda t: META)

    def collective(*tensors, **kwargs):
        seen.extend(t.device for arg in tensors for t in (arg if isinstance(arg, list) else [arg]))
        raise _Reached

    monkeypatch.setattr(dist, "all_reduce", collective)
    monkeypatch.setattr(dist, "all_gather", collective)


def test_every_collective_gets_its_tensors_on_the_process_device(monkeypatch):
    """report_bad_samples counts on the CPU (the count of skipped files) and hands the collective a
    tensor on the process's device; so do all_reduce and all_gather_unaligned with CPU inputs."""
    seen = []
    _fake_process_group(monkeypatch, seen)
    counter = BadSampleCounter()
    for call in (
        lambda: report_bad_samples(counter, "train", 0),
        lambda: du.all_reduce([torch.ones(3), torch.zeros(())]),
        lambda: du.all_gather_unaligned(torch.ones(2, 5)),
    ):
        seen.clear()
        with pytest.raises(_Reached):
            call()
        assert seen and all(d == META for d in seen), seen


def test_tests_not_marked_cuda_see_no_cuda():
    """tests/conftest.py: on a GPU machine too, in this process and in the processes tests start."""
    assert not torch.cuda.is_available() and torch.cuda.device_count() == 0
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
