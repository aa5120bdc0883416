"""The channel order a model reads, decided in one place for training, evaluation and prediction."""

__all__ = ["model_channels"]


def model_channels(x, cfg, dim=0):
    """``x`` (RGB along ``dim``) in the model's order: BGR with DATA.REVERSE_INPUT_CHANNEL (PySlowFast's
    Caffe2-era checkpoints were trained on BGR), else unchanged."""
    return x.flip(dim) if cfg.DATA.REVERSE_INPUT_CHANNEL else x
