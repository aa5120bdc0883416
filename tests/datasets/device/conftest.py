"""tests/datasets/device: the on-device half of the recipe (revvit/datasets/device)."""

import os
import sys

# Tests run with --import-mode=importlib, which does not put test folders on sys.path: exact_reference.py.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
