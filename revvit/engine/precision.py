"""In what arithmetic a run computes: its autocast dtype, loss scaling and torch's math modes.

Training, testing, prediction, FSDP and the benchmarks all ask ``precision(cfg, device)``, and
run the model under ``autocast(cfg, device)``; ``set_math_modes`` sets torch's process-wide switches
(TF32, cuDNN autotuning, deterministic kernels) once, before the model's first matmul.
"""

import contextlib
import os
from dataclasses import dataclass
from typing import Optional

import torch

from revvit.utils.errors import UserError

__all__ = [
    "CUBLAS_DETERMINISTIC_WORKSPACE",
    "Precision",
    "PrecisionError",
    "autocast",
    "precision",
    "set_math_modes",
]


class PrecisionError(UserError):
    """TRAIN.MIXED_PRECISION_DTYPE asks for a dtype this device cannot compute in."""


@dataclass(frozen=True)
class Precision:
    """The arithmetic a run uses on its device.

    ``dtype``: the autocast dtype (None: float32 throughout). ``use_scaler``: float16 gradients
    underflow without loss scaling, so float16 comes with a GradScaler; bfloat16 has float32's range
    and needs none. ``tf32``: float32 matmuls and convolutions on CUDA may round their inputs to TF32
    (10-bit mantissa), as timm's train.py sets them; DETERMINISTIC turns this off.
    """

    dtype: Optional[torch.dtype] = None
    use_scaler: bool = False
    tf32: bool = False

    def autocast(self, device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    def describe(self):
        """For the start line: 'bfloat16 autocast', 'float16 autocast + GradScaler', 'float32 (TF32 matmuls)'."""
        rest = "float32 (TF32 matmuls)" if self.tf32 else "float32"
        if self.dtype is None:
            return rest
        name = str(self.dtype).replace("torch.", "")
        return f"{name} autocast" + (" + GradScaler" if self.use_scaler else "") + f", else {rest}"


def _bf16_supported(device):
    """Native bfloat16: every CPU; on CUDA, compute capability 8.0 on (or ROCm). torch answers for the
    current device, so ``device`` is made current for the question; ``including_emulation=False``
    leaves out the slow emulation of older GPUs, which would make "auto" pick the slower dtype."""
    if device.type != "cuda":
        return True
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def precision(cfg, device):
    """The one answer to "in what precision does this run compute": TRAIN.MIXED_PRECISION(_DTYPE) and
    DETERMINISTIC on ``device``. Training, testing, prediction, FSDP and the benchmarks all ask here.

    auto: bfloat16 where the device computes it (CPUs, CUDA from Ampere on), else float16 with a
    GradScaler (Volta, Turing). float16 forced keeps PySlowFast's fp16 + GradScaler, on CPU too.
    """
    tf32 = device.type == "cuda" and not cfg.DETERMINISTIC
    if not cfg.TRAIN.MIXED_PRECISION:
        return Precision(tf32=tf32)
    want = cfg.TRAIN.MIXED_PRECISION_DTYPE
    if want == "bfloat16" and not _bf16_supported(device):
        raise PrecisionError(
            f"TRAIN.MIXED_PRECISION_DTYPE bfloat16, but {torch.cuda.get_device_name(device)} does not compute in "
            "bfloat16 (it needs an Ampere or later GPU). Set TRAIN.MIXED_PRECISION_DTYPE float16 (or auto)."
        )
    if want == "float16" or (want == "auto" and not _bf16_supported(device)):
        return Precision(torch.float16, use_scaler=True, tf32=tf32)
    return Precision(torch.bfloat16, tf32=tf32)


CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"  # 8 buffers of 4 MiB: NVIDIA's setting for reproducible cuBLAS


def set_math_modes(cfg):
    """TF32 and cuDNN autotuning on (fast), or, with DETERMINISTIC, off and every kernel deterministic.

    DETERMINISTIC: ``torch.use_deterministic_algorithms(True)`` makes the CUDA kernels that accumulate
    with atomics take a deterministic variant where torch has one: the backward of SDPA's flash and
    memory-efficient kernels (SDPA's backend choice takes the mode into account), of max pooling and of
    indexing; an op without one raises (on this model, AvgPool3d's backward: MVIT.MODE avg). cuBLAS is
    only reproducible with a fixed workspace, which it reads from CUBLAS_WORKSPACE_CONFIG when torch
    makes its first handle: set here, before the model's first matmul, unless the user set it. Without
    DETERMINISTIC a CUDA run may round differently from one run to the next (see docs/TRAINING.md).

    Process-wide switches of torch. On the CPU, DETERMINISTIC changes only a few indexing kernels and
    fills the memory torch leaves uninitialised (with NaN), at some cost in speed.
    """
    fast = not cfg.DETERMINISTIC
    torch.backends.cuda.matmul.allow_tf32 = fast
    torch.backends.cudnn.allow_tf32 = fast
    torch.backends.cudnn.benchmark = fast
    torch.backends.cudnn.deterministic = not fast
    if cfg.DETERMINISTIC:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
    torch.use_deterministic_algorithms(bool(cfg.DETERMINISTIC))


def autocast(cfg, device):
    """Autocast in ``precision(cfg, device)``; a no-op without mixed precision."""
    return precision(cfg, device).autocast(device)
