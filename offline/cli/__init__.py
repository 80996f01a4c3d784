"""The ``offline`` command line: parsing and formatting only; every action is a library call.

Library errors (:class:`offline.errors.OfflineError`) become one ``Error: ...`` line on stderr and
the exit code of the README's command reference; ``--verbose`` adds the traceback. The root group
is :mod:`offline.cli.root`; :mod:`offline.cli.commands` attaches every command group to it.
"""

from __future__ import annotations

from . import commands  # noqa: E402, F401, I001  (each command module attaches its group to ``main``)
from .inprocess import Streams, run_in_process  # noqa: E402  (the agent's entry point)
from .root import OfflineGroup, main  # first: it installs the network guard

__all__ = ["OfflineGroup", "Streams", "main", "run_in_process"]
