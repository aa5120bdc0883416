"""Turn benchmark results into the numbers people compare: tables, the headline ratios, a plot.

Kept apart from the measuring code so that results measured elsewhere (a JSON file from another
machine) can be re-tabulated and re-plotted without running anything.
"""

MiB = 2**20

# The goals the implementation is held to (docs/BENCHMARKS.md): not assertions, reported as met or not.
TARGETS = {
    "rev_over_nonrev_memory_depth12_max": 1 / 8,
    "rev_memory_growth_depth12_to_deepest_max": 0.10,
    "rev_over_nonrev_step_time_max": 1.40,
}

WAY_LABELS = {"reversible": "reversible", "non_reversible": "non-reversible", "act_checkpoint": "act. checkpointing"}


def _mib(x):
    return "-" if x is None else f"{x / MiB:.1f}"


def _num(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def _name(result):
    config = result.get("config") or "defaults"
    return config.rsplit("/", 1)[-1].replace(".yaml", "")


def config_table(results):
    """Markdown table of the per-config measurements (one row per config and way)."""
    head = (
        "| config | way | batch | params (M) | step time (s) | CPU time (s) | samples/s | "
        "step memory (MiB) | step memory / sample (MiB) | saved for backward / sample (MiB) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        if "error" in r:
            rows.append(f"| {_name(r)} | {WAY_LABELS.get(r['way'], r['way'])} | {r.get('batch_size')} | failed: {r['error'][:60]} |||||||\n")
            continue
        rows.append(
            f"| {_name(r)} | {WAY_LABELS[r['way']]} | {r['batch_size']} | {r['params'] / 1e6:.1f} | "
            f"{_num(r['step_time_s'])} | {_num(r.get('step_cpu_time_s'))} | {_num(r['samples_per_s'])} | "
            f"{_mib(r['step_bytes'])} | {_mib(r['step_bytes_per_sample'])} | {_mib(r.get('saved_bytes_per_sample'))} |\n"
        )
    return head + "".join(rows)


def sweep_table(results):
    """Markdown table of the depth sweep, one row per depth and way."""
    head = (
        "| depth | way | params (M) | step time (s) | CPU time (s) | step memory (MiB) | "
        "step memory / sample (MiB) | activation memory / sample (MiB) | saved for backward / sample (MiB) |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in sorted(results, key=lambda r: (r.get("depth", 0), list(WAY_LABELS).index(r["way"]))):
        if "error" in r:
            rows.append(f"| {r.get('depth')} | {WAY_LABELS[r['way']]} | failed: {r['error'][:60]} |||||||\n")
            continue
        rows.append(
            f"| {r['depth']} | {WAY_LABELS[r['way']]} | {r['params'] / 1e6:.1f} | {_num(r.get('step_time_s'))} | "
            f"{_num(r.get('step_cpu_time_s'))} | {_mib(r.get('step_bytes'))} | {_mib(r.get('step_bytes_per_sample'))} | "
            f"{_mib(r.get('activation_bytes_per_sample'))} | {_mib(r.get('saved_bytes_per_sample'))} |\n"
        )
    return head + "".join(rows)


def _by_depth_way(results):
    return {(r["depth"], r["way"]): r for r in results if "error" not in r}


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def sweep_ratios(results):
    """The headline ratios of the depth sweep (reversible over the other two ways), and targets.

    Memory ratios are given for three measures: the step's activation memory per sample (slope
    over two batch sizes), the step's peak per sample at the measured batch, and the bytes kept
    for backward per sample. Time ratios use wall-clock and CPU time.
    """
    table = _by_depth_way(results)
    depths = sorted({d for d, _ in table})
    if not depths:
        return {}
    d12 = 12 if 12 in depths else depths[len(depths) // 2]
    deepest = depths[-1]
    out = {"depth_reference": d12, "depth_deepest": deepest}
    measures = {
        "activation_memory": "activation_bytes_per_sample",
        "step_memory": "step_bytes_per_sample",
        "saved_bytes": "saved_bytes_per_sample",
        "step_time": "step_time_s",
        "step_cpu_time": "step_cpu_time_s",
    }
    for other in ("non_reversible", "act_checkpoint"):
        for label, key in measures.items():
            for depth in (d12, deepest):
                rev, oth = table.get((depth, "reversible")), table.get((depth, other))
                if rev and oth:
                    out[f"rev_over_{other}_{label}_depth{depth}"] = _ratio(rev.get(key), oth.get(key))
    rev12, revdeep = table.get((d12, "reversible")), table.get((deepest, "reversible"))
    if rev12 and revdeep:
        for label, key in (("activation_memory", "activation_bytes_per_sample"), ("step_memory", "step_bytes_per_sample")):
            growth = _ratio(revdeep.get(key), rev12.get(key))
            out[f"rev_{label}_growth_depth{d12}_to_{deepest}"] = None if growth is None else growth - 1
    return out


def targets(ratios):
    """Whether each goal of the benchmark issue is met, per memory/time measure."""
    d12, deep = ratios.get("depth_reference"), ratios.get("depth_deepest")
    result = {}
    for label in ("activation_memory", "step_memory"):
        r = ratios.get(f"rev_over_non_reversible_{label}_depth{d12}")
        g = ratios.get(f"rev_{label}_growth_depth{d12}_to_{deep}")
        result[f"memory_ratio_{label}"] = {"value": r, "target": TARGETS["rev_over_nonrev_memory_depth12_max"], "met": r is not None and r <= TARGETS["rev_over_nonrev_memory_depth12_max"]}
        result[f"memory_flat_{label}"] = {"value": g, "target": TARGETS["rev_memory_growth_depth12_to_deepest_max"], "met": g is not None and abs(g) <= TARGETS["rev_memory_growth_depth12_to_deepest_max"]}
    for label in ("step_time", "step_cpu_time"):
        r = ratios.get(f"rev_over_non_reversible_{label}_depth{d12}")
        result[f"time_ratio_{label}"] = {"value": r, "target": TARGETS["rev_over_nonrev_step_time_max"], "met": r is not None and r <= TARGETS["rev_over_nonrev_step_time_max"]}
    return result


def config_ratios(results):
    """Per config: reversible over non-reversible and over checkpointing, memory and time."""
    out = {}
    by = {}
    for r in results:
        if "error" not in r:
            by.setdefault(_name(r), {})[r["way"]] = r
    for name, ways in by.items():
        rev = ways.get("reversible")
        if not rev:
            continue
        for other in ("non_reversible", "act_checkpoint"):
            o = ways.get(other)
            if o:
                out[f"{name}_rev_over_{other}_saved_bytes"] = _ratio(rev.get("saved_bytes"), o.get("saved_bytes"))
                out[f"{name}_rev_over_{other}_step_memory"] = _ratio(rev["step_bytes"], o["step_bytes"])
                out[f"{name}_rev_over_{other}_step_time"] = _ratio(rev["step_time_s"], o["step_time_s"])
                out[f"{name}_rev_over_{other}_step_cpu_time"] = _ratio(rev.get("step_cpu_time_s"), o.get("step_cpu_time_s"))
    return out


def interleaved_table(entry):
    """Markdown table of one interleaved timing (ratios to the first way, per-round medians)."""
    ways = list(entry["ways"])
    head = (
        f"| way | batch | median step time (s) | median CPU time (s) | CPU time / {WAY_LABELS.get(ways[0], ways[0])} "
        f"(median of {entry['rounds']} rounds) | wall time / {WAY_LABELS.get(ways[0], ways[0])} |\n|---|---|---|---|---|---|\n"
    )
    rows = [
        f"| {WAY_LABELS.get(w, w)} | {e['batch_size']} | {e['step_time_s']:.2f} | {e['step_cpu_time_s']:.2f} | "
        f"{e['cpu_ratio_to_first']:.3f} | {e['wall_ratio_to_first']:.3f} |\n"
        for w, e in entry["ways"].items()
    ]
    return head + "".join(rows)


def max_batch_table(entries):
    head = "| config | way | budget (MiB) | max batch | trials (batch: total MiB) |\n|---|---|---|---|---|\n"
    rows = []
    for e in entries:
        trials = ", ".join(f"{t['batch_size']}: {_mib(t['total_bytes'])}{'' if t['fits'] else ' x'}" for t in e["trials"])
        rows.append(f"| {_name(e)} | {WAY_LABELS[e['way']]} | {_mib(e['budget_bytes'])} | {e['max_batch']} | {trials} |\n")
    return head + "".join(rows)


def plot_sweep(results, path, title=None):
    """PNG of memory per sample and step time against depth, one line per way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = _by_depth_way(results)
    depths = sorted({d for d, _ in table})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = [
        ("saved_bytes_per_sample", MiB, "saved for backward per sample (MiB)"),
        ("step_bytes_per_sample", MiB, "step peak memory per sample (MiB)"),
        ("step_time_s", 1, "step time (s)"),
    ]
    styles = {"reversible": "o-", "non_reversible": "s-", "act_checkpoint": "^-"}
    for ax, (key, scale, label) in zip(axes, panels):
        for way in WAY_LABELS:
            xs = [d for d in depths if (d, way) in table and table[(d, way)].get(key) is not None]
            ys = [table[(d, way)][key] / scale for d in xs]
            if xs:
                ax.plot(xs, ys, styles[way], label=WAY_LABELS[way])
        ax.set_xlabel("depth (blocks)")
        ax.set_ylabel(label)
        ax.set_xticks(depths)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    for ax in axes:
        if ax.lines:
            ax.legend()
            break
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
