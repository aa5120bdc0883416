"""The accuracy-claim tool's bookkeeping: reading a run's test top-1, the summary and the table (no training)."""

import json
import math
import os
import subprocess
import sys

import pytest

from revvit.benchmarks.accuracy import Run, markdown_table, read_test_top1, run_one, summarise

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_stats(directory, *stats):
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"json_stats: {json.dumps(s)}" for s in stats]
    (directory / "json_stats.log").write_text("\n".join(lines) + "\n")


def test_read_test_top1_takes_the_last_test_final_line(tmp_path):
    assert read_test_top1(tmp_path / "missing") is None
    write_stats(tmp_path / "a", {"_type": "val_epoch", "top1_err": 3.0})
    assert read_test_top1(tmp_path / "a") is None  # trained, never tested
    write_stats(tmp_path / "b", {"split": "test_final", "top1_acc": 90.5},
                {"_type": "train_epoch", "top1_err": 1.0}, {"split": "test_final", "top1_acc": 96.11111})
    assert read_test_top1(tmp_path / "b") == 96.11111  # a resumed run tests again: the newest counts


def test_summary_mean_and_sample_std():
    results = [{"cfg": "c.yaml", "variant": "reversible", "seed": s, "top1": v} for s, v in enumerate([95.0, 96.0, 97.0])]
    results += [{"cfg": "c.yaml", "variant": "non-reversible", "seed": 0, "top1": 94.0},
                {"cfg": "c.yaml", "variant": "non-reversible", "seed": 1, "top1": None}]
    rev, twin = summarise(results)["c.yaml"]["reversible"], summarise(results)["c.yaml"]["non-reversible"]
    # mean 96, deviations -1, 0, 1: sample variance 2 / (3 - 1) = 1
    assert (rev["n"], rev["mean"], rev["std"], rev["min"], rev["max"]) == (3, 96.0, 1.0, 95.0, 97.0)
    assert (twin["n"], twin["mean"], twin["std"], twin["failed"], twin["seeds"]) == (1, 94.0, 0.0, 1, [0])
    sample = [96.11111, 95.55556, 96.38889]
    got = summarise([{"cfg": "c", "variant": "reversible", "seed": i, "top1": v} for i, v in enumerate(sample)])
    m = sum(sample) / 3
    assert got["c"]["reversible"]["std"] == pytest.approx(math.sqrt(sum((v - m) ** 2 for v in sample) / 2), rel=1e-12)


def test_markdown_table_rows_and_difference():
    results = [{"cfg": "c.yaml", "variant": v, "seed": s, "top1": t}
               for v, ts in (("reversible", [95.0, 96.0, 97.0]), ("non-reversible", [94.0, 95.0, 96.0]))
               for s, t in enumerate(ts)]
    results.append({"cfg": "d.yaml", "variant": "reversible", "seed": 0, "top1": 80.0})
    lines = markdown_table(summarise(results)).splitlines()
    assert lines[0] == "| config | reversible top-1 (%) | non-reversible top-1 (%) | difference |"
    assert lines[2] == ("| `c.yaml` | 96.00 ± 1.00 (95.00–97.00, 3 seeds) | 95.00 ± 1.00 (94.00–96.00, 3 seeds) "
                        "| +1.00 |")
    assert lines[3] == "| `d.yaml` | 80.00 ± 0.00 (80.00–80.00, 1 seed) | — | — |"  # no twin yet: no difference


def test_run_one_reads_back_a_finished_run_and_argv_overrides_the_variant(tmp_path):
    run = Run("configs/Demo/REV_VIT_DIGITS.yaml", "non-reversible", 2, str(tmp_path))
    assert run.output_dir == os.path.join(str(tmp_path), "REV_VIT_DIGITS", "non-reversible_seed2")
    assert run.argv() == ["--cfg", run.cfg, "RNG_SEED", "2", "OUTPUT_DIR", run.output_dir, "MVIT.REV.ENABLE", "False"]
    write_stats(tmp_path / "REV_VIT_DIGITS" / "non-reversible_seed2", {"split": "test_final", "top1_acc": 95.0})
    result = run_one(run, log=lambda m: None)  # already tested: nothing is started
    assert (result["top1"], result["seconds"]) == (95.0, 0.0)


def test_report_cli_prints_the_table_of_a_results_file(tmp_path):
    results = [{"cfg": "c.yaml", "variant": "reversible", "seed": 0, "top1": 96.0}]
    (tmp_path / "r.json").write_text(json.dumps({"results": results}))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "accuracy_claim.py"), "--report",
                           str(tmp_path / "r.json")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == markdown_table(summarise(results)) + "\n"
