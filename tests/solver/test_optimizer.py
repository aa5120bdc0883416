import torch

from revvit.config import get_cfg, merge_opts
from revvit.models import build_model
from revvit.solver import build_optimizer, param_groups

TINY_REV_VIT = [
    "MVIT.PATCH_2D", "True", "MVIT.CLS_EMBED_ON", "False", "MVIT.REV.ENABLE", "True",
    "MVIT.PATCH_KERNEL", "[4, 4]", "MVIT.PATCH_STRIDE", "[4, 4]", "MVIT.PATCH_PADDING", "[0, 0]",
    "MVIT.EMBED_DIM", "16", "MVIT.NUM_HEADS", "2", "MVIT.DEPTH", "2", "MODEL.NUM_CLASSES", "3",
    "DATA.TRAIN_CROP_SIZE", "16", "DATA.TEST_CROP_SIZE", "16", "DATA.INPUT_CHANNEL_NUM", "[3]",
]


def _model_cfg(opts=()):
    cfg = get_cfg()
    merge_opts(cfg, TINY_REV_VIT + list(opts))
    return build_model(cfg), cfg


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_no_decay_for_1d_params_and_listed_names():
    model, cfg = _model_cfg(["MVIT.ZERO_DECAY_POS_CLS", "True", "SOLVER.ZERO_WD_1D_PARAM", "True", "SOLVER.WEIGHT_DECAY", "0.05"])
    decay, no_decay = param_groups(model, cfg)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    nd = _names(model, no_decay)
    assert "pos_embed" in nd
    assert all(p.ndim >= 2 for n, p in model.named_parameters() if n in _names(model, decay))
    assert {n for n, p in model.named_parameters() if p.ndim == 1} <= nd
    assert "head.projection.weight" in _names(model, decay)
    assert len(nd) + len(_names(model, decay)) == len(list(model.parameters()))


def test_everything_decays_without_the_switches():
    model, cfg = _model_cfg(["MVIT.ZERO_DECAY_POS_CLS", "False", "SOLVER.ZERO_WD_1D_PARAM", "False"])
    groups = param_groups(model, cfg)
    assert len(groups) == 1 and len(groups[0]["params"]) == len(list(model.parameters()))


def test_optimizer_kinds_take_their_settings():
    model, cfg = _model_cfg(["SOLVER.OPTIMIZING_METHOD", "adamw", "SOLVER.BETAS", "(0.8, 0.95)"])
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.8, 0.95)
    cfg.SOLVER.OPTIMIZING_METHOD = "sgd"
    cfg.SOLVER.MOMENTUM = 0.7
    cfg.SOLVER.NESTEROV = True
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.7 and opt.param_groups[0]["nesterov"] is True
