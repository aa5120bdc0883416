"""A collated batch ``(inputs, labels, index, meta)`` onto the run's device."""

__all__ = ["to_device"]


def to_device(batch, device):
    inputs, labels, index, meta = batch
    nb = device.type == "cuda"
    inputs = [x.to(device, non_blocking=nb) for x in inputs]
    return inputs, labels.to(device, non_blocking=nb), index.to(device, non_blocking=nb), meta
