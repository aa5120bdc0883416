from revvit.benchmarks.depth_sweep import saved_bytes_sweep, sweep_models
from revvit.benchmarks.report import saved_sweep_table, sweep_table

MiB = 2**20
TINY = ("MVIT.EMBED_DIM", "32", "MVIT.NUM_HEADS", "2", "MODEL.NUM_CLASSES", "10")


def test_sweep_models_and_negative_slopes_are_not_published():
    models = sweep_models("c.yaml", [6, 48], 64, (4, 12))
    assert [m.name for m in models] == ["depth 6", "depth 48"]
    assert models[1].opts == ("MVIT.DEPTH", "48", "DATA.TRAIN_CROP_SIZE", "64") and models[1].batches == (4, 12)
    row = {"model": "depth 48", "way": "reversible", "depth": 48, "params": 3e8, "batches": [4, 12],
           "backward_holds": True, "bytes_per_image": -29 * MiB, "saved_bytes_per_image": 0.1 * MiB}
    text = sweep_table([row])
    assert "not resolved (-29.0)" in text and "**-29" not in text


def test_saved_bytes_sweep_flat_for_reversible_linear_for_the_twin():
    rows = saved_bytes_sweep("configs/ImageNet/REV_VIT_S.yaml", [1, 2, 4], 32, batch_size=2, opts=TINY)
    kept = {(r["depth"], r["way"]): r["saved_bytes_per_image"] for r in rows}
    assert kept[1, "reversible"] == kept[2, "reversible"] == kept[4, "reversible"]
    per_block = kept[2, "non_reversible"] - kept[1, "non_reversible"]
    assert per_block > 0 and kept[4, "non_reversible"] - kept[2, "non_reversible"] == 2 * per_block
    assert kept[4, "act_checkpoint"] - kept[2, "act_checkpoint"] == 2 * 4 * 32 * 4  # two block inputs: tokens x width x fp32
    table = saved_sweep_table(rows)
    assert table.count("\n| ") == 3 and table.splitlines()[2].startswith("| 1 | ")
