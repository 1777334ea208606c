"""What produced a result: this deepzip's version and a fingerprint of its code.

A run directory records both, and a resume under other code is refused: stages finished by one
version and continued by another give a file that neither would write from scratch, and the
resumed run's promise (a ``.dzip`` byte-identical to an uninterrupted run's) would not hold.
The version alone cannot tell two states of a working tree apart, so the code is hashed too.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from deepzip._version import __version__

__all__ = ["code_sha256", "deepzip_identity"]

_PACKAGE = Path(__file__).resolve().parent
# the files whose content decides what deepzip computes: its modules and its built-in recipes
_SUFFIXES = frozenset({".py", ".toml"})


def code_sha256(root: str | Path | None = None) -> str:
    """SHA-256 over the relative paths and bytes of the package's ``.py`` and ``.toml`` files.

    ``root`` defaults to the installed ``deepzip`` package. The hash does not depend on where
    the package lies or on the order the file system lists it in; ``__pycache__`` is ignored.
    """
    if root is None:
        return _installed_code_sha256()
    base = Path(root)
    digest = hashlib.sha256()
    files = sorted(
        p.relative_to(base).as_posix()
        for p in base.rglob("*")
        if p.suffix in _SUFFIXES and p.is_file() and "__pycache__" not in p.parts
    )
    for rel in files:
        data = (base / rel).read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


@functools.cache
def _installed_code_sha256() -> str:
    return code_sha256(_PACKAGE)


def deepzip_identity() -> dict[str, str]:
    """``{"version": ..., "code_sha256": ...}`` of the running deepzip."""
    return {"version": __version__, "code_sha256": _installed_code_sha256()}
