"""Memory probes: the process's resident set on CPU, the caching allocator's counters on CUDA.

Both answer the same three questions (now, peak since reset, reset the peak), so the measurement code
does not know which device it runs on.
"""

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["CPUMemory", "CUDAMemory", "memory_probe", "saved_bytes"]


def _proc_status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class CPUMemory:
    """Resident set size and its high-water mark, resettable through /proc/self/clear_refs (Linux only)."""

    def __init__(self):
        try:
            self.reset_peak()
            _proc_status_bytes("VmHWM")
        except OSError as e:
            raise RuntimeError(
                "CPU peak memory needs Linux /proc/self/clear_refs and /proc/self/status "
                f"(resetting the resident high-water mark failed: {e}); run the benchmark on Linux or CUDA"
            ) from e

    def current(self):
        return _proc_status_bytes("VmRSS")

    def reset_peak(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def peak(self):
        return _proc_status_bytes("VmHWM")


class CUDAMemory:
    """Bytes held by tensors (not the allocator's cache): what the model needs, not what it reserved."""

    def __init__(self, device):
        self.device = device

    def current(self):
        torch.cuda.synchronize(self.device)
        return torch.cuda.memory_allocated(self.device)

    def reset_peak(self):
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self):
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)


def memory_probe(device):
    return CUDAMemory(device) if device.type == "cuda" else CPUMemory()


class _LiveStorages(TorchDispatchMode):
    """Remembers (weakly) every storage an op produces, to see which ones outlive the forward."""

    def __init__(self):
        super().__init__()
        self.storages = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                s = t.untyped_storage()
                known = self.storages.get(s.data_ptr())
                if known is None or known[0]() is None:  # new, or an address reused after a free
                    self.storages[s.data_ptr()] = (weakref.ref(s), s.nbytes())
        return out


def saved_bytes(model, inputs, labels):
    """Bytes held for backward after one training forward: storages the forward created that are
    still alive when only the loss is referenced (parameters and the loss excluded).

    Counting live storages rather than saved-tensor hooks also sees what activation checkpointing keeps
    (its regions install their own hooks) and whatever a custom autograd Function saves. It is exact and
    independent of the allocator, so it separates "kept for backward" from the transient peak.
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    mode = _LiveStorages()
    with mode:
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
    skip = param_ptrs | {loss.untyped_storage().data_ptr(), inputs[0].untyped_storage().data_ptr()}
    kept = sum(n for ptr, (ref, n) in mode.storages.items() if ref() is not None and ptr not in skip)
    del loss
    return kept
