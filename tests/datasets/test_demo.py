import json
import os
import types

import numpy as np
import pytest
import torch
from PIL import Image

from revvit.config import get_cfg, load_config
from revvit.datasets import build_dataset
from revvit.datasets.decoder import decode_clip
from revvit.datasets.demo import DIRECTIONS, build_moving_digits, demo_data_dir

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "Demo")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def demo_cfg(name, cache_dir):
    cfg = load_config(types.SimpleNamespace(cfg_file=os.path.join(CONFIGS, name), opts=["DATA.DEMO_CACHE_DIR", str(cache_dir)]))
    return cfg


def test_digits_demo_is_built_once_and_read_by_the_imagenet_data_set(cache):
    cfg = demo_cfg("REV_VIT_DIGITS.yaml", cache)
    assert cfg.DATA.DEMO == "digits" and cfg.TRAIN.DATASET == cfg.TEST.DATASET == "imagenet"
    root = demo_data_dir("digits", str(cache), "imagenet")
    manifest = json.load(open(os.path.join(root, "manifest.json")))
    assert manifest["images"] == {"train": 1078, "val": 359, "test": 360}  # all 1797 scikit-learn digits
    stamp = os.path.getmtime(os.path.join(root, "manifest.json"))
    assert demo_data_dir("digits", str(cache), "imagenet") == root
    assert os.path.getmtime(os.path.join(root, "manifest.json")) == stamp  # not rebuilt
    image = Image.open(os.path.join(root, "train", "7", sorted(os.listdir(os.path.join(root, "train", "7")))[0]))
    assert image.size == (32, 32) and image.mode == "RGB"

    train, test = build_dataset("imagenet", cfg, "train"), build_dataset("imagenet", cfg, "test")
    assert train.classes == [str(d) for d in range(10)] and len(train) == 1078
    assert test.split_dir.endswith("test") and len(test) == 360
    x, label, _, _ = test[0]
    assert tuple(x.shape) == (3, 32, 32) and 0 <= label < 10


def test_moving_digits_move_in_the_direction_of_their_label(tmp_path):
    build_moving_digits(str(tmp_path), videos_per_split={"train": 8, "val": 4, "test": 4})
    rows = [line.rsplit(" ", 1) for line in open(tmp_path / "train.csv").read().splitlines()]
    assert len(rows) == 8 and sorted({int(label) for _, label in rows}) == [0, 1, 2, 3]
    for path, label in rows:
        clip, _ = decode_clip(tmp_path / path, num_frames=2, sampling_rate=19, target_fps=30, start_fraction=0.0)
        assert tuple(clip.shape) == (2, 32, 32, 3)
        # Centre of mass of the bright digit in the first and the last frame.
        weights = clip.float().mean(-1).clamp(min=100) - 100
        grid = torch.arange(32.0)
        ys = (weights.sum(2) * grid).sum(1) / weights.sum((1, 2))
        xs = (weights.sum(1) * grid).sum(1) / weights.sum((1, 2))
        dy, dx = float(ys[1] - ys[0]), float(xs[1] - xs[0])
        direction = DIRECTIONS[int(label)]
        moved = {"right": dx, "left": -dx, "down": dy, "up": -dy}
        assert moved[direction] > 6 and all(abs(v) < 3 for k, v in moved.items() if k not in (direction,) and
                                            {k, direction} not in ({"left", "right"}, {"up", "down"})), (direction, dx, dy)


def test_demo_video_config_reads_the_moving_digits_through_kinetics(tmp_path):
    build_moving_digits(str(tmp_path), videos_per_split={"train": 4, "val": 4, "test": 4})
    cfg = demo_cfg("REV_MVIT_MOVING_DIGITS.yaml", tmp_path)
    assert cfg.DATA.DEMO == "moving_digits" and cfg.TRAIN.DATASET == "kinetics" and not cfg.DATA.RANDOM_FLIP
    cfg.defrost()
    cfg.DATA.DEMO, cfg.DATA.PATH_TO_DATA_DIR = "", str(tmp_path)  # the same files, without building 1400
    ds = build_dataset("kinetics", cfg, "test")
    assert len(ds) == 4 * cfg.TEST.NUM_ENSEMBLE_VIEWS
    x = ds[0][0]
    assert tuple(x.shape) == (3, cfg.DATA.NUM_FRAMES, 32, 32) and x.dtype == torch.float32


def test_demo_selection_errors_name_the_keys(tmp_path):
    cfg = get_cfg()
    cfg.DATA.DEMO, cfg.DATA.DEMO_CACHE_DIR = "digits", str(tmp_path)
    cfg.DATA.PATH_TO_DATA_DIR = "/data/imagenet"
    with pytest.raises(ValueError, match="DATA.DEMO 'digits' and DATA.PATH_TO_DATA_DIR"):
        build_dataset("imagenet", cfg, "train")
    cfg.DATA.PATH_TO_DATA_DIR = ""
    with pytest.raises(ValueError, match="read by the 'imagenet' data set"):
        build_dataset("kinetics", cfg, "train")
    cfg.DATA.DEMO = "mnist"
    with pytest.raises(ValueError, match="not a demo set"):
        build_dataset("imagenet", cfg, "train")


def test_a_lost_build_race_uses_the_winners_copy(tmp_path, monkeypatch):
    from revvit.datasets import demo

    calls = []

    def slow_builder(root):
        # Another process finishes first while this one is still building.
        calls.append(root)
        winner = os.path.join(str(tmp_path), "demo", "digits-v1")
        os.makedirs(winner)
        json.dump({"name": "digits"}, open(os.path.join(winner, "manifest.json"), "w"))
        return {}

    monkeypatch.setitem(demo.DEMO_SETS, "digits", ("imagenet", slow_builder, 1))
    root = demo_data_dir("digits", str(tmp_path))
    assert root.endswith("digits-v1") and len(calls) == 1
    assert json.load(open(os.path.join(root, "manifest.json"))) == {"name": "digits"}
    assert os.listdir(os.path.join(str(tmp_path), "demo")) == ["digits-v1"]  # no temp dir left behind


def test_demo_configs_build_their_models(tmp_path):
    from revvit.models import build_model

    for name in ("REV_VIT_DIGITS.yaml", "REV_MVIT_MOVING_DIGITS.yaml"):
        cfg = demo_cfg(name, tmp_path)
        model = build_model(cfg).train()
        size = cfg.DATA.TRAIN_CROP_SIZE
        shape = (2, 3, size, size) if cfg.MVIT.PATCH_2D else (2, 3, cfg.DATA.NUM_FRAMES, size, size)
        out = model([torch.randn(shape)])
        assert tuple(out.shape) == (2, cfg.MODEL.NUM_CLASSES) and bool(np.isfinite(out.detach().numpy()).all())
