"""One measured step: the phases and totals add up, and the bytes kept for backward behave as the three
ways promise (reversible flat in depth, the twin growing, checkpointing keeping one input per block)."""

import pytest

from revvit.benchmarks.settings import WAYS, StepSpec
from revvit.benchmarks.step import PHASES, measure, run_isolated

CONFIG = "configs/ImageNet/REV_VIT_S.yaml"
WIDTH, TOKENS, BATCH = 32, 4, 2
TINY = ("MVIT.EMBED_DIM", str(WIDTH), "MVIT.NUM_HEADS", "2", "DATA.TRAIN_CROP_SIZE", "32", "MODEL.NUM_CLASSES", "10")


def tiny(way, depth=3, **kw):
    return StepSpec(config=CONFIG, opts=TINY + ("MVIT.DEPTH", str(depth)), way=way, batch_size=BATCH, threads=1, **kw)


def test_saved_bytes_flat_in_depth_for_reversible_and_growing_for_the_twin():
    kept = {(way, d): measure(tiny(way, d, steps=0, warmup=0, saved=True))["saved_bytes"] for way in WAYS for d in (2, 4)}
    block_input = BATCH * TOKENS * WIDTH * 4  # batch x tokens x width x float32
    assert kept["reversible", 4] == kept["reversible", 2]
    assert kept["non_reversible", 4] > kept["non_reversible", 2] + 2 * block_input  # two more blocks' activations
    assert kept["act_checkpoint", 4] - kept["act_checkpoint", 2] == 2 * block_input  # two more block inputs
    assert kept["act_checkpoint", 2] < kept["non_reversible", 2]


def test_measure_accounts_phases_and_totals():
    r = measure(tiny("reversible", steps=2, warmup=1))
    assert set(r["phase_peak_bytes"]) == set(PHASES)
    assert r["step_bytes"] == max(r["phase_peak_bytes"].values()) == r["phase_peak_bytes"][r["peak_phase"]]
    assert r["total_bytes"] == r["model_state_bytes"] + r["step_bytes"]
    assert len(r["step_times_s"]) == 2 and r["batch_size"] == BATCH and r["depth"] == 3
    assert r["extra"] == {} and r["opts"] == list(tiny("reversible").opts)


@pytest.mark.slow
def test_run_isolated_returns_a_failure_as_an_error():
    # (a successful isolated run is exercised by tests/benchmarks/test_tools.py)
    bad = run_isolated(StepSpec(config="configs/ImageNet/NO_SUCH.yaml", way="reversible"))
    assert "NO_SUCH.yaml" in bad["error"] and bad["way"] == "reversible"


def test_spec_rejects_unknown_way():
    with pytest.raises(ValueError, match="unknown way 'fast'"):
        StepSpec(way="fast")
