import os
import random

import numpy as np
import pytest
import torch

from dataset_media import gradient_video, gray_ramp_video, make_cfg, textured_static_video, truncate
from revvit.datasets import BadSampleCounter, DataLayoutError, build_dataset, construct_loader
from revvit.datasets.kinetics import read_video_list


def seed(n=0):
    random.seed(n)
    np.random.seed(n)
    torch.manual_seed(n)


def write_csv(root, split, rows):
    with open(os.path.join(root, f"{split}.csv"), "w") as f:
        f.writelines(f"{row}\n" for row in rows)


def test_train_clip_shape_dtype_and_labels(kinetics_dir):
    cfg = make_cfg("kinetics", kinetics_dir, AUG__ENABLE=True)
    ds = build_dataset("kinetics", cfg, "train")
    assert len(ds) == 6 and ds.num_videos == 6
    seed()
    clip, label, index, meta = ds[0]
    assert clip.dtype == torch.float32 and tuple(clip.shape) == (3, 4, 32, 32)
    assert (label, index) == (0, 0) and meta["valid"] and meta["skipped"] == 0
    assert [ds[i][1] for i in range(6)] == [0, 1, 2, 0, 1, 2]
    # The first video sits in a folder with spaces and has a space in its name.
    assert ds.video_path(0).endswith("clips/with space/v 0.mp4")


def test_val_view_is_centred_and_deterministic(kinetics_dir):
    cfg = make_cfg("kinetics", kinetics_dir)
    ds = build_dataset("kinetics", cfg, "val")
    a, b = ds[2][0], ds[2][0]
    assert torch.equal(a, b) and tuple(a.shape) == (3, 4, 32, 32)
    # Gray ramp: the middle clip (frames 8, 10, 12, 14 of 24) has mean gray level 110.
    level = (a.mean() * 0.25 + 0.5) * 255
    assert abs(float(level) - 110) < 4


def test_test_views_order_indices_and_determinism(kinetics_dir):
    cfg = make_cfg("kinetics", kinetics_dir, TEST__NUM_ENSEMBLE_VIEWS=3, TEST__NUM_SPATIAL_CROPS=3)
    ds = build_dataset("kinetics", cfg, "test")
    assert len(ds) == 6 * 9
    items = [ds[i] for i in range(9, 18)]  # all views of video 1
    assert {it[2] for it in items} == {1} and {it[1] for it in items} == {1}
    views = [(it[3]["temporal_view"], it[3]["spatial_view"]) for it in items]
    assert views == [(t, s) for t in range(3) for s in range(3)]
    # Later temporal views are brighter (gray ramp), whatever the crop.
    means = [float(it[0].mean()) for it in items]
    assert means[0] < means[3] < means[6]
    assert torch.equal(ds[13][0], items[4][0])


def test_three_spatial_crops_are_left_centre_right(tmp_path):
    gradient_video(tmp_path / "g.mp4")
    write_csv(tmp_path, "test", ["g.mp4 0"])
    cfg = make_cfg("kinetics", tmp_path, TEST__NUM_ENSEMBLE_VIEWS=1, TEST__NUM_SPATIAL_CROPS=3)
    ds = build_dataset("kinetics", cfg, "test")
    left, centre, right = (float(ds[i][0].mean()) for i in range(3))
    assert left < centre < right
    cfg1 = make_cfg("kinetics", tmp_path, TEST__NUM_ENSEMBLE_VIEWS=1, TEST__NUM_SPATIAL_CROPS=1)
    only = build_dataset("kinetics", cfg1, "test")
    assert len(only) == 1 and abs(float(only[0][0].mean()) - centre) < 0.05


def test_one_augmentation_for_all_frames_of_a_clip(tmp_path):
    textured_static_video(tmp_path / "static.mp4")
    write_csv(tmp_path, "train", ["static.mp4 1"])
    write_csv(tmp_path, "val", ["static.mp4 1"])
    cfg = make_cfg(
        "kinetics", tmp_path, AUG__ENABLE=True, AUG__RE_PROB=0.0,
        DATA__TRAIN_JITTER_SCALES_RELATIVE=[0.08, 1.0], DATA__TRAIN_JITTER_ASPECT_RELATIVE=[0.75, 1.3333],
    )
    ds = build_dataset("kinetics", cfg, "train")
    raw = build_dataset("kinetics", make_cfg("kinetics", tmp_path), "val")[0][0]
    changed = 0
    for n in range(4):
        seed(n)
        clip = ds[0][0]
        for t in range(1, clip.shape[1]):
            assert torch.equal(clip[:, t], clip[:, 0]), f"frame {t} was augmented differently (seed {n})"
        changed += not torch.allclose(clip[:, 0], raw[:, 0], atol=0.1)
    assert changed >= 3  # ...and the augmentation did change the frames


def test_repeated_augmentation_gives_distinct_clips_of_one_video(kinetics_dir):
    cfg = make_cfg("kinetics", kinetics_dir, AUG__ENABLE=True, AUG__NUM_SAMPLE=3, TRAIN__BATCH_SIZE=2)
    ds = build_dataset("kinetics", cfg, "train")
    seed(1)
    clips, label, index, _ = ds[4]
    assert isinstance(clips, list) and len(clips) == 3
    assert all(tuple(c.shape) == (3, 4, 32, 32) for c in clips)
    assert not torch.equal(clips[0], clips[1]) and not torch.equal(clips[1], clips[2])
    x, labels, idx, meta = next(iter(construct_loader(cfg, "train")))
    assert tuple(x[0].shape) == (6, 3, 4, 32, 32)
    assert labels.tolist()[0::3] == labels.tolist()[1::3] == labels.tolist()[2::3]
    assert idx[0] == idx[1] == idx[2] and meta["skipped"].shape == (6,)


def test_bad_csv_lines_are_skipped_with_their_line_numbers(tmp_path):
    gray_ramp_video(tmp_path / "a b.mp4")
    write_csv(tmp_path, "train", ["a b.mp4 2", "a b.mp4 two", "a b.mp4 7", "nolabel", "", "a b.mp4,1", "a b.mp4 -1"])
    paths, labels, bad = read_video_list(str(tmp_path / "train.csv"), " ", "", str(tmp_path), 3)
    assert labels == [2] and paths == [os.path.join(str(tmp_path), "a b.mp4")]
    assert [row[0] for row in bad] == [2, 3, 4, 6, 7]
    assert "not an integer" in bad[0][2] and "outside [0, 3)" in bad[1][2]
    # A comma separator and a path prefix.
    paths, labels, _ = read_video_list(str(tmp_path / "train.csv"), ",", "/videos", str(tmp_path), 3)
    assert paths == ["/videos/a b.mp4"] and labels == [1]


def test_missing_or_empty_data_fails_at_start_with_the_layout(tmp_path):
    cfg = make_cfg("kinetics", tmp_path / "nowhere")
    with pytest.raises(DataLayoutError, match="nowhere.*PATH_TO_DATA_DIR.*train.csv"):
        build_dataset("kinetics", cfg, "train")
    with pytest.raises(DataLayoutError, match="val.csv"):
        build_dataset("kinetics", make_cfg("kinetics", tmp_path), "val")
    write_csv(tmp_path, "train", ["x.mp4 9"])
    with pytest.raises(DataLayoutError, match=r"No usable line.*line 1 'x.mp4 9': label 9 outside \[0, 3\)"):
        build_dataset("kinetics", make_cfg("kinetics", tmp_path), "train")


@pytest.fixture
def broken_dir(tmp_path):
    """Four good videos, one truncated, one missing, one too short for a 4x2 clip."""
    rows = []
    for i in range(4):
        gray_ramp_video(tmp_path / f"good{i}.mp4")
        rows.append(f"good{i}.mp4 {i % 3}")
    truncate(gray_ramp_video(tmp_path / "cut.mp4"), 0.5)
    gray_ramp_video(tmp_path / "short.mp4", frames=5)
    rows += ["cut.mp4 0", "missing.mp4 1", "short.mp4 2"]
    for split in ("train", "test"):
        write_csv(tmp_path, split, rows)
    return tmp_path


def test_training_skips_bad_videos_and_counts_them_across_workers(broken_dir):
    cfg = make_cfg("kinetics", broken_dir, TRAIN__BATCH_SIZE=7, DATA_LOADER__NUM_WORKERS=2)
    loader = construct_loader(cfg, "train")
    counter = BadSampleCounter()
    seen = 0
    for _ in range(2):
        for x, labels, index, meta in loader:
            counter.update(meta)
            seen += len(index)
            assert bool(meta["valid"].all()) and set(index.tolist()) <= {0, 1, 2, 3}
    # Each epoch visits the three bad videos once (and a substitute may be bad again).
    assert seen == 14 and counter.count >= 6
    assert {os.path.basename(p) for p in counter.paths} == {"cut.mp4", "missing.mp4", "short.mp4"}
    assert "skipped" in counter.summary("train", 1) and counter.summary("train", 1).count("mp4") == 3
    counter.reset()
    assert counter.count == 0 and counter.summary("train", 2) is None


def test_evaluation_marks_bad_views_invalid_and_keeps_short_videos(broken_dir):
    cfg = make_cfg("kinetics", broken_dir, TEST__NUM_ENSEMBLE_VIEWS=2, TEST__NUM_SPATIAL_CROPS=1)
    ds = build_dataset("kinetics", cfg, "test")
    valid = [ds[i][3]["valid"] for i in range(len(ds))]
    # Videos 4 (cut) and 5 (missing) fail in both views; 6 (short) is padded and scored.
    assert valid == [True] * 8 + [False] * 4 + [True] * 2
    clip, label, index, meta = ds[9]
    assert index == 4 and label == 0 and meta["skipped"] == 1 and not torch.any(clip != 0)


def test_all_bad_data_fails_after_the_retry_limit(tmp_path):
    write_csv(tmp_path, "train", ["missing1.mp4 0", "missing2.mp4 1"])
    cfg = make_cfg("kinetics", tmp_path, DATA_LOADER__NUM_RETRIES=3)
    ds = build_dataset("kinetics", cfg, "train")
    with pytest.raises(RuntimeError, match=r"4 training file\(s\) in a row"):
        ds[0]
