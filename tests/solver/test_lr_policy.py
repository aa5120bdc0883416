import math

import pytest

from revvit.config import get_cfg
from revvit.solver import get_lr_at_epoch


def _cfg(**solver):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.COSINE_END_LR = 0.01
    cfg.SOLVER.WARMUP_START_LR = 0.1
    cfg.SOLVER.WARMUP_EPOCHS = 10.0
    cfg.SOLVER.MAX_EPOCH = 110
    for k, v in solver.items():
        cfg.SOLVER[k] = v
    return cfg


def test_linear_warmup_then_cosine_after_warmup():
    cfg = _cfg(COSINE_AFTER_WARMUP=True)
    assert get_lr_at_epoch(cfg, 0.0) == pytest.approx(0.1)
    assert get_lr_at_epoch(cfg, 5.0) == pytest.approx(0.55)  # halfway from 0.1 to 1.0
    assert get_lr_at_epoch(cfg, 10.0) == pytest.approx(1.0)
    # halfway through the 100 cosine epochs: the mean of base and end
    assert get_lr_at_epoch(cfg, 60.0) == pytest.approx(0.505)
    assert get_lr_at_epoch(cfg, 110.0) == pytest.approx(0.01)


def test_cosine_over_whole_run_warms_up_to_the_cosine_value():
    cfg = _cfg(COSINE_AFTER_WARMUP=False)
    at_warmup_end = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 10 / 110))
    assert get_lr_at_epoch(cfg, 10.0) == pytest.approx(at_warmup_end)
    assert get_lr_at_epoch(cfg, 5.0) == pytest.approx(0.1 + (at_warmup_end - 0.1) / 2)


def test_steps_with_relative_lrs():
    cfg = _cfg(LR_POLICY="steps_with_relative_lrs", STEPS=[0, 30, 60], LRS=[1.0, 0.1, 0.01], WARMUP_EPOCHS=0.0)
    assert get_lr_at_epoch(cfg, 29.9) == pytest.approx(1.0)
    assert get_lr_at_epoch(cfg, 30.0) == pytest.approx(0.1)
    assert get_lr_at_epoch(cfg, 75.0) == pytest.approx(0.01)


def test_lr_scales_with_num_shards():
    cfg = _cfg(COSINE_AFTER_WARMUP=True, BASE_LR_SCALE_NUM_SHARDS=True)
    cfg.NUM_SHARDS = 4
    assert get_lr_at_epoch(cfg, 0.0) == pytest.approx(0.4)
    assert get_lr_at_epoch(cfg, 10.0) == pytest.approx(4.0)
    assert get_lr_at_epoch(cfg, 110.0) == pytest.approx(0.04)
