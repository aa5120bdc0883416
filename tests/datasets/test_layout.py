"""check_layout(cfg, split): what the data on disk lacks, found before training, with the path and the fix."""

import os

import numpy as np
import pytest
from PIL import Image

from dataset_media import make_cfg
from revvit.datasets import DataLayoutError, check_layout
from revvit.datasets.demo import demo_data_dir


def _image(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


@pytest.fixture
def images(tmp_path):
    for split in ("train", "val"):
        for name in ("a", "b", "c"):
            _image(str(tmp_path / split / name / "0.png"))
    return tmp_path


def test_a_good_image_layout_passes_every_split(images):
    cfg = make_cfg("imagenet", images)
    for split in ("train", "val", "test"):  # test reads val/ when there is no test/
        check_layout(cfg, split)


def test_missing_image_data_directory_names_the_key(tmp_path):
    cfg = make_cfg("imagenet", tmp_path / "nowhere")
    with pytest.raises(DataLayoutError, match=rf"not found: {tmp_path / 'nowhere'} \(DATA.PATH_TO_DATA_DIR\).*Set DATA.PATH_TO_DATA_DIR"):
        check_layout(cfg, "train")


def test_empty_image_split_is_found_before_training(images):
    for name in ("a", "b", "c"):
        os.remove(images / "val" / name / "0.png")
    cfg = make_cfg("imagenet", images)
    check_layout(cfg, "train")
    with pytest.raises(DataLayoutError, match=rf"No images .* in the class folders of {images / 'val'}: the split is empty"):
        check_layout(cfg, "test")


def test_more_class_folders_than_classes_names_the_key_and_count(images):
    _image(str(images / "train" / "d" / "0.png"))
    cfg = make_cfg("imagenet", images)  # MODEL.NUM_CLASSES 3
    with pytest.raises(DataLayoutError, match="4 class folders in .*train but MODEL.NUM_CLASSES is 3; set MODEL.NUM_CLASSES 4"):
        check_layout(cfg, "train")


def test_val_class_unknown_to_training_is_named(images):
    _image(str(images / "val" / "zebra" / "0.png"))
    with pytest.raises(DataLayoutError, match=r"Class folders \['zebra'\] of .*val do not exist in .*train"):
        check_layout(make_cfg("imagenet", images), "val")


@pytest.fixture
def csvs(tmp_path):
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.csv").write_text("videos/a.mp4 0\nvideos/b.mp4 2\n")
    return tmp_path


def test_a_good_video_layout_passes_every_split(csvs):
    # Only the lists are read: the videos themselves are checked as they are decoded (bad samples).
    cfg = make_cfg("kinetics", csvs)
    for split in ("train", "val", "test"):
        check_layout(cfg, split)


def test_missing_video_data_directory_names_the_key(tmp_path):
    with pytest.raises(DataLayoutError, match=r"Kinetics data directory not found: .*nowhere \(DATA.PATH_TO_DATA_DIR\)"):
        check_layout(make_cfg("kinetics", tmp_path / "nowhere"), "train")


def test_missing_split_file_is_named(csvs):
    os.remove(csvs / "val.csv")
    with pytest.raises(DataLayoutError, match=rf"Kinetics split file not found: {csvs / 'val.csv'}"):
        check_layout(make_cfg("kinetics", csvs), "val")


def test_empty_test_csv_is_found_before_training(csvs):
    (csvs / "test.csv").write_text("\n")
    with pytest.raises(DataLayoutError, match=rf"{csvs / 'test.csv'} is empty: the split has no video"):
        check_layout(make_cfg("kinetics", csvs), "test")


def test_a_csv_with_a_header_or_another_separator_names_the_first_bad_line(csvs):
    # The official Kinetics annotation files: a header and comma-separated columns.
    (csvs / "train.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,0347ZoDXyP0,14,24,train\n")
    with pytest.raises(DataLayoutError) as err:
        check_layout(make_cfg("kinetics", csvs), "train")
    message = str(err.value)
    assert f"No usable line in {csvs / 'train.csv'} (2 bad lines; line 1 'label,youtube_id,time_start,time_end,split': " in message
    assert "no ' ' between path and label" in message and "DATA.PATH_LABEL_SEPARATOR, now ' '" in message


def test_labels_outside_the_classes_make_a_split_unusable(csvs):
    (csvs / "train.csv").write_text("videos/a.mp4 7\n")
    with pytest.raises(DataLayoutError, match=r"line 1 'videos/a.mp4 7': label 7 outside \[0, 3\) \(MODEL.NUM_CLASSES\)"):
        check_layout(make_cfg("kinetics", csvs), "train")


def test_demo_sets_are_built_by_the_check_then_checked(tmp_path):
    cfg = make_cfg("imagenet", "", DATA__DEMO="digits", DATA__DEMO_CACHE_DIR=str(tmp_path), MODEL__NUM_CLASSES=10)
    for split in ("train", "val", "test"):
        check_layout(cfg, split)
    assert os.path.isfile(os.path.join(demo_data_dir("digits", str(tmp_path)), "manifest.json"))
    cfg.MODEL.NUM_CLASSES = 5
    with pytest.raises(DataLayoutError, match="10 class folders .* MODEL.NUM_CLASSES is 5"):
        check_layout(cfg, "train")


def test_empty_training_class_folder_is_refused_before_training(images):
    os.remove(images / "train" / "b" / "0.png")
    (images / "train" / "b" / "notes.txt").write_text("not an image")
    cfg = make_cfg("imagenet", images)
    with pytest.raises(DataLayoutError, match=rf"1 training class folder\(s\) hold no images .*: {images / 'train' / 'b'}\. Put"):
        check_layout(cfg, "train")
    os.remove(images / "val" / "c" / "0.png")  # a val class without images only leaves it out of evaluation
    check_layout(cfg, "val")


def test_hidden_folders_are_no_classes_and_class_subfolders_are_read(images):
    from revvit.datasets import build_dataset

    _image(str(images / "train" / ".ipynb_checkpoints" / "0.png"))
    _image(str(images / "train" / "c" / "more" / "1.png"))
    train = build_dataset("imagenet", make_cfg("imagenet", images), "train")
    assert train.classes == ["a", "b", "c"]
    assert [(os.path.relpath(p, images / "train"), label) for p, label in train._samples] == [
        ("a/0.png", 0), ("b/0.png", 1), ("c/0.png", 2), ("c/more/1.png", 2)
    ]
