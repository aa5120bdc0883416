"""Memory per image: the slope is taken from the points given, of the backward phase, and says when the
backward did not hold the peak; the rows and the report hold what was measured."""

import pytest

from revvit.benchmarks import memory_table
from revvit.benchmarks.memory_table import TableModel, TableSettings
from revvit.benchmarks.slopes import base_shift, memory_per_image, predicted_max_batch
from revvit.benchmarks.report import memory_table as memory_markdown
from revvit.benchmarks.report import phase_table

MiB = 2**20


def point(batch, backward, forward=0, optimizer=0, state=100 * MiB, start=500 * MiB):
    phases = {"forward": forward, "backward": backward, "optimizer": optimizer}
    step = max(phases.values())
    return {"batch_size": batch, "phase_peak_bytes": phases, "peak_phase": max(phases, key=phases.get),
            "step_bytes": step, "model_state_bytes": state, "total_bytes": state + step, "mem_start_bytes": start}


def test_slope_of_the_backward_peak():
    r = memory_per_image(point(2, 50 * MiB), point(6, 90 * MiB))
    assert r["bytes_per_image"] == 10 * MiB and r["fixed_bytes"] == 30 * MiB and r["backward_holds"]
    # The optimizer holds the peak at the small batch: the figure is flagged, still the backward's slope.
    r = memory_per_image(point(2, 50 * MiB, optimizer=70 * MiB), point(6, 90 * MiB, optimizer=70 * MiB))
    assert r["bytes_per_image"] == 10 * MiB and not r["backward_holds"]
    with pytest.raises(ValueError, match="two different batches"):
        memory_per_image(point(4, 1), point(4, 2))


def test_predicted_max_batch_from_the_backward_line_and_the_larger_state():
    small, large = point(2, 50 * MiB), point(6, 90 * MiB, state=120 * MiB)  # 30 MiB + 10 MiB per image
    assert predicted_max_batch(small, large, 1000 * MiB) == (1000 - 120 - 30) // 10
    assert predicted_max_batch(small, large, 100 * MiB) == 0
    # Pages of the small point's process evicted: its start and steady state lower by the same amount.
    assert base_shift(point(2, 50 * MiB, state=100 * MiB, start=200 * MiB), point(6, 90 * MiB, start=500 * MiB)) == 300 * MiB
    assert base_shift(small, point(6, 90 * MiB, state=100 * MiB)) == 0


def test_run_memory_table_rows_and_report(monkeypatch):
    per_image = {"reversible": 2 * MiB, "non_reversible": 20 * MiB, "act_checkpoint": 4 * MiB}
    calls = []

    def fake_run(spec, timeout=None):
        calls.append((spec.extra["model"], spec.way, spec.batch_size, spec.extra["repeat"]))
        backward = 10 * MiB + per_image[spec.way] * spec.batch_size + spec.extra["repeat"] * MiB * spec.batch_size
        return dict(spec.to_json(), **point(spec.batch_size, backward), params=1000, depth=3, step_time_s=1.0)

    monkeypatch.setattr(memory_table, "run_point", fake_run)
    settings = TableSettings(models=(TableModel("ViT-S", "x.yaml", (2, 4)),), repeats=2, budget_bytes=400 * MiB)
    out = memory_table.run_memory_table(settings, log=lambda m: None)
    assert len(calls) == 3 * 2 * 2 and calls[0] == ("ViT-S", "reversible", 2, 0)
    rows = {(r["way"], r["repeat"]): r for r in out["rows"]}
    assert rows["reversible", 0]["bytes_per_image"] == 2 * MiB and rows["reversible", 1]["bytes_per_image"] == 3 * MiB
    assert rows["non_reversible", 0]["max_batch"] == (400 - 100 - 10) // 20
    text = memory_markdown(out["rows"], {"ViT-S": {"non_reversible": 66.5, "reversible": 8.8}})
    assert "| ViT-S | reversible | 2 and 4 | yes | **2.5** (2.0, 3.0) | 1.0x | 8.8 | 1.0x |" in text
    assert "| ViT-S | non-reversible | 2 and 4 | yes | **20.5** (20.0, 21.0) | 8.2x | 66.5 | 7.6x |" in text
    assert phase_table(out["points"]).count("\n| ViT-S |") == 12
