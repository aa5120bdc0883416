import os
import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dataset_media import make_cfg
from revvit.datasets import BadSampleCounter, DataLayoutError, build_dataset, construct_loader


def red_level(image, mean=0.5, std=0.25):
    """Mean red value (0..255) of a normalised [3, H, W] image."""
    return float((image[0].mean() * std + mean) * 255)


def test_classes_are_sorted_train_folders_and_val_uses_the_same_map(imagenet_dir):
    cfg = make_cfg("imagenet", imagenet_dir)
    train = build_dataset("imagenet", cfg, "train")
    val = build_dataset("imagenet", cfg, "val")
    assert train.classes == val.classes == ["ant", "cat", "dog"]
    assert len(train) == 12 and len(val) == 8  # notes.txt files are not images
    # val has no "ant" folder, yet cat stays 1 and dog stays 2.
    assert sorted({val.label(i) for i in range(len(val))}) == [1, 2]
    for i in range(len(val)):
        image, label, index, meta = val[i]
        assert image.dtype == torch.float32 and tuple(image.shape) == (3, 32, 32)
        assert index == i and meta == {"skipped": 0, "skipped_paths": [], "valid": True}
        assert abs(red_level(image) - 80 * label) < 6  # the pixels are those of the labelled class


def test_train_recipe_shapes_and_randomness(imagenet_dir):
    cfg = make_cfg("imagenet", imagenet_dir, AUG__ENABLE=True, AUG__AA_TYPE="rand-m9-mstd0.5-inc1", AUG__RE_PROB=0.5)
    ds = build_dataset("imagenet", cfg, "train")
    random.seed(0)
    np.random.seed(0)  # timm's RandAugment picks its operations with numpy
    torch.manual_seed(0)
    a, b = ds[5][0], ds[5][0]
    assert tuple(a.shape) == (3, 32, 32) and a.dtype == torch.float32 and not torch.equal(a, b)
    val = build_dataset("imagenet", cfg, "val")
    assert torch.equal(val[3][0], val[3][0])


def test_test_split_reads_val_unless_a_test_folder_exists(imagenet_dir, tmp_path):
    cfg = make_cfg("imagenet", imagenet_dir)
    assert build_dataset("imagenet", cfg, "test").split_dir.endswith("val")
    root = tmp_path / "in"
    shutil.copytree(imagenet_dir, root)
    shutil.copytree(root / "val" / "cat", root / "test" / "cat")
    ds = build_dataset("imagenet", make_cfg("imagenet", root), "test")
    assert ds.split_dir.endswith("test") and len(ds) == 4 and ds.label(0) == 1


def test_bad_images_are_skipped_in_training_and_marked_in_evaluation(imagenet_dir, tmp_path):
    root = tmp_path / "in"
    shutil.copytree(imagenet_dir, root)
    good = (root / "train" / "ant" / "0.jpg").read_bytes()
    (root / "train" / "ant" / "broken.jpg").write_bytes(good[: len(good) // 3])
    (root / "train" / "cat" / "empty.jpg").write_bytes(b"")
    (root / "val" / "dog" / "broken.jpg").write_bytes(good[: len(good) // 3])
    cfg = make_cfg("imagenet", root, TRAIN__BATCH_SIZE=7, TEST__BATCH_SIZE=4, DATA_LOADER__NUM_WORKERS=2)
    counter = BadSampleCounter()
    for x, labels, index, meta in construct_loader(cfg, "train"):
        counter.update(meta)
        assert bool(meta["valid"].all())
    assert counter.count >= 2 and {os.path.basename(p) for p in counter.paths} == {"broken.jpg", "empty.jpg"}

    val = construct_loader(cfg, "val")
    counter.reset()
    rows = []
    for x, labels, index, meta in val:
        counter.update(meta)
        rows += [(int(i), bool(v)) for i, v in zip(index, meta["valid"])]
    broken = [i for i in range(len(val.dataset)) if val.dataset._samples[i][0].endswith("broken.jpg")]
    assert counter.count == 1 and [i for i, ok in rows if not ok] == broken


def test_missing_or_wrong_layout_fails_at_start(tmp_path):
    with pytest.raises(DataLayoutError, match="nowhere.*PATH_TO_DATA_DIR.*train/<class>/<image>"):
        build_dataset("imagenet", make_cfg("imagenet", tmp_path / "nowhere"), "train")
    os.makedirs(tmp_path / "train" / "a")
    with pytest.raises(DataLayoutError, match="No images"):
        build_dataset("imagenet", make_cfg("imagenet", tmp_path), "train")
    for name in ("a", "b", "c", "d"):
        os.makedirs(tmp_path / "train" / name, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / name / "x.png")
    with pytest.raises(DataLayoutError, match="4 class folders.*MODEL.NUM_CLASSES is 3; set MODEL.NUM_CLASSES 4"):
        build_dataset("imagenet", make_cfg("imagenet", tmp_path), "train")
    with pytest.raises(DataLayoutError, match="val"):
        build_dataset("imagenet", make_cfg("imagenet", tmp_path, MODEL__NUM_CLASSES=4), "val")
    with pytest.raises(DataLayoutError, match="PATH_TO_DATA_DIR is empty"):
        build_dataset("imagenet", make_cfg("imagenet", ""), "train")
