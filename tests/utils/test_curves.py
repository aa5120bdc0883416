"""Training curves from json_stats.log: parsing (resumed epochs, cut lines), the picture, plot_stats.py."""

import json
import os
import runpy
import sys

from PIL import Image

from revvit.utils.curves import CURVES_FILE, plot_runs, read_epoch_stats, write_curves

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_stats(run_dir, records, tail=""):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "json_stats.log"), "w") as f:
        for r in records:
            f.write("json_stats: " + json.dumps(r) + "\n")
        f.write(tail)


def _train(epoch, loss, lr=0.1, err=50.0, total=3):
    return {"_type": "train_epoch", "epoch": f"{epoch}/{total}", "loss": loss, "lr": lr, "top1_err": err}


def test_read_epoch_stats_keeps_the_last_line_of_a_replayed_epoch(tmp_path):
    run = str(tmp_path / "run")
    _write_stats(
        run,
        [
            _train(1, 2.0),
            _train(2, 1.9),  # killed after this epoch, resumed from the checkpoint of epoch 1: epoch 2 again
            _train(2, 1.5),
            {"_type": "val_epoch", "epoch": "2/3", "top1_err": 30.0},
            _train(3, 1.2),
            {"split": "test_final", "top1_acc": 90.0},
        ],
        tail='json_stats: {"_type": "train_epoch", "epoch": "4/',  # cut by a kill
    )
    stats = read_epoch_stats(run)
    assert sorted(stats["train"]) == [1, 2, 3] and sorted(stats["val"]) == [2]
    assert [stats["train"][e]["loss"] for e in (1, 2, 3)] == [2.0, 1.5, 1.2]
    assert stats["val"][2]["top1_err"] == 30.0


def test_curves_png_is_written_and_overlays_runs(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _write_stats(a, [_train(e, 2.0 / e) for e in (1, 2, 3)])
    _write_stats(b, [_train(e, 1.0 / e, total=5) for e in range(1, 6)])
    path = write_curves(a)
    assert path == os.path.join(a, CURVES_FILE)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1100, 340)
    assert not os.path.exists(path + ".tmp")
    assert plot_runs([a, b], str(tmp_path / "both.png")) == 5  # the longer run sets the epochs drawn


def _plot_stats(monkeypatch, *args):
    """tools/plot_stats.py run as a script in this process; returns its exit status."""
    monkeypatch.setattr(sys, "argv", ["plot_stats.py", *args])
    try:
        runpy.run_path(os.path.join(REPO, "tools", "plot_stats.py"), run_name="__main__")
    except SystemExit as e:
        return e.code
    return 0


def test_plot_stats_tool(tmp_path, monkeypatch, capsys):
    run, empty = str(tmp_path / "run"), str(tmp_path / "empty")
    _write_stats(run, [_train(1, 2.0), _train(2, 1.0)])
    os.makedirs(empty)
    out = tmp_path / "overlay.png"
    assert _plot_stats(monkeypatch, run, empty, "--output", str(out), "--labels", "a", "b") == 0 and out.exists()
    assert _plot_stats(monkeypatch, empty, "--output", str(tmp_path / "x.png")) == 1
    assert "no epoch stats" in capsys.readouterr().err
