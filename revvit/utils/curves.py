"""Training curves: train loss, learning rate, train and val top-1 error per epoch, from json_stats.log.

A run leaves ``OUTPUT_DIR/curves.png``, redrawn after every epoch, so a run can be judged at a glance
without TensorBoard; ``tools/plot_stats.py`` overlays several runs. The source is the run's own
``json_stats.log`` (one PySlowFast-format line per epoch and split): a resumed run appends to it, and
the last line of an epoch wins, so a replayed epoch is drawn once.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot), which needs no display
and leaves no global state behind in a training process.
"""

import json
import os

from . import distributed as du
from . import logging

logger = logging.get_logger(__name__)

__all__ = ["CURVES_FILE", "plot_runs", "read_epoch_stats", "write_curves"]

CURVES_FILE = "curves.png"
_PREFIX = "json_stats: "
# (split, stats key) of every drawn series; top-1 error of both splits shares one panel
_SERIES = (("train", "loss"), ("train", "lr"), ("train", "top1_err"), ("val", "top1_err"))
_AXES = (("train loss", "loss"), ("learning rate", "lr"), ("top-1 error (train solid, val dashed)", "%"))


def read_epoch_stats(run_dir):
    """``{"train": {epoch: stats}, "val": {epoch: stats}}`` from ``run_dir/json_stats.log`` (1-based epochs).

    Lines that are not epoch stats, or cannot be parsed (a line cut by a kill), are ignored.
    """
    out = {"train": {}, "val": {}}
    path = os.path.join(run_dir, "json_stats.log")
    if not os.path.isfile(path):
        return out
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith(_PREFIX):
                continue
            try:
                stats = json.loads(line[len(_PREFIX):])
                split = {"train_epoch": "train", "val_epoch": "val"}.get(stats.get("_type"))
                epoch = int(str(stats.get("epoch", "")).split("/")[0])
            except (ValueError, TypeError):
                continue
            if split is not None:
                out[split][epoch] = stats
    return out


def _series(stats, split, key):
    points = sorted((e, s[key]) for e, s in stats[split].items() if isinstance(s.get(key), (int, float)))
    return [e for e, _ in points], [v for _, v in points]


def plot_runs(run_dirs, out_path, labels=None):
    """Draw the curves of ``run_dirs`` (one colour per run) into ``out_path``; returns the number of epochs drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(labels) if labels is not None else [os.path.basename(os.path.normpath(d)) or d for d in run_dirs]
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    loss_ax, lr_ax, err_ax = axes
    drawn = 0
    for index, (run_dir, label) in enumerate(zip(run_dirs, labels)):
        stats = read_epoch_stats(run_dir)
        colour = f"C{index % 10}"
        for split, key in _SERIES:
            x, y = _series(stats, split, key)
            drawn = max(drawn, len(x))
            if not x:
                continue
            ax = {"loss": loss_ax, "lr": lr_ax}.get(key, err_ax)
            style = dict(color=colour, marker="o" if split == "val" else None, markersize=3)
            if split == "val":
                style["linestyle"] = "--"
            ax.plot(x, y, label=f"{label} {split}".strip() if key == "top1_err" else label, **style)
    for ax, (title, ylabel) in zip(axes, _AXES):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if drawn:
        err_ax.legend(fontsize=8)
        if len(run_dirs) > 1:
            loss_ax.legend(fontsize=8)
    tmp = out_path + ".tmp"
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, out_path)  # a reader never sees a half-written picture
    return drawn


def write_curves(output_dir):
    """Redraw ``output_dir/curves.png`` on rank 0; returns its path (None elsewhere or on failure).

    A plotting failure (a missing font, a full disk) is logged and does not stop training: the
    curves are a convenience, the checkpoints and json_stats.log are the record.
    """
    if not du.is_master_proc():
        return None
    path = os.path.join(output_dir, CURVES_FILE)
    try:
        plot_runs([output_dir], path, labels=[""])
    except Exception as e:  # noqa: BLE001 - see the docstring
        logger.warning(f"{path} not drawn ({type(e).__name__}: {e})")
        return None
    return path
