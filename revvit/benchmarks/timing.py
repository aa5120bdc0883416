"""Step-time ratios of the ways of training, robust to a shared machine.

On a machine shared with other jobs the speed available drifts by more than the 4/3 being measured,
and processes run minutes apart see different machines. Here the ways are built in one process and
alternate step by step, so they meet the same competition, and each round gives one ratio; with one
thread the process CPU time is the work done, nearly independent of the competition. The FLOPs of one
training step of each way (utils/model_stats.FlopCounter: forward, recomputation and backward) give the
ratio the arithmetic predicts, to put beside the measured one. Memory is not measured here.
"""

import os
import statistics
import time

import torch

from revvit.utils.model_stats import FlopCounter

from .step import build_run

__all__ = ["interleaved_step_times", "step_flops"]


def _train_step(model, optimizer, inputs, labels):
    loss = torch.nn.functional.cross_entropy(model(inputs), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)


def step_flops(spec):
    """FLOPs (multiply-add = 2) of one training step of ``spec``: forward, recomputation, backward."""
    _, model, _, inputs, labels = build_run(spec, torch.device("cpu"))
    with FlopCounter() as counter:
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
    return counter.total


def interleaved_step_times(specs, rounds=5, warmup=1, threads=1, log=None):
    """Step times of several ways (StepSpecs) in this process, one step of each per round.

    Returns, per way, the wall and CPU times of every round, their medians, the per-round ratios of the
    first spec's CPU time to this way's (first = reversible gives reversible / non-reversible directly) and
    their median, and the same ratio of FLOPs.
    """
    torch.set_num_threads(threads)
    load_start = os.getloadavg()
    runs = []
    for spec in specs:
        torch.manual_seed(spec.seed)
        _, *state = build_run(spec, torch.device("cpu"))
        runs.append((spec, state))
    flops = [step_flops(spec) for spec in specs]
    wall, cpu = [[] for _ in runs], [[] for _ in runs]
    for r in range(warmup + rounds):
        for i, (spec, state) in enumerate(runs):
            t0, c0 = time.perf_counter(), time.process_time()
            _train_step(*state)
            if r >= warmup:
                wall[i].append(time.perf_counter() - t0)
                cpu[i].append(time.process_time() - c0)
        if log and r >= warmup:
            log("  round " + ", ".join(f"{s.way} {cpu[i][-1]:.2f} s cpu" for i, (s, _) in enumerate(runs)))
    out = {"threads": threads, "rounds": rounds, "load_average": [load_start, os.getloadavg()], "ways": {}}
    for i, (spec, _) in enumerate(runs):
        ratios = [c0 / c for c, c0 in zip(cpu[i], cpu[0])]
        out["ways"][spec.way] = dict(
            spec.to_json(),
            step_times_s=wall[i],
            step_cpu_times_s=cpu[i],
            step_time_s=statistics.median(wall[i]),
            step_cpu_time_s=statistics.median(cpu[i]),
            cpu_ratio_per_round=ratios,
            cpu_ratio=statistics.median(ratios),
            wall_ratio=statistics.median(w0 / w for w, w0 in zip(wall[i], wall[0])),
            flops=flops[i],
            flop_ratio=flops[0] / flops[i],
        )
    return out
