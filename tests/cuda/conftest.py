"""tests/cuda: the CUDA paths on a real GPU (marker ``cuda``); every test here is skipped without one.

Run on a GPU machine with ``python -m pytest -m cuda tests/cuda`` (tools/gpu_check.sh does). The CPU suite
hides CUDA from its own tests; these are the ones that want it. Each test sets the numeric flags it
relies on (``numerics`` below) instead of inheriting whatever a previous test or the trainer left.
"""

import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # cudarun.py, shared by the files here, importable by plain name


def pytest_configure(config):
    """Register the marker where pytest.ini does not (yet): ``-m cuda`` then selects without a warning."""
    if not any(line.startswith("cuda:") for line in config.getini("markers")):
        config.addinivalue_line("markers", "cuda: needs a CUDA GPU; skipped without one")


def pytest_collection_modifyitems(config, items):
    """Mark every test of this directory ``cuda`` (tests/conftest.py shows CUDA to marked tests only)."""
    for item in items:
        if str(item.path).startswith(HERE + os.sep):
            item.add_marker(pytest.mark.cuda)


@pytest.fixture(autouse=True)
def _needs_cuda():
    """Skip without a CUDA device. Asked when the test starts, never at import or collection: the suite's
    conftest hides CUDA until a marked test runs, and touching CUDA early would fix its device count."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")


@pytest.fixture
def device():
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture
def numerics():
    """Strict float32 (no TF32) and deterministic cuDNN for the test, restored afterwards.

    The trainer turns TF32 and cudnn.benchmark on (DETERMINISTIC False); a comparison of two paths in
    float32 must not see TF32's 10-bit mantissa or two different convolution algorithms.
    """
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) = saved
