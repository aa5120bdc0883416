"""The command-line entry points run end to end at tiny sizes and write what they print."""

import json
import os
import subprocess
import sys

from revvit.benchmarks import report

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["MVIT.EMBED_DIM", "32", "MVIT.NUM_HEADS", "2", "MVIT.DEPTH", "2", "DATA.TRAIN_CROP_SIZE", "32", "MODEL.NUM_CLASSES", "10"]


def run(*args):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "benchmark.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


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
