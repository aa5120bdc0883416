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


def test_errors_and_counts_agree_for_k_above_the_classes():
    torch.manual_seed(0)
    preds, labels = torch.randn(50, 4), torch.randint(0, 4, (50,))
    counts = topks_correct(preds, labels, (1, 3, 5))
    errors = topk_errors(preds, labels, (1, 3, 5))
    assert counts[2].item() == 50 and errors[2].item() == 0.0  # k = 5 > 4 classes: every sample is correct
    for c, e in zip(counts, errors):
        # float32: c * 100 / 50 is exact here (a multiple of 2 below 2^24), so the error matches to the ulp of 100
        assert e.item() == pytest.approx(100.0 * (1 - c.item() / 50), abs=1e-5)
    with pytest.raises(ValueError, match="preds has 50 rows but labels has 3"):
        topk_errors(preds, labels[:3], (1,))


def test_train_meter_logs_window_medians_and_epoch_means(tmp_path):
    from revvit.config import get_cfg
    from revvit.utils.meters import TrainMeter

    cfg = get_cfg()
    cfg.LOG_PERIOD, cfg.OUTPUT_DIR = 3, str(tmp_path)
    meter = TrainMeter(epoch_iters=5, cfg=cfg)
    for loss, size in zip((5.0, 1.0, 4.0, 2.0, 3.0), (1, 2, 3, 4, 5)):
        meter.iter_tic()
        meter.data_toc()
        meter.iter_toc()
        meter.update_stats(10 * loss, 20 * loss, loss, lr=0.1, grad_norm=1.0, mb_size=size)
    stats = meter.iter_stats(0, 4)
    assert (stats["loss"], stats["top1_err"], stats["top5_err"]) == (3.0, 30.0, 60.0)  # median of the last 3
    epoch = meter.log_epoch_stats(0)
    assert epoch["loss"] == pytest.approx((5 * 1 + 1 * 2 + 4 * 3 + 2 * 4 + 3 * 5) / 15, rel=1e-15)  # weighted by batch size
    meter.reset()
    meter.update_stats(7.0, 7.0, 7.0, lr=0.1, grad_norm=1.0, mb_size=1)
    assert meter.iter_stats(1, 0)["loss"] == 7.0  # the window starts again each epoch
