"""The data set registry and the one place that turns a config into a data set.

Data sets are looked up by the names PySlowFast configs use (``TRAIN.DATASET: kinetics``), so
its YAML files work unchanged; ``build_dataset`` also decides where the files are, which lets the
demo sets (``DATA.DEMO``) run through the very same ImageNet / Kinetics classes as real data.
"""

import os

from fvcore.common.registry import Registry

from .demo import demo_data_dir
from .errors import DataLayoutError

DATASET_REGISTRY = Registry("DATASET")
DATASET_REGISTRY.__doc__ = "Data sets named by TRAIN.DATASET / TEST.DATASET; each is built as cls(cfg, split, data_dir)."

SPLITS = ("train", "val", "test")


def resolve_data_dir(cfg, name):
    """The directory data set ``name`` reads: a demo set (built on first use) or DATA.PATH_TO_DATA_DIR."""
    if cfg.DATA.DEMO:
        if cfg.DATA.PATH_TO_DATA_DIR:
            raise DataLayoutError(
                f"DATA.DEMO '{cfg.DATA.DEMO}' and DATA.PATH_TO_DATA_DIR '{cfg.DATA.PATH_TO_DATA_DIR}' are both set; "
                "the demo set would hide your data. Set DATA.DEMO '' to read your data, or clear DATA.PATH_TO_DATA_DIR."
            )
        return demo_data_dir(cfg.DATA.DEMO, cfg.DATA.DEMO_CACHE_DIR, dataset_name=name)
    if not cfg.DATA.PATH_TO_DATA_DIR:
        raise DataLayoutError(
            f"DATA.PATH_TO_DATA_DIR is empty: set it to the {name} data root (see the layout in "
            f"revvit/datasets/{name}.py), or set DATA.DEMO to run on a demo set."
        )
    return os.path.expanduser(cfg.DATA.PATH_TO_DATA_DIR)


def dataset_class(name):
    """The registered class of data set ``name`` (case-insensitive, as in the YAML)."""
    key = name.capitalize()
    if key not in DATASET_REGISTRY:
        known = ", ".join(sorted(k.lower() for k, _ in DATASET_REGISTRY))
        raise KeyError(f"Data set '{name}' (TRAIN.DATASET / TEST.DATASET) is not registered; known: {known}.")
    return DATASET_REGISTRY.get(key)


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}'; use one of {SPLITS}.")


def dataset_name(cfg, split):
    """The data set that serves ``split``: TEST.DATASET for test, TRAIN.DATASET for train and val."""
    return cfg.TEST.DATASET if split == "test" else cfg.TRAIN.DATASET


def build_dataset(name, cfg, split):
    """Data set ``name`` (case-insensitive, as in the YAML) for ``split`` in train / val / test."""
    _check_split(split)
    return dataset_class(name)(cfg, split, resolve_data_dir(cfg, name.lower()))


def check_layout(cfg, split):
    """Raise DataLayoutError when the files of ``split`` cannot be read, before any process starts.

    Each registered data set class owns a ``check_layout(cfg, split, data_dir)`` that looks only at
    what is cheap (folders, the first image, the CSV lines), so that a wrong path or an empty split
    costs seconds, not a training run. A demo set is built here (first use), before the check.
    """
    _check_split(split)
    name = dataset_name(cfg, split)
    dataset_class(name).check_layout(cfg, split, resolve_data_dir(cfg, name.lower()))
