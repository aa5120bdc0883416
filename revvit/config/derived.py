"""Answers derived from the config that the gate and the layers above it all ask: one rule each, in the
lowest layer, so that the check the gate makes is the rule the run follows."""

__all__ = ["mixup_active", "per_process_batch_size"]


def per_process_batch_size(cfg, split):
    """One process's batch of ``split``: TRAIN.BATCH_SIZE (TEST.BATCH_SIZE for test) is the batch of one
    machine, split over its NUM_GPUS processes (PySlowFast's semantics); NUM_GPUS 0 is one CPU process."""
    batch = cfg.TEST.BATCH_SIZE if split == "test" else cfg.TRAIN.BATCH_SIZE
    return batch // max(1, cfg.NUM_GPUS)


def mixup_active(cfg):
    """Whether training batches are mixed and so carry soft targets: MIXUP.ENABLE with a mixup or a
    CutMix alpha above 0 (the gate refuses MIXUP.ENABLE with both at 0)."""
    return bool(cfg.MIXUP.ENABLE) and (cfg.MIXUP.ALPHA > 0 or cfg.MIXUP.CUTMIX_ALPHA > 0)
