"""revvit: Reversible Vision Transformers (Rev-ViT, Rev-MViT) for image and video recognition."""

__version__ = "0.1.0"
