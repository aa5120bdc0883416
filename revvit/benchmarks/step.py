"""One measured training step, in this process or in a fresh one.

A measurement builds one model one way, brings it to the steady state between two training steps
(weights, gradients and AdamW moments allocated, ``warmup`` real steps done), then runs ``steps``
training steps (forward, cross-entropy, backward, AdamW step) on random data, recording the peak of
each phase over that steady state. On CPU every number a benchmark publishes comes from a fresh
interpreter (``run_isolated``): peak resident memory cannot be shared between models, and blocks the C
allocator keeps after one model would hide the next one's peak. On CUDA the allocator's counters see
live tensors only, so points are measured in one process (``run_point``).

On CUDA the step times come from CUDA events around ``steps`` further steps queued without any host
synchronisation (the memory probes synchronise at every phase), after the warm-up and the measured
steps; on CPU from the host's clocks around the measured steps.

Memory accounting (the same on every device, see ``probes``):

* ``start``: before the model is built (interpreter and torch);
* ``base``: the steady state after the warm-up steps;
* ``phase_peak_bytes``: per phase (forward, backward, optimizer) the highest point over ``base``;
* ``step_bytes``: the largest of them; ``total_bytes = base - start + step_bytes``, what a memory
  budget must hold (model state included).

On CPU the optimizer is the single-tensor AdamW (``foreach=False``; torch's default on CPU): its transient
buffers are one parameter's worth, so the step's peak belongs to the forward or the backward, which
is what a memory-per-image figure is about. The multi-tensor version's buffers are as large as the
whole model and, at the small batches a CPU affords, would hold the step's peak on their own.
"""

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from revvit.config import get_cfg, merge_file, merge_opts
from revvit.utils.model_stats import input_shape, params_count

from .numerics import configure_backends, cuda_step_times, kernel_context, step_context
from .probes import memory_probe, saved_bytes
from .settings import WAYS, StepSpec

__all__ = ["PHASES", "build_cfg", "build_run", "measure", "random_batch", "resolve_config", "run_isolated", "run_point"]

REPO_ROOT = Path(__file__).resolve().parents[2]
PHASES = ("forward", "backward", "optimizer")


def resolve_config(path):
    """``path`` as given, or relative to the repository root (so the defaults work from anywhere)."""
    p = Path(path)
    if p.is_file():
        return str(p)
    if not p.is_absolute() and (REPO_ROOT / p).is_file():
        return str(REPO_ROOT / p)
    raise FileNotFoundError(f"benchmark config '{path}' not found (looked in the working directory and {REPO_ROOT})")


def build_cfg(config, opts, way, batch_size):
    """The config of one measurement: file <- opts <- the way's overrides <- a one-process batch."""
    cfg = get_cfg()
    if config:
        merge_file(cfg, resolve_config(config))
    merge_opts(cfg, list(opts))
    merge_opts(cfg, WAYS[way])
    # The measured step is cross-entropy on random labels: no mixup, whose pairing needs an even batch.
    merge_opts(cfg, ["NUM_GPUS", "1", "NUM_SHARDS", "1", "SHARD_ID", "0", "TRAIN.BATCH_SIZE", str(batch_size), "MIXUP.ENABLE", "False"])
    cfg.DATA.TEST_CROP_SIZE = cfg.DATA.TRAIN_CROP_SIZE
    return cfg


def random_batch(cfg, batch_size, device):
    x = torch.randn(input_shape(cfg, batch_size), device=device)
    y = torch.randint(0, cfg.MODEL.NUM_CLASSES, (batch_size,), device=device)
    return [x], y


def build_run(spec, device):
    """(cfg, model, optimizer, inputs, labels) of ``spec``, the model in training mode on ``device``."""
    from revvit.models import build_model

    cfg = build_cfg(spec.config, spec.opts, spec.way, spec.batch_size)
    model = build_model(cfg).to(device).train()
    # CPU: single-tensor (see the module docstring). CUDA: fused, as the trainer runs it; one kernel
    # updates every parameter in place, without the multi-tensor version's model-sized buffers.
    kind = {"fused": True} if device.type == "cuda" else {"foreach": False}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, **kind)
    inputs, labels = random_batch(cfg, spec.batch_size, device)
    return cfg, model, optimizer, inputs, labels


def measure(spec):
    """Run the training steps of ``spec`` (a StepSpec) here and return the numbers (a JSON-able dict)."""
    device = torch.device(spec.device)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    memory = memory_probe(device)

    mem_start = memory.current()
    cfg, model, optimizer, inputs, labels = build_run(spec, device)
    backends = configure_backends(cfg, device)
    # Steady state: gradients allocated (kept and zeroed, unless set_to_none) and the AdamW moments created.
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=spec.set_to_none)

    phase_peaks = dict.fromkeys(PHASES, 0)

    def phase_end(name, base):
        phase_peaks[name] = max(phase_peaks[name], memory.peak() - base)
        memory.reset_peak()

    def step(base=None):
        with step_context(spec.precision, spec.attention, device):
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        if base is not None:
            phase_end("forward", base)
        with kernel_context(spec.attention):
            loss.backward()
        if base is not None:
            phase_end("backward", base)
        optimizer.step()
        optimizer.zero_grad(set_to_none=spec.set_to_none)
        if base is not None:
            phase_end("optimizer", base)
        return loss.detach()

    losses = [step(memory.current()) for _ in range(spec.warmup)]
    mem_base = memory.current()
    phase_peaks = dict.fromkeys(PHASES, 0)
    memory.reset_peak()
    times, cpu_times = [], []
    for _ in range(spec.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(step(mem_base))
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    if device.type == "cuda" and spec.steps:
        times = cuda_step_times(lambda: losses.append(step()), spec.steps, device)
    losses = [float(v) for v in losses]
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(f"non-finite loss in benchmark steps: {losses}")

    step_bytes = max(phase_peaks.values())
    result = dict(
        spec.to_json(),
        depth=cfg.MVIT.DEPTH,
        crop_size=cfg.DATA.TRAIN_CROP_SIZE,
        params=params_count(model),
        threads=torch.get_num_threads(),
        backends=backends,
        timer="cuda events" if device.type == "cuda" else "host clock",
        step_times_s=times,
        step_time_s=statistics.median(times) if times else None,
        step_cpu_times_s=cpu_times,  # CPU seconds of all threads: less sensitive to competing processes
        step_cpu_time_s=statistics.median(cpu_times) if cpu_times else None,
        mem_start_bytes=mem_start,
        mem_base_bytes=mem_base,
        model_state_bytes=mem_base - mem_start,
        phase_peak_bytes=phase_peaks,
        peak_phase=max(PHASES, key=phase_peaks.get),
        step_bytes=step_bytes,
        total_bytes=mem_base - mem_start + step_bytes,
        load_average=os.getloadavg(),
    )
    if spec.saved:
        with step_context(spec.precision, spec.attention, device):
            result["saved_bytes"] = saved_bytes(model, inputs, labels)
    return result


_RESULT_TAG = "REVVIT_BENCHMARK_RESULT "


def run_isolated(spec, timeout=None):
    """``measure(spec)`` in a fresh Python process; returns its result dict.

    A failure in the child (e.g. killed when out of memory) comes back as ``{"error": ...}`` so that a
    maximum-batch search can count it as "does not fit".
    """
    env = dict(os.environ)
    if spec.device == "cpu":
        # glibc keeps freed blocks below its (self-raising, up to 32 MiB) mmap threshold in the heap,
        # so the resident set would show what the allocator hoards, not what the step needs. A fixed
        # threshold returns every tensor-sized block to the system when it is freed.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(64 * 1024))
    code = "from revvit.benchmarks.step import _child_main; _child_main()"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], input=json.dumps(spec.to_json()), capture_output=True, text=True,
            env=env, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return dict(spec.to_json(), error=f"timed out after {timeout} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_TAG):
            return json.loads(line[len(_RESULT_TAG):])
    tail = (proc.stderr or "").strip().splitlines()[-5:]
    return dict(spec.to_json(), error=f"exit code {proc.returncode}: " + " | ".join(tail))


def run_point(spec, timeout=None):
    """One measurement for a table or a search: on CUDA in this process, elsewhere in a fresh one.

    The CUDA allocator counts the bytes of live tensors, and every tensor of a measurement is freed when
    ``measure`` returns, so points measured one after another in one process do not see each other
    (what a fresh process buys on CPU, where the resident set keeps what the C allocator hoards), and
    the GPU's context is created once instead of for every point. Running out of device memory comes
    back as ``{"error": ...}``, as a crashed child does. ``timeout`` applies to fresh processes only.
    """
    if torch.device(spec.device).type != "cuda":
        return run_isolated(spec, timeout=timeout)
    try:
        return measure(spec)
    except torch.OutOfMemoryError as e:
        return dict(spec.to_json(), error=f"out of memory: {str(e).splitlines()[0]}")
    finally:
        torch.cuda.empty_cache()


def _child_main():
    spec = StepSpec.from_json(json.loads(sys.stdin.read()))
    sys.stdout.write(_RESULT_TAG + json.dumps(measure(spec)) + "\n")
    sys.stdout.flush()
