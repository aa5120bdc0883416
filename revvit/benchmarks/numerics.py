"""How a measured step computes: its precision, its attention kernel, and how it is timed on CUDA.

Precision ``fp32`` keeps float32 weights and activations (on CUDA with TF32 matmuls and convolutions and
cudnn.benchmark, as the trainer runs unless DETERMINISTIC); ``bf16`` runs the step under bfloat16
autocast, as TRAIN.MIXED_PRECISION does. Attention ``fused`` lets torch pick its SDPA kernel (flash or
memory-efficient attention on CUDA, which keep no attention matrix); ``math`` forces the explicit
softmax(QK^T)V kernel, which keeps the attention probabilities for backward, as every attention did when
the paper's memory table was measured (2022): like is compared with like only in that mode.

A step runs its forward under ``step_context`` (autocast and the kernel choice) and its backward under
``kernel_context`` (the kernel choice alone: torch recommends autocast around the forward only), so every
attention of the step, recomputations in backward included, runs the chosen kernel. The models replay the
forward's choice in their recomputations themselves (``models.attention.SDPASelection``); the backward's
context makes the step say what it measures without relying on that.
"""

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from revvit.engine.precision import set_math_modes

__all__ = ["ATTENTIONS", "PRECISIONS", "configure_backends", "cuda_step_times", "kernel_context", "step_context"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
ATTENTIONS = ("fused", "math")


def step_context(precision, attention, device):
    """The context a measured forward runs in: autocast and the SDPA kernel choice."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; choose from {', '.join(PRECISIONS)}")
    stack = contextlib.ExitStack()
    dtype = PRECISIONS[precision]
    if dtype is not None:
        stack.enter_context(torch.autocast(device_type=device.type, dtype=dtype))
    stack.enter_context(kernel_context(attention))
    return stack


def kernel_context(attention):
    """The SDPA kernel choice alone: the context a measured backward runs in."""
    if attention not in ATTENTIONS:
        raise ValueError(f"unknown attention '{attention}'; choose from {', '.join(ATTENTIONS)}")
    return sdpa_kernel(SDPBackend.MATH) if attention == "math" else contextlib.nullcontext()


def configure_backends(cfg, device):
    """On CUDA, the trainer's math modes (``precision.set_math_modes``: TF32 and cudnn.benchmark on unless
    ``cfg.DETERMINISTIC``); returns them for the report. CPU arithmetic is left as it is."""
    if device.type != "cuda":
        return {}
    set_math_modes(cfg)
    fast = not cfg.DETERMINISTIC
    return {"tf32": fast, "cudnn_benchmark": fast}


def cuda_step_times(step, n, device):
    """Seconds of ``n`` calls of ``step`` on the GPU, each between two CUDA events.

    The steps are queued back to back (``step`` must not synchronise) and read after one synchronisation,
    so the times are the GPU's, without the host's waits; the caller warms up first.
    """
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) / 1000.0 for start, end in events]
