"""Shared test utilities: where the reference data lives and how to build small configs."""

import os

from revvit.config import get_cfg, merge_file, merge_opts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The official fixtures, layouts and YAML files (see reference/*/README.md for their provenance).
REFERENCE = os.path.join(REPO, "tests", "reference")
OFFICIAL_CONFIGS = os.path.join(REFERENCE, "official_configs")


def make_cfg(path, opts=()):
    """Defaults <- YAML (repo-relative or absolute) <- opts, unfrozen and unvalidated."""
    cfg = get_cfg()
    merge_file(cfg, path if os.path.isabs(path) else os.path.join(REPO, path))
    merge_opts(cfg, list(opts))
    return cfg


def rel_err(a, b):
    """max |a - b| / max |b|: the tolerance measure of the official fixtures."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
