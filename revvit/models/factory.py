"""Models by name, as timm offers them: ``create_model("rev_vit_b", pretrained=True)``.

Each name is one of the shipped configs (``configs/``) and, for the published models, the file name
of the official PySlowFast checkpoint; ``models/hub.py`` fetches that file into torch hub's cache.
Loading is strict (every tensor must fit); only the head is left at its fresh initialisation when
``num_classes`` differs from the checkpoint's, for fine-tuning.

The configs live at the repository root so that ``--cfg configs/...`` works from a checkout; an
installed package carries them as ``revvit/configs`` (``package_dir`` in setup.py), and both places
are searched.
"""

import os
from dataclasses import dataclass

from revvit.utils import checkpoint as cu
from revvit.utils.errors import UserError

from .hub import official_file

__all__ = ["UnknownModelError", "create_model", "list_models", "model_cfg", "pretrained_checkpoint", "pretrained_file"]


class UnknownModelError(UserError):
    """A model name that is not in ``list_models()``; the message lists the names."""


@dataclass(frozen=True)
class _Entry:
    config: str  # relative to the configs directory
    weights: str = ""  # official file name under hub.OFFICIAL_URL; empty: no published weights


_MODELS = {
    "rev_vit_s": _Entry("ImageNet/REV_VIT_S.yaml", "REV_VIT_S.pyth"),
    "rev_vit_b": _Entry("ImageNet/REV_VIT_B.yaml", "REV_VIT_B.pyth"),
    "rev_mvit_b": _Entry("ImageNet/REV_MVIT_B_16_CONV.yaml", "REV_MVIT_B.pyth"),
    "rev_mvit_b_16x4": _Entry("Kinetics/REV_MVIT_B_16x4_CONV.yaml", "REV_MVIT_B_16x4.pyth"),
    # Non-reversible twins: the same recipes trained with ordinary autograd; nothing is published.
    "vit_s": _Entry("ImageNet/VIT_S.yaml"),
    "vit_b": _Entry("ImageNet/VIT_B.yaml"),
    "mvitv2_b": _Entry("ImageNet/MVITV2_B.yaml"),
    "mvitv2_b_16x4": _Entry("Kinetics/MVITV2_B_16x4_CONV.yaml"),
}


def list_models(pretrained=False):
    """Model names, sorted; with ``pretrained=True`` only those with official weights."""
    return sorted(n for n, e in _MODELS.items() if e.weights or not pretrained)


def _entry(name):
    if name not in _MODELS:
        raise UnknownModelError(f"Unknown model '{name}'; known: {', '.join(list_models())} (revvit.list_models()).")
    return _MODELS[name]


def _configs_dirs():
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [os.path.join(package, "configs"), os.path.join(os.path.dirname(package), "configs")]


def config_file(name):
    """Path of the shipped YAML config of model ``name``."""
    rel = _entry(name).config
    for d in _configs_dirs():
        path = os.path.join(d, rel)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"Config {rel} of model '{name}' not found in {' or '.join(_configs_dirs())}; reinstall revvit.")


def _override_key(key):
    """``MVIT__DEPTH`` (keyword-friendly) and ``"MVIT.DEPTH"`` both name config key MVIT.DEPTH."""
    return key.replace("__", ".")


def model_cfg(name, num_classes=None, **overrides):
    """The frozen config of model ``name``, with ``MODEL.NUM_CLASSES`` and config-key overrides applied."""
    from revvit.config import get_cfg, merge_file, merge_opts, validate_cfg

    cfg = get_cfg()
    merge_file(cfg, config_file(name))
    opts = []
    for key, value in overrides.items():
        opts += [_override_key(key), value if isinstance(value, str) else repr(value)]
    if num_classes is not None:
        opts += ["MODEL.NUM_CLASSES", str(num_classes)]
    merge_opts(cfg, opts, source=f"the overrides given to create_model('{name}')")
    validate_cfg(cfg)
    cfg.freeze()
    return cfg


def pretrained_file(name, progress=True):
    """Local path of the official checkpoint of model ``name``, fetched into torch hub's cache if absent."""
    entry = _entry(name)
    if not entry.weights:
        with_weights = ", ".join(list_models(pretrained=True))
        raise cu.CheckpointError(
            f"Model '{name}' has no official weights (only {with_weights} were published); "
            "use pretrained=False, or load your own checkpoint."
        )
    return official_file(entry.weights, f"the official weights of '{name}'", progress=progress)


def pretrained_checkpoint(cfg):
    """MODEL.PRETRAINED resolved to its cached official file, or '' when the key is empty."""
    return pretrained_file(cfg.MODEL.PRETRAINED) if cfg.MODEL.PRETRAINED else ""


def create_model(name, pretrained=False, num_classes=None, progress=True, checkpoint_path="", **overrides):
    """Model ``name`` (see ``list_models()``), in train mode as torch builders return it.

    ``num_classes``: the classifier's outputs (default: the config's, 1000 or 400). With
    ``pretrained=True`` and another ``num_classes`` the head keeps its fresh initialisation.
    ``checkpoint_path`` (as timm names it): weights to load from a checkpoint file instead, your own
    (a revvit or PySlowFast ``.pyth``), strictly but for a head of another ``num_classes``; like the
    official ones they are refused when not finite. ``overrides``: config keys, as ``MVIT__DEPTH=2``
    or ``**{"MVIT.DEPTH": 2}``. The model takes a tensor ``[B,3,H,W]`` (``[B,3,T,H,W]`` for video) and
    returns logits; ``model.cfg`` holds its config.
    """
    from . import build_model

    if pretrained and checkpoint_path:
        raise ValueError("create_model: pass pretrained=True or checkpoint_path, not both (which weights should it load?)")
    cfg = model_cfg(name, num_classes=num_classes, **overrides)
    path = pretrained_file(name, progress=progress) if pretrained else checkpoint_path or None  # fail before building a large model
    model = build_model(cfg)
    model.cfg = cfg
    if path is not None:
        cu.load_checkpoint(path, model, finetune_num_classes=cfg.MODEL.NUM_CLASSES)
    return model
