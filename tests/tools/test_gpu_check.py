"""tools/gpu_check.sh: `run` refuses at once without a GPU; its parts fit the GPU machine's 8 minutes; its report
is assembled from what the parts wrote, without torch, and is written even when the check is stopped.

The CPU rehearsal of every part (tools/gpu_check.sh rehearse, 2 CPU minutes) runs in CI (.ci/run), not here.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

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


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_run_without_cuda_stops_at_once_with_one_line(tmp_path):
    proc = sh("run", str(tmp_path / "out"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "needs a CUDA GPU" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


def test_usage_errors_exit_2():
    assert sh().returncode == 2 and "usage" in sh("run").stderr
    assert sh("rehearse").returncode == 2 and sh("plan", "gpu").returncode == 2


def plan(mode):
    """``{part: (budget, command)}`` of tools/gpu_check.sh plan MODE (budget ``skip``: not run in that mode)."""
    proc = sh("plan", mode)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    return {name: (budget, command) for name, budget, command in rows}


def script_constant(name):
    with open(SCRIPT) as f:
        (value,) = re.findall(rf"^{name}=(\d+)$", f.read(), re.M)
    return int(value)


def test_the_run_fits_eight_minutes_kill_margins_and_report_included():
    """Each part gets SIGTERM at its budget and SIGKILL KILL_S later; then the report (REPORT_S) and the tar (10 s)."""
    budgets = [int(b) for b, _ in plan("run").values()]
    worst = sum(b + script_constant("KILL_S") for b in budgets) + script_constant("REPORT_S") + 10
    assert len(budgets) == 12 and worst <= 480, worst


def test_the_gpu_run_predicts_on_the_gpu_and_sizes_the_table_by_the_device():
    run, rehearse = plan("run"), plan("rehearse")
    # predict.py takes overrides after --opts; the digits config itself says NUM_GPUS 0.
    assert run["predict"][1].endswith("--opts NUM_GPUS 1") and rehearse["predict"][1].endswith("--opts NUM_GPUS 0")
    assert " NUM_GPUS 1 " in run["demo"][1] and " NUM_GPUS 0 " in rehearse["demo"][1]
    tables = [c for name, (_, c) in run.items() if name.startswith("table_")]
    assert len(tables) == 4 and all("--budget auto" in c and "--device cuda" in c for c in tables)
    assert all("--device cpu" in c for name, (_, c) in rehearse.items() if name.startswith(("table_", "time_")))


def test_every_pytest_part_limits_each_test_below_its_budget():
    """A test that hangs costs its own result, not the part's whole junit XML (written only when pytest ends)."""
    for mode in ("run", "rehearse"):
        parts = [(int(b), c) for b, c in plan(mode).values() if " -m pytest " in c]
        assert len(parts) == 2
        for budget, command in parts:
            (per_test,) = re.findall(r"--timeout (\d+)", command)
            assert int(per_test) < budget and "--junitxml" in command


def test_the_report_imports_neither_torch_nor_the_models(tmp_path):
    """The report runs last, when the parts may have used up the time: torch's import alone takes seconds."""
    code = ("import sys; from revvit.benchmarks import gpu_check; "
            "gpu_check.main(['report', sys.argv[1], sys.argv[2]]); "
            "print([m for m in ('torch', 'timm', 'numpy', 'revvit.datasets', 'revvit.models') if m in sys.modules])")
    (tmp_path / "work").mkdir()
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "work"), str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0 and proc.stdout == "[]\n", proc.stderr
    assert (tmp_path / "out" / "gpu_check.md").is_file() and (tmp_path / "out" / "gpu_check.json").is_file()


@pytest.mark.slow
def test_a_stopped_check_stops_its_part_and_still_reports(tmp_path):
    """SIGTERM during a part (a job limit, a Ctrl-C): the part is stopped, the report is written."""
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=REPO, GPU_CHECK_PARTS="cpu")
    proc = subprocess.Popen(["bash", SCRIPT, "rehearse", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:  # the cpu part (pytest, many seconds) has started
        if line.startswith("== cpu"):
            break
    time.sleep(1)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert time.monotonic() - t0 < 15  # the part's SIGTERM, and SIGKILL 2 s later at most; the report in well under 1 s
    doc = json.loads((out / "gpu_check.json").read_text())
    status = {p["part"]: (p["status"], p["note"]) for p in doc["parts"]}
    assert status["cpu"] == ("stopped", "the whole check was stopped during this part")
    assert status["setup"] == ("skipped", "not in GPU_CHECK_PARTS") and "demo" not in status  # never reached
    assert doc["mode"] == "rehearse" and (out / "gpu_check_logs.tar.gz").is_file()
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# tools/gpu_check.sh rehearse: a CPU rehearsal, not a GPU measurement\n")
    assert "| cpu | stopped | " in md and md in rest


def test_report_from_what_the_parts_wrote(tmp_path):
    """A table measured here (tiny ViT-S on CPU) and the files of the other parts become the report's rows."""
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    (work / "parts.tsv").write_text("cpu\t0\t12\t40\t\ncuda\t124\t110\t110\t\nwheels\tskip\t0\t0\tno GPU\n")
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
    assert [(p["part"], p["status"]) for p in doc["parts"]] == [("cpu", "ok"), ("cuda", "timed out"), ("wheels", "skipped")]
    assert doc["mode"] == "run"  # no mode.json: what tools/gpu_check.sh run wrote before it said which
    assert doc["tests"]["cpu"] is None
    assert doc["tests"]["cuda"] == {"tests": 3, "failures": 1, "errors": 0, "skipped": 1, "passed": 1,
                                    "failed": ["tests.cuda.test_x::test_b"]}
    slope = (points[1]["phase_peak_bytes"]["backward"] - points[0]["phase_peak_bytes"]["backward"]) / 2 / 2**20
    (row,) = doc["memory"]
    assert (row["model"], row["way"], row["precision"], row["attention"]) == ("ViT-S", "reversible", "fp32", "math")
    assert row["mib_per_image"] == pytest.approx(slope)
    md = (out / "gpu_check.md").read_text()
    assert "| cuda | timed out (rc 124) | 110 | 110 |  |" in md and "| wheels | skipped | 0 | 0 | no GPU |" in md
    assert md.startswith("# tools/gpu_check.sh run\n") and "rehearsal" not in md
    assert "FAILED tests.cuda.test_x::test_b" in md
    assert f"| ViT-S | reversible | - | {slope:.1f}" in md and "| 8.8 |" in md  # fp32 fused not run; fp32 math; paper
    assert doc["demo"] is None and "no result" in md


def test_a_pytest_part_cut_at_its_budget_is_counted_from_its_log(tmp_path):
    """pytest writes its XML at the end only: a part killed at its budget leaves none, but its -v log names
    every test done so far, and the report counts those instead of saying nothing ran."""
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    (work / "parts.tsv").write_text("cuda\t124\t80\t80\t\n")
    (work / "cuda.log").write_text(
        "tests/cuda/test_a.py::test_one PASSED                     [  2%]\n"
        "tests/cuda/test_a.py::test_two[bf16] FAILED               [  4%]\n"
        "tests/cuda/test_b.py::test_three SKIPPED (no bf16)        [  6%]\n"
        "tests/cuda/test_b.py::test_four PASSED                    [  8%]\n"
        "tests/cuda/test_b.py::test_five \n")  # running when the budget ran out
    assert gpu_check.main(["report", str(work), str(out)]) == 0
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["tests"]["cuda"] == {"tests": 4, "passed": 2, "failures": 1, "errors": 0, "skipped": 1,
                                    "failed": ["tests/cuda/test_a.py::test_two[bf16]"], "cut": True}
    md = (out / "gpu_check.md").read_text()
    assert "- cuda: 2 passed, 1 failed, 0 errors, 1 skipped (the part was cut at its budget" in md


def test_workers_needed_use_the_on_device_rate_a_cuda_run_gets(tmp_path):
    """The default AUG.ON_DEVICE (None) is on for CUDA runs, so the report divides by that worker rate where measured."""
    vit_b, mvit_b = gpu_check.LOADER_CONFIG["time_vit_b"], gpu_check.LOADER_CONFIG["time_mvit_b"]
    data = {"rows": [{"config": vit_b, "pipeline": "train images (500x375 JPEG), the file's recipe", "produces": 160.0},
                     {"config": mvit_b, "pipeline": "train images (500x375 JPEG), the file's recipe", "produces": 140.0}],
            "on_device": [{"config": vit_b, "in_workers": 161.0, "on_device": 400.0}]}
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
    paths = [w for w in plan("run")["cuda"][1].split() if w.startswith("tests/")]
    marked = []
    for root, _, files in os.walk(os.path.join(REPO, "tests")):
        for name in files:
            path = os.path.relpath(os.path.join(root, name), REPO)
            if name.startswith("test_") and name.endswith(".py"):
                with open(os.path.join(REPO, path)) as f:
                    if path.startswith("tests/cuda/") or re.search(r"^(pytestmark = |@)pytest\.mark\.cuda\b", f.read(), re.M):
                        marked.append(path)
    assert marked and all(any(m == p or m.startswith(p.rstrip("/") + "/") for p in paths) for m in marked), (marked, paths)
