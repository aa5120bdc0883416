"""stall.batches: a loader read that stalls past DATA_LOADER.TIMEOUT ends in one paragraph, with or without workers."""

import os

import pytest
from torch.utils.data import DataLoader, Dataset

from revvit.config import get_cfg, merge_opts
from revvit.engine.stall import DataStallError, batches

pytestmark = pytest.mark.slow  # every test here spawns processes or trains


class _Stuck(Dataset):
    def __init__(self, fifo):
        self.fifo = fifo

    def __len__(self):
        return 2

    def __getitem__(self, i):
        with open(self.fifo, "rb") as f:  # blocks: nobody writes to the FIFO
            return f.read()


def test_a_stalled_loader_worker_ends_after_the_loader_timeout(tmp_path):
    fifo = tmp_path / "stuck.jpg"
    os.mkfifo(fifo)
    cfg = get_cfg()
    merge_opts(cfg, ["DATA_LOADER.TIMEOUT", "2", "DATA.PATH_TO_DATA_DIR", str(tmp_path)])
    loader = DataLoader(_Stuck(str(fifo)), batch_size=1, num_workers=1, timeout=cfg.DATA_LOADER.TIMEOUT)
    with pytest.raises(DataStallError, match=r"rank 0: a data loader worker produced no batch in DATA_LOADER.TIMEOUT 2 s"):
        next(iter(batches(loader, cfg)))
    # Without workers (DataLoader has no timeout then) the same read ends the same way.
    loader = DataLoader(_Stuck(str(fifo)), batch_size=1, num_workers=0)
    with pytest.raises(DataStallError, match=r"rank 0: the data loader \(DATA_LOADER.NUM_WORKERS 0\) produced no batch in "
                                             r"DATA_LOADER.TIMEOUT 2 s; it is blocked reading its files"):
        next(iter(batches(loader, cfg)))
