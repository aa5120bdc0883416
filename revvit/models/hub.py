"""Official checkpoint files through torch hub's cache: downloaded once per machine, then read from disk.

A file is kept in ``torch.hub.get_dir()/checkpoints/`` under its published name (``TORCH_HOME`` moves
that directory), so a file copied there by hand is used without any network. Which model has which
file is the name table's business (``models/factory.py``); this module only fetches.
"""

import os
import urllib.error

import torch

from revvit.utils import distributed as du
from revvit.utils import logging
from revvit.utils.checkpoint import CheckpointError

logger = logging.get_logger(__name__)

__all__ = ["OFFICIAL_URL", "official_file"]

OFFICIAL_URL = "https://dl.fbaipublicfiles.com/pyslowfast/rev/"


def official_file(file_name, what, progress=True):
    """Local path of ``OFFICIAL_URL + file_name``, downloaded into torch hub's cache if absent.

    One process per machine (local rank 0) downloads while the others wait at a barrier; every
    process then checks the file, so a failed download stops all of them with the same message
    instead of leaving the others waiting in a collective. ``what`` names the file in that message.
    """
    path = os.path.join(torch.hub.get_dir(), "checkpoints", file_name)
    url = OFFICIAL_URL + file_name
    reason = "the download failed on another process"
    if not os.path.isfile(path) and du.get_local_rank() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        logger.info(f"Downloading {url} to {path}")
        try:
            torch.hub.download_url_to_file(url, path, progress=progress)  # to a temporary file, then renamed
        except (urllib.error.URLError, OSError) as e:
            reason = str(e)
    du.barrier()
    if not os.path.isfile(path):
        raise CheckpointError(
            f"Cannot download {what} from {url} ({reason}). Without network, copy "
            f"{file_name} to {path} (the directory follows TORCH_HOME)."
        )
    return path
