import pytest
import simplejson
import torch

from revvit.utils import logging
from revvit.utils.meters import TestMeter
from timm.utils import accuracy

from revvit.utils.metrics import topks_correct


def test_topk_counts():
    preds = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 1, 0])
    c1, c2, c5 = topks_correct(preds, labels, (1, 2, 5))
    assert (c1.item(), c2.item(), c5.item()) == (1, 2, 3)


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


def test_counts_follow_timms_accuracy_for_k_above_the_classes():
    torch.manual_seed(0)
    preds, labels = torch.randn(50, 4), torch.randint(0, 4, (50,))
    counts = topks_correct(preds, labels, (1, 3, 5))
    assert counts[2].item() == 50  # k = 5 > 4 classes: every sample is correct
    for c, acc in zip(counts, accuracy(preds, labels, topk=(1, 3, 5))):
        # float32: timm's c * 100 / 50 is exact here (a multiple of 2 below 2^24), so it matches to the ulp of 100
        assert acc.item() == pytest.approx(100.0 * c.item() / 50, abs=1e-5)
    with pytest.raises(ValueError, match="preds has 50 rows but labels has 3"):
        topks_correct(preds, labels[:3], (1,))


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


def _reference_ensemble(batches, num_videos, method):
    """Per-sample scores, labels and view counts, row by row: a (sample, view) pair counts once."""
    seen, scores, labels, count = set(), {}, {}, [0] * num_videos
    for preds, lab, vid, view in batches:
        for i in range(len(vid)):
            key = (int(vid[i]), int(view[i]))
            if key in seen:
                continue
            seen.add(key)
            v = key[0]
            labels[v] = int(lab[i])
            scores[v] = [preds[i]] if v not in scores else scores[v] + [preds[i]]
            count[v] += 1
    reduce = (lambda rows: torch.stack(rows).sum(0)) if method == "sum" else (lambda rows: torch.stack(rows).amax(0))
    return {v: reduce(rows) for v, rows in scores.items()}, labels, count


@pytest.mark.parametrize("method", ["sum", "max"])
def test_ensembles_match_a_row_by_row_count(method):
    """Batches of views in a shuffled order with repeats (in one batch and across batches, as a
    padding sampler makes them) and scores of either sign."""
    g = torch.Generator().manual_seed(0)
    num_videos, num_views, num_classes = 40, 3, 5
    truth = torch.randint(0, num_classes, (num_videos,), generator=g)
    order = torch.cat([torch.randperm(num_videos * num_views, generator=g), torch.randint(0, num_videos * num_views, (30,), generator=g)])
    order = order[torch.randperm(len(order), generator=g)]
    scores = torch.randn(num_videos, num_views, num_classes, generator=g) - 0.5
    batches = []
    for rows in order.split(16):
        vid, view = rows // num_views, rows % num_views
        batches.append((scores[vid, view], truth[vid], vid, view))
    meter = TestMeter(num_videos, num_views, num_classes, overall_iters=len(batches), ensemble_method=method)
    for batch in batches:
        meter.update_stats(*batch)
    want, labels, count = _reference_ensemble(batches, num_videos, method)
    assert meter.clip_count.tolist() == count == [num_views] * num_videos
    assert meter.video_labels.tolist() == [labels[v] for v in range(num_videos)] == truth.tolist()
    for v in range(num_videos):
        # max is exact; a sum of 3 float32 scores of size < 5 rounds to within 2 ulps of 15 of any order.
        assert torch.allclose(meter.video_preds[v], want[v], rtol=0, atol=0 if method == "max" else 2 * 15 * 2**-23)
    assert meter.finalize_metrics(ks=(1,))["num_samples"] == num_videos


def test_a_sample_whose_views_disagree_on_the_label_is_refused():
    meter = TestMeter(3, 2, 4, overall_iters=2)
    meter.update_stats(torch.zeros(2, 4), torch.tensor([1, 3]), torch.tensor([0, 2]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"sample 2 has views with different labels \(3 and 0\)"):
        meter.update_stats(torch.zeros(1, 4), torch.tensor([0]), torch.tensor([2]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"sample 1 has views with different labels \(2 and 3\)"):
        meter.update_stats(torch.zeros(2, 4), torch.tensor([2, 3]), torch.tensor([1, 1]), torch.tensor([0, 1]))
    with pytest.raises(IndexError, match="sample index 3 outside the 3 samples"):
        meter.update_stats(torch.zeros(1, 4), torch.tensor([0]), torch.tensor([3]))


def test_view_ids_beyond_the_expected_views_still_count_once():
    meter = TestMeter(2, 1, 3, overall_iters=2)
    meter.update_stats(torch.ones(2, 3), torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 0]))
    meter.update_stats(torch.ones(3, 3), torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]), torch.tensor([2, 0, 2]))
    assert meter.clip_count.tolist() == [2, 2] and meter.video_preds.tolist() == [[2.0] * 3] * 2
