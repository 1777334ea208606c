"""The peer packages some benchmarks measure deepzip against: the ``[bench]`` extra."""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "install the [bench] extra: .venv/bin/pip install -e '.[bench]'"
"""How to get the peers, in the project's virtual environment."""


def require_peers(script: str, *modules: str, otherwise: str = "") -> None:
    """Stop ``script`` before it measures anything when a peer it needs is not installed.

    ``modules`` are import names; ``otherwise`` names a way to run without them, if any.
    """
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        alternative = f", or {otherwise}" if otherwise else ""
        raise SystemExit(
            f"{script} measures peers that are not installed ({', '.join(missing)}): "
            f"{INSTALL_HINT}{alternative}"
        )
