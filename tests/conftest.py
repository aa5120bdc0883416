import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import REFERENCE  # noqa: E402


@pytest.fixture(scope="session")
def reference_dir():
    if not os.path.isdir(REFERENCE):
        pytest.fail(f"reference data not found at {REFERENCE}: it is part of the repository")
    return REFERENCE
