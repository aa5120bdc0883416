"""Tiny ImageNet- and Kinetics-layout data sets made by the tests themselves (PIL JPEGs, PyAV mp4s)."""

import os
import sys

import pytest
from PIL import Image

# Tests run with --import-mode=importlib, which does not put test folders on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dataset_media import gray_ramp_video  # noqa: E402


@pytest.fixture(scope="session")
def kinetics_dir(tmp_path_factory):
    """Six good videos (one in a folder with spaces), listed in train/val/test CSVs."""
    root = tmp_path_factory.mktemp("kinetics")
    os.makedirs(root / "clips" / "with space")
    names = []
    for i in range(6):
        rel = f"clips/with space/v {i}.mp4" if i == 0 else f"clips/v{i}.mp4"
        gray_ramp_video(root / rel)
        names.append(rel)
    for split in ("train", "val", "test"):
        with open(root / f"{split}.csv", "w") as f:
            for i, rel in enumerate(names):
                f.write(f"{rel} {i % 3}\n")
    return root


@pytest.fixture(scope="session")
def imagenet_dir(tmp_path_factory):
    """Classes ant/cat/dog in train, cat/dog in val; images of class c have red level 80 * c."""
    root = tmp_path_factory.mktemp("imagenet")
    for split, classes in (("train", ("dog", "ant", "cat")), ("val", ("dog", "cat"))):
        for name in classes:
            folder = root / split / name
            os.makedirs(folder)
            level = 80 * sorted(("ant", "cat", "dog")).index(name)
            for n in range(4):
                Image.new("RGB", (50, 40), (level, 20 * n, 0)).save(folder / f"{n}.jpg", quality=95)
            (folder / "notes.txt").write_text("not an image")
    return root
