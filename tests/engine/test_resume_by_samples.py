"""A mid-epoch resume continues at the sample where the run stopped, whatever the new batch size or the
new number of processes: nothing of the epoch is trained twice, nothing is left out (but the incomplete
last batch every epoch drops)."""

import collections
import shutil
import signal

import pytest
import torch

from revvit.config import get_cfg, merge_opts
from revvit.datasets import construct_loader, shuffle_dataset
from revvit.datasets.samplers import EpochDistributedSampler
from revvit.engine import cli, resume
from revvit.engine import train as train_module
from revvit.utils import checkpoint as cu
from revvit.utils import distributed as du

from helpers import COMMON, REV_VIT
from tinyrun import make_images

TRAIN_IMAGES = 24  # make_images: 8 per class, 3 classes


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(str(tmp_path_factory.mktemp("images")))


def _args(data, out, batch):
    return ["--cfg", "configs/ImageNet/REV_VIT_S.yaml", *REV_VIT, *COMMON, "MODEL.NUM_CLASSES", "3", "DATA.PATH_TO_DATA_DIR",
            str(data), "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "1", "SOLVER.WARMUP_EPOCHS", "0.5", "TRAIN.EVAL_PERIOD", "0",
            "TEST.ENABLE", "False", "TRAIN.BATCH_SIZE", str(batch)]


def _recording(mp):
    """The sample indices of every training batch, in order."""
    seen = []
    real = train_module.to_device

    def to_device(batch, device):
        seen.append(batch[2].tolist())
        return real(batch, device)

    mp.setattr(train_module, "to_device", to_device)
    return seen


@pytest.fixture(scope="module")
def stopped(images, tmp_path_factory):
    """A run of batch 4 stopped by SIGTERM after 2 of its 6 iterations: its folder and the indices it trained."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    with pytest.MonkeyPatch.context() as mp:
        seen = _recording(mp)
        real_step, calls = train_module.train_step, []

        def step(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                # The vote rides in this step's stats, which the loop reads once the next step is queued:
                # the run stops after step 2.
                signal.raise_signal(signal.SIGTERM)
            return real_step(*args, **kwargs)

        mp.setattr(train_module, "train_step", step)
        try:
            assert cli.main(_args(images, out, 4)) == 128 + signal.SIGTERM
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
    return out, seen


# batch 2: the 8 samples done are 4 whole batches; batch 3: 8 = 2 x 3 + 2, so the epoch goes on from
# sample 8 in batches of 3: 16 left, 5 full batches, the last sample dropped as every epoch's remainder is.
@pytest.mark.parametrize("batch, batches_left", [(2, 8), (3, 5)])
def test_a_resume_with_another_batch_size_continues_at_the_same_sample(stopped, images, tmp_path, monkeypatch, batch, batches_left):
    first_out, first_seen = stopped
    mid = torch.load(cu.latest_checkpoint(str(first_out)), weights_only=True)
    assert mid["iteration"] == 2 and mid["resume_state"]["samples"] == 2 * 4

    out = tmp_path / "run"
    shutil.copytree(first_out, out)
    seen = _recording(monkeypatch)
    assert cli.main(_args(images, out, batch)) == 0
    assert [len(b) for b in seen] == [batch] * batches_left
    trained = collections.Counter(i for b in first_seen + seen for i in b)
    assert max(trained.values()) == 1  # no sample twice (before: 2 iterations of the new batch skipped, 4 - 2 x 2 twice)
    assert len(trained) == TRAIN_IMAGES - (TRAIN_IMAGES - 8) % batch
    log = (out / "stdout.log").read_text()
    assert "8 samples of the epoch trained" in log
    assert "The config differs from the one" in log and f"TRAIN.BATCH_SIZE 4 -> {batch}" in log
    if batch == 3:  # 8 iterations of 3 per epoch, the last 5 of them left
        assert "the epoch continues with the next sample at iteration 4 of 8" in log


def test_a_batch_larger_than_what_is_left_of_the_epoch_is_refused(stopped, images, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(stopped[0], out)
    assert cli.main(_args(images, out, 24)) == 1  # 16 samples left, a batch of 24
    err = capsys.readouterr().err
    assert err.startswith("run_net.py: error: The mid-epoch checkpoint of epoch 1 leaves 16 of its samples, not one full "
                          "batch of 24 for each of 1 process(es) (TRAIN.BATCH_SIZE)") and err.count("\n") == 1


def _loader(images, batch):
    cfg = get_cfg()
    merge_opts(cfg, REV_VIT + COMMON + ["MODEL.NUM_CLASSES", "3", "DATA.PATH_TO_DATA_DIR", images, "TRAIN.BATCH_SIZE", str(batch)])
    return construct_loader(cfg, "train")


def _indices(batches):
    return [i for b in batches for i in b[2].tolist()]


def test_a_one_process_record_resumed_by_two_processes_deals_the_rest_between_them(images, monkeypatch):
    loader = _loader(images, 2)
    shuffle_dataset(loader, 1)
    order = [i for _, i in loader.sampler]  # what one process trains, in order
    record = resume.capture(samples=6)  # 6 samples of epoch 2 done by one process
    monkeypatch.setattr(du, "get_world_size", lambda: 2)
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(du, "get_rank", lambda rank=rank: rank)
        shuffle_dataset(loader, 1)
        assert resume.first_iteration(loader, record) == len(loader) - 9 // 2  # 18 left, 9 each, 4 batches of 2
        with resume.positioned(loader, iter, 3, record) as it:
            shares.append(_indices(it))
    assert shares[0] == order[6::2][:8] and shares[1] == order[7::2][:8]  # dealt round-robin from sample 6


def test_a_two_process_record_resumed_by_one_process_takes_the_rest_of_their_order(images):
    loader = _loader(images, 4)
    cfg_seed = loader.sampler.seed
    # What two processes train in epoch 2: rank r its share of DistributedSampler's order; 2 steps of 2 each.
    shares = []
    for rank in (0, 1):
        sampler = EpochDistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=cfg_seed)
        sampler.set_epoch(1)
        shares.append([i for _, i in sampler])
    done = shares[0][:4] + shares[1][:4]
    record = {"world_size": 2, "rng": [], "samples": 8, "order_world_size": 2}
    shuffle_dataset(loader, 1)
    with resume.positioned(loader, iter, 2, record) as it:
        rest = _indices(it)
    assert sorted(done + rest) == list(range(TRAIN_IMAGES))  # every sample once
    assert rest == [i for pair in zip(shares[0][4:], shares[1][4:]) for i in pair]  # in the order the two would have
