"""Model registry and builder."""

from fvcore.common.registry import Registry

from .mvit import MViT, block_specs, patch_grid

MODEL_REGISTRY = Registry("MODEL")
MODEL_REGISTRY.__doc__ = "Models selected by MODEL.MODEL_NAME; each is built as cls(cfg)."
MODEL_REGISTRY.register(MViT)

__all__ = ["MODEL_REGISTRY", "MViT", "block_specs", "build_model", "patch_grid"]


def build_model(cfg):
    """The model named by ``cfg.MODEL.MODEL_NAME``, on the CPU; the launcher moves it to its device.

    ``cfg`` has passed the config gate (``load_config`` / ``model_cfg``); nothing is checked again here.
    """
    return MODEL_REGISTRY.get(cfg.MODEL.MODEL_NAME)(cfg)

