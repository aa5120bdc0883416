"""The error every data module may raise about files on disk; its own module so that build.py and
demo.py, which import each other's work, both depend on it and not on each other."""

from revvit.utils.errors import UserError

__all__ = ["DataLayoutError"]


class DataLayoutError(UserError, ValueError):
    """The data on disk does not have the layout the data set reads; the message names the path and the fix."""
