"""revvit: Reversible Vision Transformers (Rev-ViT, Rev-MViT) for image and video recognition.

As a library: ``revvit.create_model("rev_vit_b", pretrained=True)`` and ``revvit.list_models()``.
"""

__version__ = "0.1.0"

from .models.factory import create_model, list_models  # noqa: E402  (after the version, which setup tools read)

__all__ = ["__version__", "create_model", "list_models"]
