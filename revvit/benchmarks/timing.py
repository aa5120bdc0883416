"""Step-time ratios of the ways of training, robust to a shared machine.

On a machine shared with other jobs the speed available drifts by more than the 4/3 being measured,
and processes run minutes apart see different machines. Here the ways are built in one process and
alternate step by step, so they meet the same competition, and each round gives one ratio; with one
thread the process CPU time is the work done, nearly independent of the competition. The FLOPs of one
training step of each way (utils/model_stats.FlopCounter: forward, recomputation and backward) give the
ratio the arithmetic predicts, to put beside the measured one. Memory is not measured here.

On CUDA the GPU's time of each step is read from CUDA events (``numerics.cuda_step_times``) and the
ratios are of those times; the host's CPU time only says how long the launches took.
"""

import os
import statistics
import time

import torch

from revvit.utils.model_stats import FlopCounter

from .numerics import configure_backends, cuda_step_times, kernel_context, step_context
from .step import build_run

__all__ = ["interleaved_step_times", "step_flops"]


def _train_step(spec, device, model, optimizer, inputs, labels):
    with step_context(spec.precision, spec.attention, device):
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
    with kernel_context(spec.attention):
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)


def step_flops(spec):
    """FLOPs (multiply-add = 2) of one training step of ``spec``: forward, recomputation, backward.

    Counted on CPU for one sample and multiplied by the batch: every op of these models works on each
    sample apart (no batch norm), so the count is exactly linear in the batch, and a GPU-sized batch
    need not run through the CPU.
    """
    cpu = torch.device("cpu")
    _, model, _, inputs, labels = build_run(spec.replace(batch_size=1), cpu)
    with FlopCounter() as counter:
        with step_context("fp32", spec.attention, cpu):  # the same FLOPs in any precision
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        with kernel_context(spec.attention):
            loss.backward()
    return counter.total * spec.batch_size


def interleaved_step_times(specs, rounds=5, warmup=1, threads=1, log=None):
    """Step times of several ways (StepSpecs, all on one device) in this process, one step of each per round.

    Returns, per way, the wall and CPU times of every round, their medians, the per-round ratios of the
    first spec's time to this way's (first = reversible gives reversible / non-reversible directly) and
    their median, and the same ratio of FLOPs. The ratio is of CPU time on CPU (``cpu_ratio`` too) and of
    the GPU's time (CUDA events) on CUDA; ``ratio_of`` says which.
    """
    device = torch.device(specs[0].device)
    if any(torch.device(s.device) != device for s in specs):
        raise ValueError("interleaved timing compares ways on one device; the specs name several")
    if threads:
        torch.set_num_threads(threads)
    load_start = os.getloadavg()
    runs = []
    for spec in specs:
        torch.manual_seed(spec.seed)
        cfg, *state = build_run(spec, device)
        runs.append((spec, state))
    backends = configure_backends(cfg, device)
    flops = [step_flops(spec) for spec in specs]
    wall, cpu, gpu = [[] for _ in runs], [[] for _ in runs], [[] for _ in runs]
    for r in range(warmup + rounds):
        for i, (spec, state) in enumerate(runs):
            t0, c0 = time.perf_counter(), time.process_time()
            if device.type == "cuda":
                (g,) = cuda_step_times(lambda: _train_step(spec, device, *state), 1, device)
            else:
                _train_step(spec, device, *state)
            if r >= warmup:
                wall[i].append(time.perf_counter() - t0)
                cpu[i].append(time.process_time() - c0)
                if device.type == "cuda":
                    gpu[i].append(g)
        if log and r >= warmup:
            log("  round " + ", ".join(f"{s.way} {cpu[i][-1]:.2f} s cpu" for i, (s, _) in enumerate(runs)))
    measured, ratio_of = (gpu, "cuda time") if device.type == "cuda" else (cpu, "cpu time")
    out = {"threads": torch.get_num_threads(), "rounds": rounds, "device": str(device), "backends": backends,
           "ratio_of": ratio_of, "load_average": [load_start, os.getloadavg()], "ways": {}}
    for i, (spec, _) in enumerate(runs):
        ratios = [t0 / t for t, t0 in zip(measured[i], measured[0])]
        cpu_ratios = [c0 / c for c, c0 in zip(cpu[i], cpu[0])]
        out["ways"][spec.way] = dict(
            spec.to_json(),
            step_times_s=measured[i] if device.type == "cuda" else wall[i],
            step_wall_times_s=wall[i],
            step_cpu_times_s=cpu[i],
            step_time_s=statistics.median(measured[i] if device.type == "cuda" else wall[i]),
            step_cpu_time_s=statistics.median(cpu[i]),
            ratio_per_round=ratios,
            ratio=statistics.median(ratios),
            cpu_ratio_per_round=cpu_ratios,
            cpu_ratio=statistics.median(cpu_ratios),
            wall_ratio=statistics.median(w0 / w for w, w0 in zip(wall[i], wall[0])),
            flops=flops[i],
            flop_ratio=flops[0] / flops[i],
        )
    return out
