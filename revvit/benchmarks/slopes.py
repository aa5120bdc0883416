"""The arithmetic of the memory table on measured points: plain data in, plain data out.

Kept apart from the measuring code (memory_table, step: they need torch) so that a report of points
measured elsewhere (revvit.benchmarks.report, tools/gpu_check.sh's) imports nothing heavy: torch's
import alone takes seconds, and a report must be written even when little time is left.
See memory_table for why memory per image is a slope of the backward's peak.
"""

__all__ = ["PAPER_TABLE", "base_shift", "memory_per_image", "predicted_max_batch", "table_rows"]

# The rows of the paper's memory table (Mangalam et al., CVPR 2022, Table 1 and 4), published on GPU at
# 224x224: non-reversible and reversible training memory per image in MB. Reference values to
# compare with, not targets.
PAPER_TABLE = {
    "ViT-S": {"non_reversible": 66.5, "reversible": 8.8},
    "ViT-B": {"non_reversible": 129.7, "reversible": 17.0},
    "ViT-L": {"non_reversible": 349.3, "reversible": 22.6},
    "MViT-B": {"non_reversible": 153.6, "reversible": 66.8},
}


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
