"""evaluate.scores: MODEL.HEAD_ACT is applied by evaluation to the model's logits, exactly once."""

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from revvit.config import get_cfg, merge_opts
from revvit.datasets.loader import BatchCollator
from revvit.engine.evaluate import eval_epoch, predict_readable, scores
from revvit.utils.meters import ValMeter

from helpers import COMMON

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])


class _Logits(torch.nn.Module):
    """A model that gives fixed logits, as a timm model does, for a batch tensor."""

    def forward(self, x):
        assert torch.is_tensor(x)
        return LOGITS[: x.shape[0]]


def _cfg(act):
    cfg = get_cfg()
    cfg.MODEL.HEAD_ACT = act
    cfg.TRAIN.MIXED_PRECISION = False
    return cfg


def test_scores_apply_the_configured_head_activation():
    # softmax of [2, 0, -1]: exp / sum = [7.389, 1, 0.368] / 8.757 = [0.8438, 0.1142, 0.0420]
    assert scores(LOGITS, _cfg("softmax"))[0].tolist() == pytest.approx([0.8438, 0.1142, 0.0420], abs=1e-4)
    assert scores(LOGITS, _cfg("softmax")).sum(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)  # float32 rounding
    assert torch.equal(scores(LOGITS, _cfg("sigmoid")), torch.sigmoid(LOGITS))
    assert torch.equal(scores(LOGITS, _cfg("none")), LOGITS)


@pytest.mark.parametrize("act", ["softmax", "sigmoid", "none"])
def test_evaluation_scores_the_model_s_logits_once(act):
    cfg = _cfg(act)
    batch = ([torch.zeros(2, 3, 4, 4)], torch.tensor([0, 2]), torch.arange(2), {"valid": torch.ones(2, dtype=torch.bool)})
    preds, labels, _, _ = predict_readable(_Logits(), batch, cfg, torch.device("cpu"))
    assert torch.equal(preds, scores(LOGITS, cfg))
    assert labels.tolist() == [0, 2]


class _Labelled(Dataset):
    """Sample i is labelled i % 3; the model below predicts class 0 for every sample."""

    def __len__(self):
        return 5

    def __getitem__(self, i):
        return torch.zeros(3, 16, 16), i % 3, i, {"skipped": 0, "valid": True, "skipped_paths": []}


def test_val_counts_each_sample_once_when_the_sampler_pads(tmp_path):
    """5 samples over 2 ranks: DistributedSampler gives rank 1 samples 1, 3 and a repeat of sample 0."""
    cfg = get_cfg()
    merge_opts(cfg, COMMON + ["LOG_PERIOD", "100", "OUTPUT_DIR", str(tmp_path)])

    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[1.0, 0.0, 0.0]]).repeat(x.shape[0], 1)

    sampler = DistributedSampler(_Labelled(), num_replicas=2, rank=1, shuffle=False)
    assert list(sampler) == [1, 3, 0]
    loader = DataLoader(_Labelled(), batch_size=2, sampler=sampler, collate_fn=BatchCollator())
    stats = eval_epoch(loader, Zero(), ValMeter(len(loader), cfg), 0, cfg, torch.device("cpu"))
    # Samples 1 and 3 (labels 1 and 0): one of two wrong. Counting the repeat of sample 0 would say 1 of 3.
    assert stats["top1_err"] == pytest.approx(50.0)
