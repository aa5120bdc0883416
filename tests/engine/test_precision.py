"""engine.precision: the one decision of the arithmetic a run uses, and the start line that names it."""

import contextlib
import os
from types import SimpleNamespace

import pytest
import torch

from revvit.config import get_cfg
from revvit.engine import cli
from revvit.engine.precision import Precision, PrecisionError, precision, set_math_modes

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


def _cfg(mixed=True, dtype="auto", deterministic=False, num_gpus=1):
    cfg = get_cfg()
    cfg.TRAIN.MIXED_PRECISION, cfg.TRAIN.MIXED_PRECISION_DTYPE = mixed, dtype
    cfg.DETERMINISTIC, cfg.NUM_GPUS = deterministic, num_gpus
    return cfg


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA device of the given compute capability, as far as precision() and the start line ask."""

    def make(major):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (major, 0))
        # torch.cuda.is_bf16_supported reads the current device's properties, made current by torch.cuda.device.
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d=None: SimpleNamespace(major=major, minor=0))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: f"GPU sm{major}0")
        monkeypatch.setattr(torch.version, "hip", None)

    return make


def test_cpu_computes_in_bfloat16_and_float16_comes_with_a_scaler():
    assert precision(_cfg(mixed=False), CPU) == Precision()
    assert precision(_cfg(), CPU) == Precision(torch.bfloat16)
    assert precision(_cfg(dtype="bfloat16"), CPU) == Precision(torch.bfloat16)
    assert precision(_cfg(dtype="float16"), CPU) == Precision(torch.float16, use_scaler=True)


def test_cuda_bfloat16_from_ampere_on_else_float16_with_a_scaler_and_tf32_unless_deterministic(gpu):
    gpu(9)  # Hopper
    assert precision(_cfg(), GPU) == Precision(torch.bfloat16, tf32=True)
    assert precision(_cfg(dtype="float16"), GPU) == Precision(torch.float16, use_scaler=True, tf32=True)
    assert precision(_cfg(mixed=False), GPU) == Precision(tf32=True)
    assert precision(_cfg(mixed=False, deterministic=True), GPU) == Precision()
    gpu(7)  # Volta: no native bfloat16
    assert precision(_cfg(), GPU) == Precision(torch.float16, use_scaler=True, tf32=True)
    with pytest.raises(PrecisionError, match="TRAIN.MIXED_PRECISION_DTYPE bfloat16, but GPU sm70 .* float16"):
        precision(_cfg(dtype="bfloat16"), GPU)


def test_precision_names_itself_and_autocasts():
    assert Precision(torch.bfloat16, tf32=True).describe() == "bfloat16 autocast, else float32 (TF32 matmuls)"
    assert Precision(torch.float16, use_scaler=True).describe() == "float16 autocast + GradScaler, else float32"
    assert Precision().describe() == "float32"
    with Precision(torch.bfloat16).autocast(CPU):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with Precision().autocast(CPU):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_deterministic_turns_off_tf32_and_autotuning_and_asks_for_deterministic_kernels(monkeypatch):
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # restored by monkeypatch
    try:
        set_math_modes(_cfg(deterministic=False))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.benchmark
        assert not torch.backends.cudnn.deterministic and not torch.are_deterministic_algorithms_enabled()
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        set_math_modes(_cfg(deterministic=True))
        assert not (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32 or torch.backends.cudnn.benchmark)
        assert torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own deterministic choice is kept
        set_math_modes(_cfg(deterministic=True))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.deterministic, enabled, warn_only) = saved
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def test_start_line_names_the_device_and_the_precision(gpu):
    cfg = _cfg()
    cfg.NUM_GPUS = 4
    env = {"OMP_NUM_THREADS": "1"}
    assert cli.describe_processes(_cfg(), env=env).endswith("on CPU (no CUDA device found), OMP_NUM_THREADS 1 threads, bfloat16 autocast, else float32")
    gpu(9)
    # SLURM --gpus-per-task 1: rank 6 of 8 (local rank 2 of 4) sees one device.
    assert cli.describe_processes(cfg, external=(6, 8, 2, 4, "SLURM"), env=env) == (
        "4 processes on each of 2 machines (8 in all), started by SLURM on CUDA (this rank on cuda:0 of the 1 it sees, "
        "GPU sm90; nccl), bfloat16 autocast, else float32 (TF32 matmuls)"
    )
    assert cli.describe_processes(_cfg(num_gpus=1), env=env) == (
        "1 process on CUDA (cuda:0 of 1, GPU sm90; no process group), bfloat16 autocast, else float32 (TF32 matmuls)"
    )
