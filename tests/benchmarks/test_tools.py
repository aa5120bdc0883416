"""The command-line entry points run end to end at tiny sizes and write what they print; a user's mistake ends in
one argparse error."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from revvit.benchmarks import report

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["MVIT.EMBED_DIM", "32", "MVIT.NUM_HEADS", "2", "MVIT.DEPTH", "2", "DATA.TRAIN_CROP_SIZE", "32", "MODEL.NUM_CLASSES", "10"]


def run(*args):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "benchmark.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_table_cli_on_a_tiny_model_and_report_again(tmp_path):
    out = tmp_path / "table.json"
    text = run("table", "--models", "ViT-S", "--ways", "reversible", "--repeats", "1", "--threads", "1",
               "--opts", *TINY, "--budget", "1GiB", "--out", str(out))
    results = json.loads(out.read_text())
    assert [(p["way"], p["batch_size"]) for p in results["points"]] == [("reversible", 4), ("reversible", 8)]
    (row,) = results["rows"]
    small, large = results["points"]
    assert row["bytes_per_image"] == (large["phase_peak_bytes"]["backward"] - small["phase_peak_bytes"]["backward"]) / 4
    assert "| ViT-S | reversible | 4 and 8 |" in text and "| 8.8 |" in text
    assert report.render(results) + "\n" == text  # the report of the file is what was printed


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, message", [
    (["step", "--cfg", "configs/ImageNet/REV_VIT_S.yaml", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["step", "--cfg", "configs/ImageNet/REV_VIT_S.yaml", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["time", "--cfg", "configs/ImageNet/REV_VIT_S.yaml", "--batch-size", "-2"], "argument --batch-size: must be at least 1, got -2"),
    (["time", "--cfg", "configs/ImageNet/NO_SUCH.yaml"], "--cfg configs/ImageNet/NO_SUCH.yaml: no such file"),
    (["max-batch", "--cfg", "missing.yaml", "--budget", "1GiB"], "--cfg missing.yaml: no such file"),
    (["table", "--batches", "4", "2"], "--batches 4 2: the slope needs a smaller batch, then a larger one"),
])
def test_benchmark_mistakes_end_in_one_argparse_error(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as stop:
        load_tool("benchmark").main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err.splitlines()[-1] and "Traceback" not in err


def test_budget_auto_is_the_free_memory_less_a_margin(monkeypatch):
    bm = load_tool("benchmark")
    assert bm.parse_budget("auto") == "auto" and bm.parse_budget("1.5GiB") == 3 * 2**29
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":") for line in f)
    available = int(fields["MemAvailable"].split()[0]) * 1024
    # MemAvailable moves with other processes between the two reads: a few hundred MiB at most here.
    assert abs(bm.auto_budget("cpu") - (available - 2**30)) < 512 * 2**20
    monkeypatch.setattr(bm.torch.cuda, "mem_get_info", lambda device: (80 * 2**30, 94 * 2**30))  # free, total
    assert bm.auto_budget("cuda") == 79 * 2**30


@pytest.mark.slow
def test_plot_stats_output_under_a_regular_file_ends_in_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    for output in ("notes.txt/curves.png", "notes.txt/sub/curves.png"):
        proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "plot_stats.py"), str(tmp_path),
                               "--output", str(tmp_path / output)], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=REPO))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.splitlines()[-1].endswith(f"({tmp_path / 'notes.txt'} is a file, not a folder); write the picture elsewhere")
