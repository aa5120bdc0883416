"""tools/gpu_check.sh: `run` refuses at once without a GPU; its report is assembled from what the parts wrote."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from revvit.benchmarks import gpu_check
from revvit.benchmarks.settings import StepSpec
from revvit.benchmarks.step import measure

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "tools", "gpu_check.sh")
TINY = ["MVIT.EMBED_DIM", "32", "MVIT.NUM_HEADS", "2", "MVIT.DEPTH", "2", "DATA.TRAIN_CROP_SIZE", "32", "MODEL.NUM_CLASSES", "10"]


def sh(*args, **kw):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=REPO)
    return subprocess.run(["bash", SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=120, env=env, **kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_run_without_cuda_stops_at_once_with_one_line(tmp_path):
    proc = sh("run", str(tmp_path / "out"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "needs a CUDA GPU" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


def test_usage_errors_exit_2():
    assert sh().returncode == 2 and "usage" in sh("run").stderr


def test_report_from_what_the_parts_wrote(tmp_path):
    """A table measured here (tiny ViT-S on CPU) and the files of the other parts become the report's rows."""
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    (work / "parts.tsv").write_text("cpu\t0\t12\t40\ncuda\t124\t110\t110\n")
    (work / "cuda.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.cuda.test_x" name="test_a"/><testcase classname="tests.cuda.test_x" name="test_b">'
        '<failure message="no"/></testcase><testcase classname="tests.cuda.test_x" name="test_c"><skipped/></testcase>'
        "</testsuite></testsuites>")
    # Two points of the table, measured here in this process as tools/benchmark.py table would in two.
    points = [measure(StepSpec(config="configs/ImageNet/REV_VIT_S.yaml", opts=tuple(TINY), way="reversible", batch_size=b,
                               threads=1, attention="math", extra={"model": "ViT-S", "repeat": 0})) for b in (2, 4)]
    (work / "table_fp32_math.json").write_text(json.dumps({"settings": {"budget_bytes": 2**30}, "points": points}))
    assert gpu_check.main(["report", str(work), str(out)]) == 0

    doc = json.loads((out / "gpu_check.json").read_text())
    assert [(p["part"], p["status"]) for p in doc["parts"]] == [("cpu", "ok"), ("cuda", "timed out")]
    assert doc["tests"]["cpu"] is None
    assert doc["tests"]["cuda"] == {"tests": 3, "failures": 1, "errors": 0, "skipped": 1, "passed": 1,
                                    "failed": ["tests.cuda.test_x::test_b"]}
    slope = (points[1]["phase_peak_bytes"]["backward"] - points[0]["phase_peak_bytes"]["backward"]) / 2 / 2**20
    (row,) = doc["memory"]
    assert (row["model"], row["way"], row["precision"], row["attention"]) == ("ViT-S", "reversible", "fp32", "math")
    assert row["mib_per_image"] == pytest.approx(slope)
    md = (out / "gpu_check.md").read_text()
    assert "| cuda | timed out (rc 124) | 110 | 110 |" in md
    assert "FAILED tests.cuda.test_x::test_b" in md
    assert f"| ViT-S | reversible | - | {slope:.1f}" in md and "| 8.8 |" in md  # fp32 fused not run; fp32 math; paper
    assert doc["demo"] is None and "no result" in md


def test_workers_needed_use_the_on_device_rate_a_cuda_run_gets(tmp_path):
    """The default AUG.ON_DEVICE (None) is on for CUDA runs, so the report divides by that worker rate where measured."""
    vit_b, mvit_b = gpu_check.LOADER_CONFIG["time_vit_b"], gpu_check.LOADER_CONFIG["time_mvit_b"]
    data = {"rows": [{"config": vit_b, "pipeline": "train images (500x375 JPEG), the file's recipe", "produces": 160.0},
                     {"config": mvit_b, "pipeline": "train images (500x375 JPEG), the file's recipe", "produces": 140.0}],
            "on_device": [{"config": vit_b, "today": 161.0, "on_device": 400.0}]}
    (tmp_path / "data.json").write_text(json.dumps(data))
    way = {"batch_size": 64, "step_time_s": 0.08, "ratio": 1.0, "flop_ratio": 1.0, "ratio_per_round": [1.0]}
    for key in ("time_vit_b", "time_mvit_b"):
        (tmp_path / f"{key}.json").write_text(json.dumps({"config": key, "ways": {"reversible": way}}))
    timing = gpu_check._timing(tmp_path)
    assert timing["Rev-ViT-B"]["worker_images_per_cpu_s"] == 400.0
    assert timing["Rev-ViT-B"]["workers_needed"] == pytest.approx(800 / 400)  # 64 images in 0.08 s
    assert timing["Rev-MViT-B"]["worker_images_per_cpu_s"] == 140.0  # not measured on the device: the worker pipeline


def test_the_cuda_part_runs_every_cuda_marked_test_file():
    """A cuda-marked test outside the paths gpu_check runs would never run anywhere."""
    with open(SCRIPT) as f:
        (line,) = [line for line in f if line.lstrip().startswith("part cuda ")]
    paths = [w for w in line.split() if w.startswith("tests/")]
    marked = []
    for root, _, files in os.walk(os.path.join(REPO, "tests")):
        for name in files:
            path = os.path.relpath(os.path.join(root, name), REPO)
            if name.startswith("test_") and name.endswith(".py"):
                with open(os.path.join(REPO, path)) as f:
                    if path.startswith("tests/cuda/") or re.search(r"^(pytestmark = |@)pytest\.mark\.cuda\b", f.read(), re.M):
                        marked.append(path)
    assert marked and all(any(m == p or m.startswith(p.rstrip("/") + "/") for p in paths) for m in marked), (marked, paths)
