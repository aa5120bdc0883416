"""The data benchmark reads the shipped recipes and measures real items; the report computes workers."""

import os
import subprocess
import sys

import pytest

from revvit.benchmarks import data
from revvit.benchmarks.report import data_table
from revvit.config import get_cfg, merge_file


def test_recipe_is_the_shipped_config(tmp_path):
    cfg = data.recipe_cfg("configs/Kinetics/REV_MVIT_B_16x4_CONV.yaml", tmp_path)
    shipped = get_cfg()
    merge_file(shipped, "configs/Kinetics/REV_MVIT_B_16x4_CONV.yaml")
    assert cfg.AUG.AA_TYPE == shipped.AUG.AA_TYPE and cfg.DATA.DECODING_BACKEND == shipped.DATA.DECODING_BACKEND
    assert cfg.DATA.PATH_TO_DATA_DIR == str(tmp_path) and cfg.NUM_GPUS == 0


def test_item_rate_on_generated_images(tmp_path):
    root = data.make_benchmark_images(str(tmp_path), count=4, size=(48, 64))
    cfg = data.recipe_cfg("configs/ImageNet/REV_VIT_S.yaml", root)
    cfg.DATA.TRAIN_CROP_SIZE = 32
    assert data.item_rate(cfg, items=2, warmup=1) > 0


def test_data_table_divides_consumption_by_production():
    text = data_table([{"config": "A.yaml", "pipeline": "p", "produces": 4.0, "consumes": 10.0, "consumer": "(here)"}])
    assert "| A.yaml | p | 4.0 | 10.0 (here) | 2.5 |" in text
    small = data_table([{"config": "A.yaml", "pipeline": "p", "produces": 200.0, "consumes": 2.0}])
    assert small.rstrip().endswith("| 0.01 |")  # a fraction of a worker is still shown


def test_on_device_rates_and_the_device_half_on_generated_images(tmp_path):
    root = data.make_benchmark_images(str(tmp_path), count=4, size=(48, 64))
    cfg = data.recipe_cfg("configs/ImageNet/REV_VIT_B.yaml", root, on_device=True)
    cfg.DATA.TRAIN_CROP_SIZE = 32
    assert cfg.AUG.ON_DEVICE is True and data.item_rate(cfg, items=2, warmup=1) > 0
    assert data.timm_reference_rate(data.recipe_cfg("configs/ImageNet/REV_VIT_B.yaml", root), root, items=2, warmup=1) > 0
    assert data.device_cost(cfg, batch_size=4, batches=1) > 0


def test_on_device_table_shows_the_gain():
    row = {"config": "A.yaml", "in_workers": 100.0, "on_device": 250.0, "reference": ("timm", 101.0), "device_cpu_s": 0.002, "device_batch": 8}
    assert "| A.yaml | 100.0 | 250.0 | 2.50x | 101.0 (timm) | 2.0 (batch 8) |" in data.on_device_table([row])


@pytest.mark.slow
def test_benchmark_data_refuses_videos_shorter_than_one_clip():
    """tools/gpu_check.sh once asked for 2 s videos: 60 frames, one short of a 16x4 clip, and every clip was skipped."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "tools/benchmark_data.py", "--seconds", "2"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--seconds 2 makes videos shorter than one 16x4 clip (61 frames at 30 fps)" in proc.stderr
    with open(os.path.join(repo, "tools", "gpu_check.sh")) as f:
        lines = [line for line in f if "tools/benchmark_data.py" in line]
    assert len(lines) == 2  # the real run and the rehearsal
    for line in lines:
        seconds = int(line.split("--seconds")[1].split()[0])
        assert seconds * 30 >= (16 - 1) * 4 + 1, line


def test_the_tool_passes_its_flags_to_the_measurement_and_prints_both_tables(monkeypatch, tmp_path, capsys):
    """gpu_check.sh's command line, with the measurement replaced by its recorded arguments."""
    import importlib.util
    import json

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("benchmark_data_tool", os.path.join(repo, "tools", "benchmark_data.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    calls = []
    row = {"config": "A.yaml", "in_workers": 100.0, "on_device": 250.0, "reference": None, "device_cpu_s": 0.002, "device_batch": 8}
    result = {"kind": "data", "rows": [{"config": "A.yaml", "pipeline": "p", "produces": 4.0}], "on_device": [row],
              "load_average": [1.0, 2.0], "rates": "per CPU second, one thread"}
    monkeypatch.setattr(tool, "measure", lambda work, **sizes: calls.append((work, sizes)) or result)
    out = tmp_path / "data.json"
    argv = ["--videos", "1", "--seconds", "3", "--clips", "2", "--images", "32", "--batch-size", "0", "--no-short-gop",
            "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    assert tool.main(argv) == 0
    assert calls == [(str(tmp_path / "work"), dict(videos=1, seconds=3, clips=2, images=32, batch_size=0, device_batch=32, short_gop=False))]
    printed = capsys.readouterr()
    assert data_table(result["rows"]) in printed.out and data.on_device_table([row]) in printed.out
    assert "1-minute load average 1.0 before, 2.0 after" in printed.err
    assert json.loads(out.read_text()) == result
