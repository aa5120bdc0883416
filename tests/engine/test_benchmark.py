"""The benchmark runs end to end on a tiny model, its JSON holds every number, and its search and
ratios compute what they claim. No timing is checked: the machine may be busy."""

import json
import os
import subprocess
import sys

import pytest

from revvit.engine import benchmark
from revvit.engine.benchmark_report import sweep_ratios, sweep_table, targets

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = [
    "MVIT.EMBED_DIM", "32", "MVIT.NUM_HEADS", "2", "MVIT.DEPTH", "3",
    "DATA.TRAIN_CROP_SIZE", "32", "MODEL.NUM_CLASSES", "10",
]
CONFIG = "configs/ImageNet/REV_VIT_S.yaml"


def test_cli_writes_results_and_reversible_saves_less(tmp_path):
    out = tmp_path / "results.json"
    cmd = [
        sys.executable, os.path.join(REPO, "tools", "benchmark.py"),
        "--cfg", CONFIG, "--opts", *TINY, "--ways", "reversible", "non_reversible",
        "--batch-size", "2", "--steps", "2", "--warmup", "0", "--threads", "1", "--no-sweep", "--in-process",
        "--out", str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())

    machine = results["machine"]
    assert machine["torch"] and machine["threads"] == 1 and machine["cpu_count"] >= 1
    rows = {r["way"]: r for r in results["configs"]}
    assert set(rows) == {"reversible", "non_reversible"}
    for r in rows.values():
        assert r["batch_size"] == 2 and r["steps"] == 2 and r["threads"] == 1
        assert len(r["step_times_s"]) == 2 and r["step_time_s"] > 0 and r["samples_per_s"] > 0
        assert r["mem_peak_bytes"] >= r["mem_base_bytes"] and r["step_bytes"] >= 0
        assert r["step_bytes_per_sample"] == r["step_bytes"] / 2
        assert set(r["phase_peak_bytes"]) == {"forward", "backward", "optimizer"}
        assert r["params"] > 0 and r["saved_bytes"] > 0
    # Same blocks (the reversible tail and head see both streams); the reversible one keeps almost nothing.
    assert rows["reversible"]["params"] - rows["non_reversible"]["params"] == 2 * 32 + 32 * 10
    assert rows["reversible"]["saved_bytes"] < rows["non_reversible"]["saved_bytes"] / 2
    assert "REV_VIT_S_rev_over_non_reversible_saved_bytes" in results["config_ratios"]
    assert "| REV_VIT_S | reversible | 2 |" in proc.stdout


def test_saved_bytes_see_checkpointed_inputs_and_grow_with_depth():
    """Non-reversible memory grows with depth; reversible does not; checkpointing keeps block inputs."""
    kept = {}
    for way in benchmark.WAYS:
        for depth in (2, 4):
            opts = TINY[:4] + ["MVIT.DEPTH", str(depth)] + TINY[6:]
            spec = dict(config=CONFIG, opts=opts, way=way, batch_size=2, steps=0, warmup=0, threads=1)
            kept[way, depth] = benchmark.measure(spec)["saved_bytes"]
    tokens_bytes = 2 * 4 * 32 * 4  # batch x tokens x width x float32: one block input
    assert kept["non_reversible", 4] > kept["non_reversible", 2] + 2 * tokens_bytes
    assert kept["reversible", 4] == kept["reversible", 2]
    assert kept["act_checkpoint", 4] - kept["act_checkpoint", 2] == 2 * tokens_bytes
    assert kept["act_checkpoint", 2] < kept["non_reversible", 2]


def test_max_batch_finds_the_boundary(monkeypatch):
    calls = []

    def fake_run(spec, timeout=None):
        calls.append(spec["batch_size"])
        return {"total_bytes": 1000 + 37 * spec["batch_size"]}

    monkeypatch.setattr(benchmark, "run_isolated", fake_run)
    best, trials = benchmark.max_batch({"way": "reversible"}, budget_bytes=1000 + 37 * 123 + 5)
    assert best == 123
    assert {t["batch_size"]: t["fits"] for t in trials}[124] is False
    assert len(calls) <= 6  # linear memory: the prediction lands on the boundary
    assert benchmark.max_batch({"way": "reversible"}, budget_bytes=900)[0] == 0


def test_sweep_ratios_and_targets():
    def row(depth, way, act, time):
        return {"depth": depth, "way": way, "params": 1e6, "activation_bytes_per_sample": act,
                "step_bytes": 8 * act, "step_bytes_per_sample": act, "saved_bytes_per_sample": act,
                "step_time_s": time, "step_cpu_time_s": time}

    results = [
        row(12, "reversible", 10, 1.3), row(12, "non_reversible", 100, 1.0), row(12, "act_checkpoint", 20, 1.35),
        row(48, "reversible", 10.5, 5.2), row(48, "non_reversible", 400, 4.0), row(48, "act_checkpoint", 80, 5.4),
    ]
    ratios = sweep_ratios(results)
    assert ratios["rev_over_non_reversible_activation_memory_depth12"] == pytest.approx(0.1)
    assert ratios["rev_over_non_reversible_step_time_depth12"] == pytest.approx(1.3)
    assert ratios["rev_over_act_checkpoint_activation_memory_depth48"] == pytest.approx(10.5 / 80)
    assert ratios["rev_activation_memory_growth_depth12_to_48"] == pytest.approx(0.05)
    met = targets(ratios)
    assert met["memory_ratio_activation_memory"]["met"] and met["memory_flat_activation_memory"]["met"]
    assert met["time_ratio_step_time"]["met"]
    assert sweep_table(results).count("\n| 48 |") == 3
