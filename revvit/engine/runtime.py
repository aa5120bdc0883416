"""What a training and a test run share: output directory, logging, seeds, device, precision.

train() and evaluate() both start with ``build_run`` and move batches with ``to_device``; the
training loop and the test loop both run the model under ``autocast``, in the one precision that
``precision(cfg, device)`` decides.
"""

import contextlib
import os
import random
import signal
import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from revvit.datasets import drop_invalid
from revvit.utils import distributed as du
from revvit.utils import logging
from revvit.utils.errors import UserError
from revvit.utils.model_stats import gflops, params_count

logger = logging.get_logger(__name__)

__all__ = [
    "OutputDirError",
    "DataStallError",
    "Precision",
    "PrecisionError",
    "autocast",
    "batches",
    "build_run",
    "epoch_seed",
    "log_model_info",
    "precision",
    "predict_readable",
    "prepare_output_dir",
    "report_bad_samples",
    "seed_all",
    "set_math_modes",
    "to_device",
]


class OutputDirError(UserError):
    """OUTPUT_DIR cannot hold the run's files (it is a file, or not writable)."""


class PrecisionError(UserError):
    """TRAIN.MIXED_PRECISION_DTYPE asks for a dtype this device cannot compute in."""


class DataStallError(UserError):
    """Reading one batch took more than DATA_LOADER.TIMEOUT seconds (in a worker or in the main process)."""


def _stall(cfg, who):
    return DataStallError(
        f"rank {du.get_rank()}: {who} produced no batch in DATA_LOADER.TIMEOUT {cfg.DATA_LOADER.TIMEOUT} s; it is "
        f"blocked reading its files (a hung network file system, a pipe or device among the data in "
        f"{cfg.DATA.PATH_TO_DATA_DIR}). Check that storage; raise DATA_LOADER.TIMEOUT only if decoding one batch "
        "really takes that long."
    )


@contextlib.contextmanager
def _read_deadline(cfg, loader):
    """DATA_LOADER.TIMEOUT for a loader without workers, which DataLoader does not bound.

    A real-time timer (SIGALRM) interrupts whatever the read is blocked in (a FIFO, a socket, a stalled
    network mount: any read that waits, not only files of one kind), and its handler raises the same
    DataStallError a stalled worker gives. Only the main thread receives signals; elsewhere (and with
    workers, or TIMEOUT 0) this does nothing.
    """
    timeout = cfg.DATA_LOADER.TIMEOUT
    if loader.num_workers > 0 or not timeout or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise _stall(cfg, "the data loader (DATA_LOADER.NUM_WORKERS 0)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def batches(loader, cfg):
    """The loader's batches; a read stalled past DATA_LOADER.TIMEOUT becomes a one-paragraph error.

    DataLoader applies its ``timeout`` only with workers (construct_loader passes DATA_LOADER.TIMEOUT
    then) and raises a bare RuntimeError, which would otherwise look like a bug; without workers
    ``_read_deadline`` bounds each batch. A UserError raised in a worker (every file unreadable)
    arrives wrapped in the worker's traceback: its own paragraph is raised again.
    """
    it = iter(loader)
    while True:
        try:
            with _read_deadline(cfg, loader):
                batch = next(it)
        except StopIteration:
            return
        except UserError as e:
            raise _unwrapped(e) from None
        except RuntimeError as e:
            if "DataLoader timed out" not in str(e):
                raise
            raise _stall(cfg, "a data loader worker") from None
        yield batch


def _unwrapped(error):
    """A UserError re-raised by DataLoader carries the worker's traceback in its message
    ("Caught X in DataLoader worker process 0. Original Traceback ... X: <message>"); keep the message."""
    text = str(error)
    if "Original Traceback" not in text:
        return error
    name = type(error).__name__
    last = [line for line in text.splitlines() if line.split(":", 1)[0].endswith(name)]
    if last:
        error.args = (last[-1].split(": ", 1)[1],) + tuple(error.args[1:])
    return error


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(cfg, epoch, rank):
    """A seed that depends only on (RNG_SEED, epoch, rank), so resumed epochs replay exactly."""
    return int(np.random.SeedSequence([cfg.RNG_SEED, epoch, rank]).generate_state(1)[0])


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
    """Native bfloat16 (CPUs; CUDA compute capability 8.0 on, ROCm). Not torch.cuda.is_bf16_supported():
    it asks about the current device and, by default, counts the slow emulation of older GPUs."""
    if device.type != "cuda":
        return True
    return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8


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


def to_device(batch, device):
    inputs, labels, index, meta = batch
    nb = device.type == "cuda"
    inputs = [x.to(device, non_blocking=nb) for x in inputs]
    return inputs, labels.to(device, non_blocking=nb), index.to(device, non_blocking=nb), meta


def predict_readable(model, batch, cfg, device):
    """``(preds, labels, index, meta)`` of the batch's readable rows on ``device``, preds in float32 under
    the run's autocast; preds is None when no row is left (every file unreadable, or only the padding
    repeats validation drops).

    Such a rank still runs the forward under FSDP, on the batch as read, and discards it: the forward's
    all-gathers are collectives that the other ranks wait in.
    """
    inputs, labels, index, meta = to_device(drop_invalid(*batch), device)
    with autocast(cfg, device):
        if inputs[0].shape[0]:
            return model(inputs).float(), labels, index, meta
        if cfg.MODEL.FSDP and du.get_world_size() > 1:
            model(to_device(batch, device)[0])
    return None, labels, index, meta


def report_bad_samples(counter, split, cur_epoch):
    """Warn (rank 0) with the job-wide number of skipped files; returns that number."""
    total = int(du.all_reduce([torch.tensor(float(counter.count))], average=False)[0].item())
    msg = counter.summary(split, cur_epoch + 1, count=total)
    if msg and du.is_master_proc():
        logger.warning(msg)
    counter.reset()
    return total


def log_model_info(model, cfg):
    """Parameters and GFLOPs of one input, in the units papers use (rank 0 only)."""
    if not (cfg.LOG_MODEL_INFO and du.is_master_proc()):
        return None
    params = params_count(model)
    try:
        flops = gflops(model, cfg)
    except Exception as e:  # a FLOP counter failure must not stop training; say why it is missing
        logger.warning(f"GFLOPs not measured ({type(e).__name__}: {e})")
        flops = None
    logger.info(f"Model {cfg.MODEL.MODEL_NAME}: {params:,} parameters" + (f", {flops:.4g} GFLOPs per input" if flops is not None else ""))
    return {"params": params, "gflops": flops}


def prepare_output_dir(output_dir):
    """Create OUTPUT_DIR and check that files can be written in it, before any work is done.

    Without this check an OUTPUT_DIR that is a file or read-only surfaces as a traceback from the
    logging setup, or after the first epoch when the checkpoint is saved.
    """
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f".revvit_write_test_{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        what = "is a file, not a directory" if os.path.isfile(output_dir) else f"cannot be written ({e.strerror}: {e.filename})"
        raise OutputDirError(
            f"OUTPUT_DIR '{output_dir}' {what}. Pass OUTPUT_DIR <a directory you can write to>."
        ) from None
    checkpoints = os.path.join(output_dir, "checkpoints")
    if os.path.exists(checkpoints) and not os.path.isdir(checkpoints):
        raise OutputDirError(
            f"{checkpoints} is a file, but checkpoints are saved in a directory of that name. Move the file away, "
            "or pass another OUTPUT_DIR."
        )


def build_run(cfg, config_name="config.yaml"):
    """Output dir, logging, seed and the model on its device; shared by train() and evaluate().

    ``config_name``: where rank 0 records the config. A test-only run writes ``config_test.yaml``
    so that it never overwrites the ``config.yaml`` of the training run in the same OUTPUT_DIR; a
    different config of the same name is kept beside it (``run_dir.record_config``).
    """
    from revvit.models import build_model

    from .run_dir import describe_changes, record_config

    if du.is_master_proc():
        prepare_output_dir(cfg.OUTPUT_DIR)
    logging.setup_logging(cfg.OUTPUT_DIR, iter_stats_stdout=cfg.LOG_ITER_STATS_STDOUT)
    if du.is_master_proc():
        kept, changes = record_config(cfg.OUTPUT_DIR, config_name, cfg.dump())
        if kept is not None:
            logger.info(f"Kept the previous {config_name} as {kept}; this run's config differs in {describe_changes(changes)}")
        logger.info(f"Output in {cfg.OUTPUT_DIR}: {config_name}, stdout.log, json_stats.log, checkpoints/")
    seed_all(cfg.RNG_SEED)
    set_math_modes(cfg)
    device = du.get_device(cfg)
    model = build_model(cfg).to(device)
    log_model_info(model, cfg)
    return model, device
