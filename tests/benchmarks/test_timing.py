from revvit.benchmarks.report import timing_table
from revvit.benchmarks.settings import StepSpec
from revvit.benchmarks.timing import interleaved_step_times

TINY = ("MVIT.EMBED_DIM", "32", "MVIT.NUM_HEADS", "2", "MVIT.DEPTH", "3", "DATA.TRAIN_CROP_SIZE", "32", "MODEL.NUM_CLASSES", "10")


def test_interleaved_ratios_and_flop_ratios():
    ways = ("reversible", "non_reversible", "act_checkpoint")
    specs = [StepSpec(config="configs/ImageNet/REV_VIT_S.yaml", opts=TINY, way=w, batch_size=2) for w in ways]
    out = interleaved_step_times(specs, rounds=2, warmup=0)
    e = out["ways"]
    assert list(e) == list(ways) and all(len(x["step_cpu_times_s"]) == 2 for x in e.values())
    assert e["reversible"]["cpu_ratio"] == 1.0 and e["reversible"]["flop_ratio"] == 1.0
    assert e["non_reversible"]["cpu_ratio_per_round"] == [
        r / n for r, n in zip(e["reversible"]["step_cpu_times_s"], e["non_reversible"]["step_cpu_times_s"])
    ]
    # The reversible step recomputes every block's forward: more FLOPs than the twin, at most 4/3 of them
    # (the stem and the head are not recomputed); checkpointing recomputes too.
    assert 1.0 < e["non_reversible"]["flop_ratio"] < 4 / 3
    assert e["act_checkpoint"]["flops"] > e["non_reversible"]["flops"]
    assert timing_table("tiny", out).count("\n| tiny |") == 3
