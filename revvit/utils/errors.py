"""The errors a user can fix, as opposed to bugs: the command line prints them as one paragraph.

``UserError`` is raised for a mistake in the input or a fault of the environment (a missing or
unwritable file, a full disk, a loss that diverged, a stalled process); the message names the key,
file or rank and what to change. ``run_net.py`` prints it without a traceback and exits 1. Anything
else is a bug in revvit and keeps its traceback. ``Interrupted`` is Ctrl-C, with where the run
stopped and how to continue; it exits 130 as a shell does for SIGINT.
"""

__all__ = ["Interrupted", "UserError"]


class UserError(Exception):
    """A mistake or an environment fault the user can fix; its message is the whole report."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: the message says where the run stopped and how to resume it.

    A subclass of KeyboardInterrupt, so that ``except Exception`` clauses on the way out do not
    swallow it.
    """
