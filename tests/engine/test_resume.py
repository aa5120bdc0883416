"""resume.positioned: a run resumed mid-epoch reads only the rest of the epoch, with or without
(persistent) loader workers, and gets the batches and the RNG state an uninterrupted epoch has there."""

import multiprocessing

import pytest
import torch

from revvit.config import get_cfg, merge_opts
from revvit.datasets import construct_loader, shuffle_dataset
from revvit.datasets.imagenet import Imagenet
from revvit.engine import resume

from helpers import COMMON, REV_VIT
from tinyrun import make_images


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(str(tmp_path_factory.mktemp("images")))  # 24 training images


def _loader(images, workers):
    cfg = get_cfg()
    merge_opts(cfg, REV_VIT + COMMON + [
        "MODEL.NUM_CLASSES", "3", "DATA.PATH_TO_DATA_DIR", images, "AUG.ENABLE", "True", "MIXUP.ENABLE", "True",
        "TRAIN.BATCH_SIZE", "4", "DATA_LOADER.NUM_WORKERS", str(workers),
    ])
    return construct_loader(cfg, "train")


def _identical(a, b):
    return len(a) == len(b) and all(torch.equal(x[0][0], y[0][0]) and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2]) for x, y in zip(a, b))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_mid_epoch_position_reads_only_the_rest_of_the_epoch(images, workers, monkeypatch):
    reads = multiprocessing.Value("i", 0)  # shared with the (forked) workers
    real = Imagenet.__getitem__

    def counted(self, key):
        with reads.get_lock():
            reads.value += 1
        return real(self, key)

    monkeypatch.setattr(Imagenet, "__getitem__", counted)
    loader = _loader(images, workers)
    shuffle_dataset(loader, 1)
    full = list(loader)  # 6 batches of 4 (with workers: the persistent workers' first epoch)
    torch.manual_seed(11)
    state = resume.capture()
    at_the_boundary = torch.get_rng_state()
    torch.rand(5)  # the resumed process's generator starts elsewhere
    reads.value = 0

    shuffle_dataset(loader, 1)
    with resume.positioned(loader, iter, 2, state) as it:
        assert torch.equal(torch.get_rng_state(), at_the_boundary)
        rest = list(it)
    assert reads.value == 4 * 4  # the 2 batches already trained on were not read again
    assert _identical(rest, full[2:])  # pixels, Mixup's soft targets and order
    assert torch.equal(torch.get_rng_state(), at_the_boundary)  # reading drew nothing from it
    shuffle_dataset(loader, 1)
    assert _identical(list(loader), full)  # the loader is whole again
