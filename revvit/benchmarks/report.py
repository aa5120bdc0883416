"""Markdown tables of benchmark results (plain data in, text out; nothing measured here).

Kept apart from the measuring code so that results measured elsewhere (a JSON file from another machine
or a GPU) can be tabulated again without running anything.
"""

import json
import statistics
from pathlib import Path

from .slopes import PAPER_TABLE, table_rows

__all__ = ["WAY_LABELS", "data_table", "memory_table", "phase_table", "render", "saved_sweep_table", "sweep_table", "timing_table"]

MiB = 2**20
# Two points of one row whose steady states differ by more than this were measured under different
# memory pressure (see slopes.base_shift); the row says so.
SHIFT_FLAG_BYTES = 32 * MiB
WAY_LABELS = {"reversible": "reversible", "non_reversible": "non-reversible", "act_checkpoint": "act. checkpointing",
              "rev_act_checkpoint": "reversible + ckpt. transitions"}


def _mib(x, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x / MiB)


def _slope_text(values):
    """Repeats of one slope: their mean and the values; a negative slope is noise, not memory."""
    if any(v < 0 for v in values):
        return "not resolved (" + ", ".join(f"{v / MiB:.1f}" for v in values) + ")"
    text = f"**{statistics.mean(values) / MiB:.1f}**"
    return text + (" (" + ", ".join(f"{v / MiB:.1f}" for v in values) + ")" if len(values) > 1 else "")


def _group(rows):
    out = {}
    for r in rows:
        out.setdefault((r["model"], r["way"]), []).append(r)
    return out


def memory_table(rows, paper=None, ways=tuple(WAY_LABELS)):
    """Memory per image (slope of the backward's peak) per model and way, the repeats beside their mean,
    the ratio to the reversible way, the paper's figure when given, and the predicted largest batch."""
    paper = paper or {}
    groups = _group(rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    models.sort(key=lambda m: list(paper).index(m) if m in paper else len(paper))  # the paper's order first
    budget = rows[0]["budget_bytes"] if rows else None
    head = (
        "| model | way | batches | backward holds the peak | MiB / image: mean (repeats) | / reversible | paper MB / image "
        f"| paper / reversible | largest batch in {_mib(budget, '{:.0f}')} MiB |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for model in models:
        rev = groups.get((model, "reversible"))
        rev_mean = statistics.mean(r["bytes_per_image"] for r in rev) if rev else None
        for way in ways:
            rs = groups.get((model, way))
            if not rs:
                continue
            values = [r["bytes_per_image"] for r in rs]
            mean = statistics.mean(values)
            ratio = "-" if not rev_mean or rev_mean <= 0 or mean < 0 else f"{mean / rev_mean:.1f}x"
            p = paper.get(model, {}).get(way)
            p_rev = paper.get(model, {}).get("reversible")
            p_ratio = f"{p / p_rev:.1f}x" if p and p_rev else "-"
            holds = "yes" if all(r["backward_holds"] for r in rs) else "no (" + "; ".join("/".join(r["peak_phases"]) for r in rs) + ")"
            shifted = [r["repeat"] for r in rs if abs(r.get("base_shift_bytes", 0)) > SHIFT_FLAG_BYTES]
            if shifted:
                holds += f"; steady state moved in repeat {', '.join(map(str, shifted))}"
            batches = ", ".join(sorted({f"{r['batches'][0]} and {r['batches'][1]}" for r in rs}))
            max_b = ", ".join(str(r["max_batch"]) for r in rs)
            lines.append(
                f"| {model} | {WAY_LABELS[way]} | {batches} | {holds} | {_slope_text(values)} | {ratio} | "
                f"{p if p else '-'} | {p_ratio} | {max_b} |\n"
            )
    return head + "".join(lines)


def phase_table(points):
    """Peak of each phase over the steady state at every measured point, and which phase holds the step's."""
    head = "| model | way | batch | repeat | forward (MiB) | backward (MiB) | optimizer (MiB) | peak in | model state (MiB) | step (s) |\n|---|---|---|---|---|---|---|---|---|---|\n"
    lines = []
    for p in points:
        if "error" in p:
            lines.append(f"| {p['extra']['model']} | {WAY_LABELS[p['way']]} | {p['batch_size']} | {p['extra']['repeat']} | failed: {p['error'][:80]} |||||\n")
            continue
        ph = p["phase_peak_bytes"]
        lines.append(
            f"| {p['extra']['model']} | {WAY_LABELS[p['way']]} | {p['batch_size']} | {p['extra']['repeat']} | {_mib(ph['forward'])} | "
            f"{_mib(ph['backward'])} | {_mib(ph['optimizer'])} | {p['peak_phase']} | {_mib(p['model_state_bytes'], '{:.0f}')} | "
            f"{p['step_time_s']:.1f} |\n"
        )
    return head + "".join(lines)


def sweep_table(rows, ways=tuple(WAY_LABELS)):
    """Depth sweep: memory per image (slope) and bytes kept for backward per image, per depth and way."""
    head = "| depth | way | params (M) | batches | backward holds the peak | MiB / image (slope) | kept for backward, MiB / image |\n|---|---|---|---|---|---|---|\n"
    groups = _group(rows)
    lines = []
    for (model, way), rs in sorted(groups.items(), key=lambda kv: (kv[1][0]["depth"], list(ways).index(kv[0][1]))):
        r = rs[0]
        holds = "yes" if all(x["backward_holds"] for x in rs) else "no"
        lines.append(
            f"| {r['depth']} | {WAY_LABELS[way]} | {r['params'] / 1e6:.1f} | {r['batches'][0]} and {r['batches'][1]} | {holds} | "
            f"{_slope_text([x['bytes_per_image'] for x in rs])} | {_mib(r.get('saved_bytes_per_image'), '{:.2f}')} |\n"
        )
    return head + "".join(lines)


def saved_sweep_table(rows, ways=None):
    """Bytes kept for backward per image against depth: one column per way (default: the ways measured)."""
    ways = ways or [w for w in WAY_LABELS if any(r["way"] == w for r in rows)]
    depths = sorted({r["depth"] for r in rows})
    by = {(r["depth"], r["way"]): r for r in rows}
    head = "| depth | " + " | ".join(f"{WAY_LABELS[w]} (MiB / image)" for w in ways) + " |\n|---|" + "---|" * len(ways) + "\n"
    lines = [
        f"| {d} | " + " | ".join(_mib(by[d, w]["saved_bytes_per_image"], "{:.2f}") if (d, w) in by else "-" for w in ways) + " |\n"
        for d in depths
    ]
    return head + "".join(lines)


def timing_table(name, entry):
    """One interleaved timing: per way the median step times, the measured ratio and the FLOP ratio."""
    ways = list(entry["ways"])
    first = WAY_LABELS[ways[0]]
    of = entry.get("ratio_of", "cpu time")  # files written before the CUDA timing hold CPU-time ratios only
    head = (
        f"| model | way | batch | median step (s) | median CPU (s) | {of}, {first} / this way: median (rounds) | FLOPs, {first} / this way |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for way, e in entry["ways"].items():
        ratio, per_round = e.get("ratio", e["cpu_ratio"]), e.get("ratio_per_round", e["cpu_ratio_per_round"])
        rounds = ", ".join(f"{x:.2f}" for x in per_round)
        fmt = "{:.4f}" if of == "cuda time" else "{:.2f}"
        lines.append(
            f"| {name} | {WAY_LABELS[way]} | {e['batch_size']} | {fmt.format(e['step_time_s'])} | {e['step_cpu_time_s']:.2f} | "
            f"**{ratio:.2f}** ({rounds}) | {e['flop_ratio']:.3f} |\n"
        )
    return head + "".join(lines)


def data_table(rows):
    """Per config: what one worker produces, what one training process consumes, workers it needs."""
    head = ("| config | pipeline | one worker produces (/ CPU s) | one training process consumes (/ CPU s) | workers needed |\n"
            "|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        consumes = r.get("consumes")
        need = f"{consumes / r['produces']:.2g}" if consumes else "-"
        lines.append(
            f"| {r['config']} | {r['pipeline']} | {r['produces']:.1f} | "
            f"{'-' if consumes is None else f'{consumes:.1f}'} {r.get('consumer', '')} | {need} |\n"
        )
    return head + "".join(lines)


def render(*results):
    """The markdown of result dicts written by tools/benchmark.py (their ``kind`` says which tables).

    Several table (or sweep) results are read as one: their points together, rows computed again.
    """
    kind = results[0].get("kind") or ("table" if "points" in results[0] else "data" if "rows" in results[0] else None)
    if kind in ("table", "sweep"):
        points = [p for r in results for p in r["points"]]
        rows = table_rows(points, results[0]["settings"]["budget_bytes"])
        main = memory_table(rows, PAPER_TABLE) if kind == "table" else sweep_table(rows)
        return main + "\n" + phase_table(points)
    if kind == "saved-sweep":
        return saved_sweep_table([row for r in results for row in r["rows"]])
    if kind == "data":
        return data_table(results[0]["rows"])
    if kind == "time":
        return timing_table(Path(results[0]["config"]).stem, results[0])
    if kind == "max-batch":
        return "\n".join(f"{way}: {e['max_batch']}" for way, e in results[0]["ways"].items())
    return json.dumps(results[0], indent=1)
