"""``python -m deepzip``: the ``deepzip`` command (the same as ``python -m deepzip.cli``).

Only ``python -m`` runs it: importing this module does nothing. The command line, and the
exit with its status, stay in :mod:`deepzip.cli` (the library never exits).
"""

from __future__ import annotations

import runpy

__all__: list[str] = []

if __name__ == "__main__":
    runpy.run_module("deepzip.cli", run_name="__main__", alter_sys=True)
