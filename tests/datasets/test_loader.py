import pytest
import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch.utils.data import DistributedSampler

from dataset_media import make_cfg
from revvit.config import ConfigError, validate_cfg
from revvit.datasets import DataLayoutError, construct_loader, drop_invalid, mixup_active, shuffle_dataset
from revvit.utils import distributed as du
from revvit.datasets.loader import BatchCollator


def test_batch_format_and_per_process_batch(imagenet_dir):
    cfg = make_cfg("imagenet", imagenet_dir, TRAIN__BATCH_SIZE=8, NUM_GPUS=2)
    loader = construct_loader(cfg, "train")
    batches = list(loader)
    assert len(batches) == 3  # 12 images, 8 // 2 GPUs = 4 per process, drop_last
    inputs, labels, index, meta = batches[0]
    assert isinstance(inputs, list) and len(inputs) == 1 and tuple(inputs[0].shape) == (4, 3, 32, 32)
    assert labels.dtype == index.dtype == torch.int64 and labels.shape == index.shape == (4,)
    assert meta["skipped"].tolist() == [0] * 4 and meta["valid"].all() and meta["skipped_paths"] == []
    # Every sample exactly once per epoch.
    assert sorted(i for b in batches for i in b[2].tolist()) == list(range(12))
    val = list(construct_loader(cfg, "val"))
    assert [len(b[2]) for b in val] == [4, 4]


def test_sample_order_is_a_function_of_seed_and_epoch(imagenet_dir):
    cfg = make_cfg("imagenet", imagenet_dir, TRAIN__BATCH_SIZE=4)

    def order(epoch):
        loader = construct_loader(cfg, "train")
        shuffle_dataset(loader, epoch)
        return [i for b in loader for i in b[2].tolist()]

    assert order(3) == order(3) and order(3) != order(4)


def test_mixup_makes_soft_targets_for_the_trainer(imagenet_dir):
    cfg = make_cfg("imagenet", imagenet_dir, TRAIN__BATCH_SIZE=4, MIXUP__ENABLE=True)
    assert mixup_active(cfg)
    inputs, targets, index, _ = next(iter(construct_loader(cfg, "train")))
    assert targets.dtype == torch.float32 and tuple(targets.shape) == (4, 3)
    assert torch.allclose(targets.sum(1), torch.ones(4))
    # Label smoothing 0.1 over 3 classes: no target reaches 1 and none falls below 0.1 / 3.
    assert float(targets.max()) < 1.0 and float(targets.min()) >= 0.1 / 3 - 1e-6
    loss = SoftTargetCrossEntropy()(torch.zeros(4, 3), targets)
    assert abs(float(loss) - torch.log(torch.tensor(3.0))) < 1e-5
    # Evaluation batches keep hard labels.
    assert next(iter(construct_loader(cfg, "val")))[1].dtype == torch.int64


def test_mixup_needs_an_even_batch(imagenet_dir):
    cfg = make_cfg("imagenet", imagenet_dir, TRAIN__BATCH_SIZE=3, MIXUP__ENABLE=True)
    with pytest.raises(ConfigError, match=r"even; it is 3 \(TRAIN.BATCH_SIZE 3 // NUM_GPUS 1\) x AUG.NUM_SAMPLE 1"):
        validate_cfg(cfg)
    cfg.AUG.NUM_SAMPLE = 2  # 3 images x 2 copies = 6 rows: fine
    assert tuple(next(iter(construct_loader(cfg, "train")))[1].shape) == (6, 3)


def test_cutmix_on_clips_cuts_the_same_box_in_every_frame():
    torch.manual_seed(0)
    import numpy as np

    np.random.seed(0)
    clips = [torch.zeros(3, 4, 16, 16), torch.ones(3, 4, 16, 16)]
    items = [(c, i, i, {"skipped": 0, "skipped_paths": [], "valid": True}) for i, c in enumerate(clips)]
    mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=2)
    (x,), targets, _, _ = BatchCollator(mixup)(items)
    pasted = x[0, 0] == 1  # where clip 1 was pasted into clip 0, per frame [T, H, W]
    assert pasted.any() and not pasted.all()
    assert all(torch.equal(pasted[t], pasted[0]) for t in range(4))
    rows, cols = pasted[0].any(1).nonzero().flatten(), pasted[0].any(0).nonzero().flatten()
    box = torch.zeros(16, 16, dtype=torch.bool)
    box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    assert torch.equal(pasted[0], box)  # a rectangle in H x W
    area = float(pasted[0].float().mean())
    assert torch.allclose(targets[0], torch.tensor([1 - area, area]))


def test_drop_invalid_keeps_the_readable_rows():
    meta = {"valid": torch.tensor([True, False, True]), "skipped": torch.tensor([0, 1, 0]), "skipped_paths": ["x"]}
    inputs, labels, index, out = drop_invalid([torch.arange(3.0)], torch.tensor([5, 6, 7]), torch.tensor([0, 1, 2]), meta)
    assert inputs[0].tolist() == [0.0, 2.0] and labels.tolist() == [5, 7] and index.tolist() == [0, 2]
    assert out["skipped"].tolist() == [0, 0] and out["skipped_paths"] == ["x"]


def test_one_process_group_member_reads_every_sample(imagenet_dir, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        cfg = make_cfg("imagenet", imagenet_dir, TRAIN__BATCH_SIZE=4, NUM_GPUS=1)
        sampler = construct_loader(cfg, "train").sampler
        assert (sampler.num_replicas, sampler.rank, len(sampler)) == (1, 0, 12)
    finally:
        dist.destroy_process_group()


def test_processes_split_the_data_with_a_distributed_sampler(imagenet_dir, monkeypatch):
    cfg = make_cfg("imagenet", imagenet_dir, TRAIN__BATCH_SIZE=4, NUM_GPUS=2)
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(du, "get_world_size", lambda: 2)
        monkeypatch.setattr(du, "get_rank", lambda rank=rank: rank)
        loader = construct_loader(cfg, "train")
        assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.shuffle
        shuffle_dataset(loader, 5)
        assert loader.sampler.epoch == 5
        seen.append([i for b in loader for i in b[2].tolist()])
        assert isinstance(construct_loader(cfg, "test").sampler, DistributedSampler)
    # 12 images, 2 per process-batch: 3 batches each, disjoint, covering everything.
    assert len(seen[0]) == len(seen[1]) == 6 and sorted(seen[0] + seen[1]) == list(range(12))


def test_one_process_visits_the_order_that_two_processes_deal_out(imagenet_dir, monkeypatch):
    """One permutation per (RNG_SEED, epoch), torch's DistributedSampler's, whatever the number of
    processes: rank r of 2 reads its positions r, r + 2, ... (12 samples, no padding)."""

    def order(world, rank):
        monkeypatch.setattr(du, "get_world_size", lambda: world)
        monkeypatch.setattr(du, "get_rank", lambda: rank)
        sampler = construct_loader(make_cfg("imagenet", imagenet_dir, TRAIN__BATCH_SIZE=2, RNG_SEED=5), "train").sampler
        sampler.set_epoch(3)
        return list(sampler)

    whole = order(1, 0)
    assert [epoch for epoch, _ in whole] == [3] * 12
    assert [key for pair in zip(order(2, 0), order(2, 1)) for key in pair] == whole
    # torch's seeding of the permutation: RNG_SEED + epoch.
    g = torch.Generator().manual_seed(5 + 3)
    assert [index for _, index in whole] == torch.randperm(12, generator=g).tolist()


def test_training_split_smaller_than_a_batch_fails_clearly(imagenet_dir):
    cfg = make_cfg("imagenet", imagenet_dir, TRAIN__BATCH_SIZE=64)
    with pytest.raises(DataLayoutError, match="fewer than one batch"):
        construct_loader(cfg, "train")
