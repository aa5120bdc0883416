import argparse
import errno
import os
import resource
import signal

import pytest
import torch

from revvit.config import get_cfg
from revvit.utils import checkpoint as cu


class Net(torch.nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.stem = torch.nn.Linear(4, 5)
        self.head = torch.nn.Module()
        self.head.projection = torch.nn.Linear(5, classes)

    def forward(self, x):
        return self.head.projection(self.stem(x))


def _saved(tmp_path, epoch=2, classes=3):
    torch.manual_seed(0)
    net = Net(classes)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = cu.save_checkpoint(str(tmp_path), net, opt, epoch, get_cfg())
    return net, opt, path


def test_layout_and_name_match_pyslowfast(tmp_path):
    net, _, path = _saved(tmp_path, epoch=2)
    assert os.path.basename(path) == "checkpoint_epoch_00003.pyth"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 2
    assert set(ckpt) == {"epoch", "model_state", "optimizer_state", "cfg"}
    assert "SOLVER:" in ckpt["cfg"]
    assert torch.equal(ckpt["model_state"]["stem.weight"], net.stem.weight)
    assert not [f for f in os.listdir(tmp_path / "checkpoints") if f.endswith(".tmp")]


def test_latest_ignores_temporary_and_foreign_files(tmp_path):
    _saved(tmp_path, epoch=0)
    _saved(tmp_path, epoch=9)
    d = tmp_path / "checkpoints"
    (d / "checkpoint_epoch_00042.pyth.tmp").write_bytes(b"half a file")
    (d / "notes.txt").write_text("x")
    assert os.path.basename(cu.latest_checkpoint(str(tmp_path))) == "checkpoint_epoch_00010.pyth"
    assert [os.path.basename(p) for p in cu.list_checkpoints(str(tmp_path))] == ["checkpoint_epoch_00001.pyth", "checkpoint_epoch_00010.pyth"]


def test_roundtrip_restores_model_and_optimizer(tmp_path):
    net, opt, path = _saved(tmp_path)
    fresh = Net()
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    info = cu.load_checkpoint(path, fresh, fresh_opt)
    assert info["epoch"] == 2 and info["skipped_keys"] == []
    for a, b in zip(net.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])


def test_module_prefix_of_a_ddp_saved_file_is_removed(tmp_path):
    net = Net()
    path = str(tmp_path / "ddp.pyth")
    torch.save({"epoch": 0, "model_state": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    fresh = Net()
    cu.load_checkpoint(path, fresh)
    assert torch.equal(fresh.stem.weight, net.stem.weight)


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path):
    net = Net()
    state = net.state_dict()
    state.pop("stem.bias")
    state["extra.weight"] = torch.zeros(1)
    state["stem.weight"] = torch.zeros(7, 4)
    path = str(tmp_path / "bad.pyth")
    torch.save({"model_state": state}, path)
    with pytest.raises(cu.CheckpointError) as e:
        cu.load_checkpoint(path, Net())
    msg = str(e.value)
    assert "stem.bias" in msg and "extra.weight" in msg and "stem.weight (checkpoint (7, 4), model (5, 4))" in msg


def test_head_is_skipped_only_when_finetuning_to_other_classes(tmp_path):
    _, _, path = _saved(tmp_path, classes=3)
    with pytest.raises(cu.CheckpointError, match="head.projection.weight"):
        cu.load_checkpoint(path, Net(classes=7))
    target = Net(classes=7)
    head_before = target.head.projection.weight.clone()
    opt = torch.optim.SGD(target.parameters(), lr=0.1, momentum=0.9)
    info = cu.load_checkpoint(path, target, opt, finetune_num_classes=7)
    assert info["skipped_keys"] == ["head.projection.weight", "head.projection.bias"]
    assert torch.equal(target.head.projection.weight, head_before)
    assert opt.state_dict()["state"] == {}  # the old head's optimizer state is not loaded


def test_unsafe_pickles_are_refused(tmp_path):
    path = str(tmp_path / "unsafe.pyth")
    torch.save({"model_state": Net().state_dict(), "hook": Net}, path)  # a class: needs real unpickling
    with pytest.raises(cu.CheckpointError, match="weights_only"):
        cu.load_checkpoint(path, Net())
    with pytest.raises(cu.CheckpointError, match="not found"):
        cu.load_checkpoint(str(tmp_path / "nope.pyth"), Net())


@pytest.mark.parametrize("text", ["not a checkpoint\n", "epoch: 3\nthese are notes, not weights\n", "hello world\n"])
def test_a_text_file_is_said_not_to_be_a_checkpoint(tmp_path, text):
    path = tmp_path / "notes.pyth"
    path.write_text(text)
    with pytest.raises(cu.CheckpointError) as e:
        cu.load_checkpoint(str(path), Net())
    message = str(e.value)
    # The first bytes decide: not a zip archive ('PK') nor a legacy pickle (0x80). Torch's advice to load
    # with weights_only=False, and "holds more than tensors", would be wrong for a file that is no checkpoint.
    assert message.startswith(f"Cannot read checkpoint '{path}': it is not a checkpoint: a file written by torch.save is a zip "
                              f"archive (starting with 'PK') or a legacy pickle (starting with byte 0x80), and this one starts "
                              f"with {text.encode()[:12]!r}.")
    assert "weights_only" not in message and "more than tensors" not in message


def test_a_pickled_class_is_named_without_torch_s_advice(tmp_path):
    path = tmp_path / "namespace.pyth"
    torch.save({"model_state": Net().state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(cu.CheckpointError) as e:
        cu.load_checkpoint(str(path), Net())
    assert "it holds a Python object of type argparse.Namespace, and revvit loads only tensors and plain values" in str(e.value)
    assert "weights_only` set to `False`" not in str(e.value) and "\n" not in str(e.value)


def _only_checkpoints_left(tmp_path):
    return sorted(os.listdir(tmp_path / "checkpoints"))


def test_disk_full_leaves_no_temporary_file_and_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    net, opt, first = _saved(tmp_path, epoch=0)

    def no_space(fd):  # fsync is where a full disk (delayed allocation, NFS) reports ENOSPC
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cu.os, "fsync", no_space)
    second = cu.checkpoint_path(str(tmp_path), 2)
    with pytest.raises(cu.CheckpointWriteError) as e:
        cu.save_checkpoint(str(tmp_path), net, opt, 1, get_cfg())
    monkeypatch.undo()
    assert str(e.value).startswith(f"No space left on device writing {second} ")
    assert e.value.errno == errno.ENOSPC
    assert _only_checkpoints_left(tmp_path) == ["checkpoint_epoch_00001.pyth"]
    assert cu.load_checkpoint(first, Net())["epoch"] == 0


def test_a_failed_write_names_the_real_cause_not_torch_s(tmp_path):
    """A real write error from the kernel: the file-size limit (EFBIG) stops the write mid-file."""
    net, opt, _ = _saved(tmp_path, epoch=0)
    big = torch.nn.Linear(256, 256)  # 257 KiB of weights: far past the 64 KiB limit below
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the error, not the signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, old[1]))
    try:
        with pytest.raises(cu.CheckpointWriteError, match=r"^File too large writing .*checkpoint_epoch_00002.pyth"):
            cu.save_checkpoint(str(tmp_path), big, None, 1, get_cfg())
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert _only_checkpoints_left(tmp_path) == ["checkpoint_epoch_00001.pyth"]


def test_a_planted_symlink_cannot_redirect_the_write(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    d = tmp_path / "checkpoints"
    d.mkdir()
    # The names a predictable temp-file scheme would use.
    for name in ("checkpoint_epoch_00001.pyth.tmp", ".checkpoint_epoch_00001.pyth.tmp"):
        os.symlink(victim, d / name)
    _, _, path = _saved(tmp_path, epoch=0)
    assert victim.read_text() == "precious"
    assert not os.path.islink(path) and torch.load(path, weights_only=True)["epoch"] == 0


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_save(tmp_path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    (d / ".checkpoint_epoch_00002.pyth.k3j9x_.tmp").write_bytes(b"half a file")  # SIGKILL mid-write
    (d / "notes.tmp").write_text("not ours")
    _saved(tmp_path, epoch=2)
    assert sorted(os.listdir(d)) == ["checkpoint_epoch_00003.pyth", "notes.tmp"]


def test_the_finished_file_has_the_umask_permissions_not_the_temp_file_s(tmp_path):
    old = os.umask(0o022)
    try:
        _, _, path = _saved(tmp_path)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


def _damaged(tmp_path, kind):
    """A file that is not a usable checkpoint, of each kind the reader can meet."""
    path = tmp_path / f"{kind}.pyth"
    _, _, good = _saved(tmp_path / "good")
    data = open(good, "rb").read()
    if kind == "text":
        path.write_text("epoch: 3\nthese are notes, not weights\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "zip_corrupt":  # the zip directory intact, the tensors' bytes overwritten
        path.write_bytes(data[:200] + bytes(len(data) - 400) + data[-200:])
    elif kind == "legacy_pickle_of_a_list":
        torch.save([1, 2, 3], path, _use_new_zipfile_serialization=False)
    elif kind == "no_model_state":
        torch.save({"state_dict": Net().state_dict()}, path)
    elif kind == "model_state_not_tensors":
        torch.save({"model_state": {"stem.weight": [1.0, 2.0]}}, path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("kind", ["text", "empty", "truncated", "zip_corrupt", "legacy_pickle_of_a_list", "no_model_state",
                                  "model_state_not_tensors", "directory", "fifo"])
def test_every_damaged_checkpoint_is_a_checkpoint_error_naming_the_file(tmp_path, kind):
    path = _damaged(tmp_path, kind)
    with pytest.raises(cu.CheckpointError) as e:
        cu.load_checkpoint(path, Net())
    assert f"'{path}'" in str(e.value) and "\n" not in str(e.value)


def test_a_mid_epoch_checkpoint_sorts_between_its_epochs_and_is_removed_by_a_newer_one(tmp_path):
    net, opt, _ = _saved(tmp_path, epoch=0)
    mid = cu.save_checkpoint(str(tmp_path), net, opt, 0, get_cfg(), iteration=7, resume_state={"world_size": 1, "rng": []})
    assert os.path.basename(mid) == "checkpoint_epoch_00001_iter_000007.pyth"
    assert cu.latest_checkpoint(str(tmp_path)) == mid
    info = cu.load_checkpoint(mid, Net())
    assert info["epoch"] == 0 and info["iteration"] == 7 and info["resume_state"] == {"world_size": 1, "rng": []}
    cu.save_checkpoint(str(tmp_path), net, opt, 1, get_cfg())
    assert _only_checkpoints_left(tmp_path) == ["checkpoint_epoch_00001.pyth", "checkpoint_epoch_00002.pyth"]
