"""Per-sample seeding (seeding.py, samplers.py): an epoch's training batches are a function of
(RNG_SEED, epoch) alone, whatever the number of loader workers, and persistent workers still get
each epoch's order."""

import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from dataset_media import make_cfg
from revvit.datasets import construct_loader, shuffle_dataset
from revvit.utils.seeding import sample_seed, seed_of, seeded


@pytest.fixture(scope="module")
def textured_dir(tmp_path_factory):
    """11 JPEGs of random texture (any crop, flip or erasing changes their pixels) in 3 classes, and a
    truncated one: 12 training samples, 3 batches of 4, so every epoch meets the bad file once."""
    root = tmp_path_factory.mktemp("textured")
    rng = np.random.RandomState(0)
    for name in ("ant", "cat", "dog"):
        os.makedirs(root / "train" / name)
        for n in range(4):
            Image.fromarray(rng.randint(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "train" / name / f"{n}.jpg", quality=95)
    data = (root / "train" / "ant" / "3.jpg").read_bytes()
    (root / "train" / "ant" / "3.jpg").write_bytes(data[: len(data) // 3])
    return root


def recipe(data_dir, **overrides):
    """The full worker recipe: random-resized crop, flip, RandAugment, random erasing (pixel noise), Mixup / CutMix."""
    settings = dict(TRAIN__BATCH_SIZE=4, AUG__ENABLE=True, AUG__RE_PROB=0.5, MIXUP__ENABLE=True, RNG_SEED=7)
    return make_cfg("imagenet", data_dir, **{**settings, **overrides})


def epoch_batches(cfg, epoch, loader=None):
    """``(inputs, labels, index, skipped)`` of every batch of ``epoch``."""
    loader = loader or construct_loader(cfg, "train")
    shuffle_dataset(loader, epoch)
    return [(b[0][0], b[1], b[2], b[3]["skipped"]) for b in loader]


def identical(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))


def test_an_epoch_is_pixel_for_pixel_the_same_with_0_1_and_2_workers(textured_dir):
    runs = {w: epoch_batches(recipe(textured_dir, DATA_LOADER__NUM_WORKERS=w), 1) for w in (0, 1, 2)}
    assert len(runs[0]) == 3 and tuple(runs[0][0][0].shape) == (4, 3, 32, 32)
    assert sum(int(b[3].sum()) for b in runs[0]) == 1  # the truncated file, replaced by a drawn substitute
    # Mixed: soft targets below a lone label's 1 - 0.1 + 0.1 / 3 (label smoothing 0.1), so Mixup's draws are compared too.
    assert all(float(b[1].max(1).values.min()) < 0.9 + 0.1 / 3 - 1e-3 for b in runs[0])
    assert identical(runs[0], runs[1]) and identical(runs[0], runs[2])


def test_a_sample_gets_other_draws_in_another_epoch_and_the_same_in_a_rerun(textured_dir):
    cfg = recipe(textured_dir, MIXUP__ENABLE=False, DATA_LOADER__NUM_WORKERS=2)

    def by_sample(epoch):
        return {int(i): x for b in epoch_batches(cfg, epoch) for x, i, s in zip(b[0], b[2], b[3]) if s == 0}

    one, two = by_sample(1), by_sample(2)
    assert len(one) >= 10 and one.keys() == two.keys()
    assert all(not torch.equal(one[i], two[i]) for i in one)
    again = by_sample(1)
    assert all(torch.equal(one[i], again[i]) for i in one)


def test_persistent_workers_get_each_epoch_s_order(textured_dir, imagenet_dir):
    evaluation = make_cfg("imagenet", imagenet_dir, DATA_LOADER__NUM_WORKERS=1)
    assert construct_loader(evaluation, "val").persistent_workers and construct_loader(evaluation, "test").persistent_workers
    cfg = recipe(textured_dir, DATA_LOADER__NUM_WORKERS=2)
    loader = construct_loader(cfg, "train")
    assert loader.persistent_workers
    first = epoch_batches(cfg, 1, loader)
    workers = [w.pid for w in loader._iterator._workers]
    second = epoch_batches(cfg, 2, loader)
    assert [w.pid for w in loader._iterator._workers] == workers  # the same processes served both epochs

    def order(batches):
        return [i for b in batches for i in b[2].tolist()]

    assert order(first) != order(second)
    assert identical(second, epoch_batches(cfg, 2))  # what a loader started at epoch 2 reads
    assert identical(first, epoch_batches(cfg, 1, loader))  # and back: nothing carried over


def test_without_workers_reading_leaves_the_training_generators_alone(textured_dir):
    cfg = recipe(textured_dir)
    loader = construct_loader(cfg, "train")
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    before = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    epoch_batches(cfg, 1, loader)
    assert random.getstate() == before[0]
    assert np.array_equal(np.random.get_state()[1], before[1]) and torch.equal(torch.get_rng_state(), before[2])


def test_clips_are_the_same_with_and_without_workers(kinetics_dir):
    """Videos: the clip's start (gray ramp: the level tells the frame), crop, flip, RandAugment, erasing."""
    settings = dict(TRAIN__BATCH_SIZE=2, AUG__ENABLE=True, AUG__RE_PROB=0.5)
    cfg = make_cfg("kinetics", kinetics_dir, **settings)
    none = epoch_batches(cfg, 3)
    two = epoch_batches(make_cfg("kinetics", kinetics_dir, DATA_LOADER__NUM_WORKERS=2, **settings), 3)
    assert len(none) == 3 and identical(none, two)
    other = {int(i): x for b in epoch_batches(cfg, 4) for x, i in zip(b[0], b[2])}
    same = {int(i): x for b in none for x, i in zip(b[0], b[2])}
    assert all(not torch.equal(same[i], other[i]) for i in same)


def test_seeds_are_a_function_of_the_key_and_seeded_restores_the_generators():
    assert sample_seed(7, 1, 5) == sample_seed(7, 1, 5) == seed_of(7, 1, 5, 16)
    assert len({sample_seed(7, e, i) for e in range(3) for i in range(100)}) == 300
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with seeded(sample_seed(7, 1, 5)):
        a = torch.rand(3), random.random(), np.random.rand()
    with seeded(sample_seed(7, 1, 5)):
        b = torch.rand(3), random.random(), np.random.rand()
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:] and torch.equal(torch.get_rng_state(), state)
