"""The data set registry and the one place that turns a config into a data set.

Data sets are looked up by the names PySlowFast configs use (``TRAIN.DATASET: kinetics``), so
its YAML files work unchanged; ``build_dataset`` also decides where the files are, which lets the
demo sets (``DATA.DEMO``) run through the very same ImageNet / Kinetics classes as real data.
"""

import os

from fvcore.common.registry import Registry

DATASET_REGISTRY = Registry("DATASET")
DATASET_REGISTRY.__doc__ = "Data sets named by TRAIN.DATASET / TEST.DATASET; each is built as cls(cfg, split, data_dir)."

SPLITS = ("train", "val", "test")


def resolve_data_dir(cfg, name):
    """The directory data set ``name`` reads: a demo set (built on first use) or DATA.PATH_TO_DATA_DIR."""
    if cfg.DATA.DEMO:
        from .demo import demo_data_dir

        if cfg.DATA.PATH_TO_DATA_DIR:
            raise ValueError(
                f"DATA.DEMO '{cfg.DATA.DEMO}' and DATA.PATH_TO_DATA_DIR '{cfg.DATA.PATH_TO_DATA_DIR}' are both set; "
                "the demo set would hide your data. Set DATA.DEMO '' to read your data, or clear DATA.PATH_TO_DATA_DIR."
            )
        return demo_data_dir(cfg.DATA.DEMO, cfg.DATA.DEMO_CACHE_DIR, dataset_name=name)
    if not cfg.DATA.PATH_TO_DATA_DIR:
        raise ValueError(
            f"DATA.PATH_TO_DATA_DIR is empty: set it to the {name} data root (see the layout in "
            f"revvit/datasets/{name}.py), or set DATA.DEMO to run on a demo set."
        )
    return os.path.expanduser(cfg.DATA.PATH_TO_DATA_DIR)


def build_dataset(name, cfg, split):
    """Data set ``name`` (case-insensitive, as in the YAML) for ``split`` in train / val / test."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}'; use one of {SPLITS}.")
    key = name.capitalize()
    if key not in DATASET_REGISTRY:
        known = ", ".join(sorted(k.lower() for k, _ in DATASET_REGISTRY))
        raise KeyError(f"Data set '{name}' (TRAIN.DATASET / TEST.DATASET) is not registered; known: {known}.")
    return DATASET_REGISTRY.get(key)(cfg, split, resolve_data_dir(cfg, name.lower()))
