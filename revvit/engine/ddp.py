"""DDP, the data parallelism of a run without MODEL.FSDP: each process holds the whole model, and the
gradients are all-reduced in buckets during the backward."""

from torch.nn.parallel import DistributedDataParallel

from revvit.utils import distributed as du

__all__ = ["wrap_ddp"]


def wrap_ddp(model, device, fp16_allreduce=False):
    """DDP with every parameter used in every step (no find_unused_parameters: each RevBackProp node
    accumulates the gradients of its block's parameters, so DDP's hooks all fire, block by block)."""
    if du.get_world_size() == 1:
        return model
    # gradient_as_bucket_view: the .grad tensors are views into DDP's buckets, saving a copy and a
    # gradient-sized buffer per step, as long as they are zeroed in place (train_step), never set to None.
    if device.type == "cuda":
        model = DistributedDataParallel(model, device_ids=[device.index], output_device=device.index, gradient_as_bucket_view=True)
    else:
        model = DistributedDataParallel(model, gradient_as_bucket_view=True)
    if fp16_allreduce:  # MODEL.FP16_ALLREDUCE: halve the gradient traffic
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        model.register_comm_hook(state=None, hook=default_hooks.fp16_compress_hook)
    return model
