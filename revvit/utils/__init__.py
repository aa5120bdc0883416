"""Helpers used by every layer: checkpoints, distributed, logging, meters, metrics, model stats."""
