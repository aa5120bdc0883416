"""Test-suite setup: the reference data, and CUDA hidden from every test not marked ``cuda``.

The CPU suite must pass unchanged on a GPU machine: with CUDA visible, NUM_GPUS 2 runs would pick NCCL
and check the device count, and the loaders would pin memory. So each test not marked ``cuda`` runs
with CUDA hidden, in this process (torch.cuda.is_available() False, device_count() 0) and in every
process it starts (CUDA_VISIBLE_DEVICES empty, inherited by spawned ranks and run_net subprocesses).
Tests marked ``cuda`` (tests/cuda) see the real devices, and are skipped on a machine without CUDA,
so one ``pytest`` invocation runs both. A ``cuda`` test module must not ask torch about CUDA at import
time (collection runs with CUDA hidden): the marker decides whether it runs.
"""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import REFERENCE  # noqa: E402

_REAL = {"is_available": torch.cuda.is_available, "device_count": torch.cuda.device_count}
_VISIBLE = os.environ.get("CUDA_VISIBLE_DEVICES")  # None: not set
HAS_CUDA = torch.cuda.is_available()


def _show_cuda(show):
    if show:
        for name, fn in _REAL.items():
            setattr(torch.cuda, name, fn)
        if _VISIBLE is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = _VISIBLE
    else:
        torch.cuda.is_available = lambda: False
        torch.cuda.device_count = lambda: 0
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


_show_cuda(False)  # also while test modules are imported


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if not HAS_CUDA and item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Setup, call and teardown of each test (module fixtures included) see CUDA only when marked ``cuda``."""
    _show_cuda(item.get_closest_marker("cuda") is not None)
    yield
    _show_cuda(False)


@pytest.fixture(scope="session")
def reference_dir():
    if not os.path.isdir(REFERENCE):
        pytest.fail(f"reference data not found at {REFERENCE}: it is part of the repository")
    return REFERENCE
