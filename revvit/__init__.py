"""revvit: Reversible Vision Transformers (Rev-ViT, Rev-MViT) for image and video recognition.

As a library: ``revvit.create_model("rev_vit_b", pretrained=True)`` and ``revvit.list_models()``.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models"]


def __getattr__(name):
    # Imported on first use: ``import revvit.utils.curves`` (plot_stats.py) need not load torch and the models.
    if name in ("create_model", "list_models"):
        from .models import factory

        return getattr(factory, name)
    raise AttributeError(f"module 'revvit' has no attribute '{name}'")
