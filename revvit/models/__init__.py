"""Model registry and builder."""

from fvcore.common.registry import Registry

from .mvit import MViT, block_specs, patch_grid

MODEL_REGISTRY = Registry("MODEL")
MODEL_REGISTRY.__doc__ = "Models selected by MODEL.MODEL_NAME; each is built as cls(cfg)."
MODEL_REGISTRY.register(MViT)

__all__ = ["MODEL_REGISTRY", "MViT", "block_specs", "build_model", "patch_grid"]


def build_model(cfg):
    """The model named by ``cfg.MODEL.MODEL_NAME``, on the CPU; the launcher moves it to its device."""
    from revvit.config import validate_cfg

    validate_cfg(cfg)
    name = cfg.MODEL.MODEL_NAME
    if name not in MODEL_REGISTRY:
        known = ", ".join(sorted(k for k, _ in MODEL_REGISTRY))
        raise KeyError(f"MODEL.MODEL_NAME '{name}' is not a registered model; known: {known}")
    return MODEL_REGISTRY.get(name)(cfg)

