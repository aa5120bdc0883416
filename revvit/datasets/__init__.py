"""Data: ImageNet and Kinetics data sets, their loaders, and the demo sets built from scikit-learn digits.

``construct_loader(cfg, split)`` is the entry point; see ``loader.py`` for the batch format and
``bad_samples.py`` for how unreadable files are skipped and counted. With AUG.ON_DEVICE the training
loop wraps its batches in ``device_batches`` (``device/``), which finishes them on the training device.
"""

from . import imagenet, kinetics  # noqa: F401  (register the data sets)
from .bad_samples import BadSampleCounter, BadSampleError, report_bad_samples
from .build import DATASET_REGISTRY, build_dataset, check_layout, dataset_class, dataset_name
from .channels import model_channels
from .errors import DataLayoutError
from .loader import construct_loader, drop_invalid, mixup_active, shuffle_dataset
from .device.prefetch import device_batches

__all__ = [
    "DATASET_REGISTRY",
    "BadSampleCounter",
    "BadSampleError",
    "DataLayoutError",
    "build_dataset",
    "check_layout",
    "dataset_class",
    "dataset_name",
    "construct_loader",
    "device_batches",
    "drop_invalid",
    "mixup_active",
    "report_bad_samples",
    "model_channels",
    "shuffle_dataset",
]
