"""Memory against depth at one width: the reversible stack's activations should not grow with it.

The sweep is the memory table (``memory_table``) over one config at several depths, at a small input
so that the deep non-reversible models fit and a step stays affordable on a CPU.
"""

from .memory_table import TableModel

__all__ = ["sweep_models"]


def sweep_models(config, depths, crop_size, batches):
    """TableModels of ``config`` at each depth of ``depths`` and ``crop_size`` pixels, named "depth N"."""
    return tuple(
        TableModel(f"depth {d}", config, tuple(batches), opts=("MVIT.DEPTH", str(d), "DATA.TRAIN_CROP_SIZE", str(crop_size)))
        for d in depths
    )
