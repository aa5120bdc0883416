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
from .slopes import table_rows
from .step import run_point

__all__ = ["DEFAULT_MODELS", "TableModel", "TableSettings", "run_memory_table"]


@dataclass(frozen=True)
class TableModel:
    """One row group of the table: a name, its reversible config, and the two batches of the slope."""

    name: str
    config: str
    batches: tuple
    opts: tuple = ()


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
