import itertools
import os

import pytest
import torch

from helpers import REV_VIT
from revvit.config import get_cfg, merge_file, merge_opts
from revvit.models import build_model
from revvit.solver import build_optimizer, param_groups

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The tiny runs' Rev-ViT (helpers.REV_VIT), two blocks deep.
TINY_REV_VIT = REV_VIT + ["MVIT.DEPTH", "2", "MODEL.NUM_CLASSES", "3"]


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


def _expected_split(model, cfg):
    """The grouping rule, stated once for the tests: (decay names, no-decay names) in parameter order.
    A name listed by ``no_weight_decay()`` matches in full or by its last component."""
    fn = getattr(model, "no_weight_decay", None)
    skip = set(fn()) if callable(fn) else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        listed = name in skip or name.rsplit(".", 1)[-1] in skip
        one_d = cfg.SOLVER.ZERO_WD_1D_PARAM and (p.ndim <= 1 or name.endswith(".bias"))
        (no_decay if listed or one_d else decay).append(name)
    return decay, no_decay


def _check_groups(model, cfg):
    by_id = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = _expected_split(model, cfg)
    want = [(decay, cfg.SOLVER.WEIGHT_DECAY), (no_decay, 0.0)]
    want = [(names, wd) for names, wd in want if names]
    got = [([by_id[id(p)] for p in g["params"]], g["weight_decay"]) for g in param_groups(model, cfg)]
    # Same groups, same order, same parameter order inside each: a checkpoint's optimizer state maps
    # onto them index by index.
    assert got == want
    assert all(set(g) == {"params", "weight_decay"} for g in param_groups(model, cfg))


@pytest.mark.parametrize("config", ["configs/ImageNet/REV_VIT_S.yaml", "configs/ImageNet/REV_MVIT_B_16_CONV.yaml"])
def test_groups_of_the_published_recipes(config):
    """The published recipes' models, under every setting of the two switches and a zero decay (whose
    groups keep the same layout, so a checkpoint's optimizer state loads whatever the decay)."""
    cfg = get_cfg()
    merge_file(cfg, os.path.join(ROOT, config))
    merge_opts(cfg, ["MODEL.NUM_CLASSES", "10", "MVIT.ZERO_DECAY_POS_CLS", "True"])
    model = build_model(cfg)
    model.patch_embed.proj.bias.requires_grad_(False)  # frozen parameters join no group
    listed = model.no_weight_decay()
    assert "pos_embed" in listed or "pos_embed_spatial" in listed
    for zero_1d, pos_cls, wd in itertools.product([True, False], [True, False], [0.05, 0.0]):
        merge_opts(cfg, ["SOLVER.ZERO_WD_1D_PARAM", str(zero_1d), "SOLVER.WEIGHT_DECAY", str(wd)])
        model.no_weight_decay = (lambda: listed) if pos_cls else set
        _check_groups(model, cfg)


class _Listed(torch.nn.Module):
    """A model that lists a name by its last component (as timm's models list ``rel_pos_h``)."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(2))
        for b in self.blocks:
            b.rel_pos_h = torch.nn.Parameter(torch.zeros(3, 2))
        self.rel_pos_h_extra = torch.nn.Parameter(torch.zeros(3, 2))

    def no_weight_decay(self):
        return {"rel_pos_h"}


def test_listed_names_match_by_last_component():
    cfg = get_cfg()
    merge_opts(cfg, ["SOLVER.ZERO_WD_1D_PARAM", "False", "SOLVER.WEIGHT_DECAY", "0.1"])
    model = _Listed()
    _check_groups(model, cfg)
    decay, no_decay = _expected_split(model, cfg)
    assert no_decay == ["blocks.0.rel_pos_h", "blocks.1.rel_pos_h"]
    assert "rel_pos_h_extra" in decay
