"""Training memory per image, the paper's way of stating the saving, measured as a slope.

The peak of a training step over the steady state is ``fixed + per_image x batch``: the fixed part
(transient buffers the size of some parameters, allocator slack) dominates at the small batches a
CPU affords, so dividing a peak by its batch says little. The slope between two batches removes it,
but only if both peaks belong to the same phase: when the peak moves from, say, the optimizer step
(batch-independent) at the small batch to the backward at the large one, the slope mixes two
different things. So each point keeps the peak of every phase, the slope is taken of the backward
phase's peak, and each point says which phase held the step's peak; a figure counts only where the
backward held it at both batches (``backward_holds``).
"""

import os
import time
from dataclasses import dataclass, field

from .settings import PAPER_WAYS, StepSpec
from .step import run_point

__all__ = ["TableModel", "TableSettings", "PAPER_TABLE", "base_shift", "memory_per_image", "predicted_max_batch", "run_memory_table",
           "table_rows"]


@dataclass(frozen=True)
class TableModel:
    """One row group of the table: a name, its reversible config, and the two batches of the slope."""

    name: str
    config: str
    batches: tuple
    opts: tuple = ()


# The rows of the paper's memory table (Mangalam et al., CVPR 2022, Table 1 and 4), published on GPU at
# 224x224: non-reversible and reversible training memory per image in MB. Reference values to
# compare with, not targets.
PAPER_TABLE = {
    "ViT-S": {"non_reversible": 66.5, "reversible": 8.8},
    "ViT-B": {"non_reversible": 129.7, "reversible": 17.0},
    "ViT-L": {"non_reversible": 349.3, "reversible": 22.6},
    "MViT-B": {"non_reversible": 153.6, "reversible": 66.8},
}

DEFAULT_MODELS = (
    TableModel("ViT-S", "configs/ImageNet/REV_VIT_S.yaml", (4, 8)),
    TableModel("MViT-B", "configs/ImageNet/REV_MVIT_B_16_CONV.yaml", (2, 4)),
    TableModel("ViT-B", "configs/ImageNet/REV_VIT_B.yaml", (2, 4)),
    TableModel("ViT-L", "configs/ImageNet/REV_VIT_L.yaml", (1, 2)),
)


@dataclass(frozen=True)
class TableSettings:
    """What ``run_memory_table`` measures: models x ways x their two batches x ``repeats``.

    ``budget_bytes``: the memory budget of the largest-batch column (model state included).
    """

    models: tuple = DEFAULT_MODELS
    ways: tuple = PAPER_WAYS
    repeats: int = 2
    first_repeat: int = 0  # index of the first repeat (repeats split over processes)
    warmup: int = 1
    steps: int = 1
    threads: int = None
    device: str = "cpu"
    budget_bytes: int = 8 * 2**30
    timeout: float = None
    saved: bool = False  # also count the bytes kept for backward (one more forward per point)
    precision: str = "fp32"  # fp32 | bf16 (see numerics)
    attention: str = "fused"  # fused | math: math keeps the attention probabilities, as in the paper's time
    extra_opts: tuple = field(default=())


def memory_per_image(small, large):
    """Slope of the backward phase's peak between two measured points of one model and way.

    Returns a dict: ``bytes_per_image``, ``fixed_bytes`` (the line's value at batch 0), and
    ``backward_holds`` (the backward phase held the step's peak at both batches).
    """
    b0, b1 = small["batch_size"], large["batch_size"]
    if b1 <= b0:
        raise ValueError(f"the slope needs two different batches in increasing order, got {b0} and {b1}")
    p0, p1 = small["phase_peak_bytes"]["backward"], large["phase_peak_bytes"]["backward"]
    slope = (p1 - p0) / (b1 - b0)
    return {
        "bytes_per_image": slope,
        "fixed_bytes": p0 - slope * b0,
        "backward_holds": small["peak_phase"] == "backward" and large["peak_phase"] == "backward",
    }


def predicted_max_batch(small, large, budget_bytes):
    """Largest batch whose model state plus step peak stays within the budget: the backward's line
    (``memory_per_image``) extended to the budget, over the larger of the two measured model states.

    The line of ``total_bytes`` itself would do if the steady state were measured exactly at both points;
    on CPU it is the resident set, whose file-backed pages (the libraries' code) the kernel may evict
    under memory pressure from other processes, which moves one point's steady state by hundreds of MiB.
    """
    line = memory_per_image(small, large)
    if line["bytes_per_image"] <= 0:
        return None
    state = max(small["model_state_bytes"], large["model_state_bytes"])
    return max(0, int((budget_bytes - state - line["fixed_bytes"]) // line["bytes_per_image"]))


def base_shift(small, large):
    """Difference of the two points' steady states in absolute resident bytes: near zero unless pages
    were evicted (or something stayed resident) in one of the two processes; a large one flags the row."""
    return (large["mem_start_bytes"] + large["model_state_bytes"]) - (small["mem_start_bytes"] + small["model_state_bytes"])


def run_memory_table(settings, log=print, save=None):
    """Measure every point of the table (each in a fresh process; on CUDA in this one) and return points and rows.

    Repeats are the outer loop, so a run stopped half-way holds one complete table before the second.
    ``save(results)`` is called after every point.
    """
    out = {"settings": _settings_json(settings), "load_average_start": os.getloadavg(), "points": []}
    for repeat in range(settings.first_repeat, settings.first_repeat + settings.repeats):
        for model in settings.models:
            for way in settings.ways:
                for batch in model.batches:
                    spec = StepSpec(
                        config=model.config, opts=tuple(model.opts) + tuple(settings.extra_opts), way=way,
                        batch_size=batch, steps=settings.steps, warmup=settings.warmup, threads=settings.threads,
                        device=settings.device, saved=settings.saved, precision=settings.precision,
                        attention=settings.attention, extra={"model": model.name, "repeat": repeat},
                    )
                    t0 = time.perf_counter()
                    r = run_point(spec, timeout=settings.timeout)
                    r["wall_s"] = time.perf_counter() - t0
                    out["points"].append(r)
                    if save:
                        save(out)
                    log(_point_line(r))
    out["load_average_end"] = os.getloadavg()
    out["rows"] = table_rows(out["points"], settings.budget_bytes)
    if save:
        save(out)
    return out


def table_rows(points, budget_bytes):
    """One row per model, way and repeat: the slope, whether the backward held the peak, max batch."""
    groups = {}
    for p in points:
        if "error" not in p:
            groups.setdefault((p["extra"]["model"], p["way"], p["extra"]["repeat"]), []).append(p)
    rows = []
    for (model, way, repeat), pts in groups.items():
        pts = sorted(pts, key=lambda p: p["batch_size"])
        if len(pts) < 2:
            continue
        small, large = pts[0], pts[-1]
        row = {"model": model, "way": way, "repeat": repeat, "batches": [small["batch_size"], large["batch_size"]],
               "peak_phases": [small["peak_phase"], large["peak_phase"]],
               "model_state_bytes": large["model_state_bytes"], "params": large["params"], "depth": large["depth"]}
        if "saved_bytes" in large:
            row["saved_bytes_per_image"] = large["saved_bytes"] / large["batch_size"]
        row.update(memory_per_image(small, large))
        row["max_batch"] = predicted_max_batch(small, large, budget_bytes)
        row["base_shift_bytes"] = base_shift(small, large)
        row["budget_bytes"] = budget_bytes
        rows.append(row)
    return rows


def _settings_json(s):
    d = dict(s.__dict__)
    d["models"] = [m.__dict__ for m in s.models]
    return d


def _point_line(r):
    head = f"  {r['extra']['model']} {r['way']} batch {r['batch_size']} (repeat {r['extra']['repeat']})"
    if "error" in r:
        return f"{head}: failed: {r['error']}"
    phases = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in r["phase_peak_bytes"].items())
    return f"{head}: peaks over steady state (MiB) {phases}; {r['peak_phase']} holds it; {r['wall_s']:.0f} s"
