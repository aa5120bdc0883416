import pytest
import simplejson
import torch

from revvit.utils import logging
from revvit.utils.meters import TestMeter
from revvit.utils.metrics import topk_errors, topks_correct


def test_topk_counts():
    preds = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 1, 0])
    c1, c2, c5 = topks_correct(preds, labels, (1, 2, 5))
    assert (c1.item(), c2.item(), c5.item()) == (1, 2, 3)
    assert topk_errors(preds, labels, (1,))[0].item() == pytest.approx(200 / 3)


def test_sum_ensemble_over_views_and_duplicate_views_counted_once():
    meter = TestMeter(num_videos=2, num_clips=2, num_classes=3, overall_iters=1, ensemble_method="sum")
    # video 0: views disagree, sum favours class 2; video 1: both views say class 0 (label 1)
    preds = torch.tensor([[0.5, 0.0, 0.5], [0.0, 0.4, 0.6], [0.9, 0.1, 0.0], [0.8, 0.2, 0.0]])
    meter.update_stats(preds, torch.tensor([2, 2, 1, 1]), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]))
    meter.update_stats(preds[:1], torch.tensor([2]), torch.tensor([0]), torch.tensor([0]))  # padded repeat
    assert meter.clip_count.tolist() == [2, 2]
    assert torch.allclose(meter.video_preds[0], torch.tensor([0.5, 0.4, 1.1]))
    stats = meter.finalize_metrics(ks=(1, 2))
    assert stats["top1_acc"] == pytest.approx(50.0) and stats["top2_acc"] == pytest.approx(100.0)


def test_max_ensemble():
    meter = TestMeter(1, 2, 3, 1, ensemble_method="max")
    meter.update_stats(torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]), torch.tensor([2, 2]), torch.tensor([0, 0]))
    assert torch.allclose(meter.video_preds[0], torch.tensor([0.6, 0.3, 0.7]))


def test_json_stats_line_and_file(tmp_path):
    logging.setup_logging(str(tmp_path))
    line = logging.log_json_stats({"_type": "train_epoch", "loss": 1.23456789, "epoch": "1/2"}, str(tmp_path))
    assert line.startswith("json_stats: ")
    assert simplejson.loads(line[len("json_stats: "):]) == {"_type": "train_epoch", "epoch": "1/2", "loss": 1.23457}
    assert (tmp_path / "json_stats.log").read_text().strip() == line
    assert "json_stats" in (tmp_path / "stdout.log").read_text()
