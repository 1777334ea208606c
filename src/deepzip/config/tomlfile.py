"""TOML files in and out, with errors that name the file."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from deepzip._atomic import atomic_write_text
from deepzip.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


MAX_TOML_BYTES = 16 * 2**20
"""The largest TOML file :func:`load_toml` reads (a recipe is a few kilobytes)."""


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file.

    Raises:
        ConfigError: naming the file and the cause: it does not exist, cannot be read (a
            directory, a FIFO or device, no permission...), is larger than
            :data:`MAX_TOML_BYTES`, is not UTF-8 text, or is not valid TOML.
    """
    p = Path(path)
    try:
        if p.exists() and not p.is_file():  # a FIFO would block the open, a device not end
            what = "a directory" if p.is_dir() else "not a regular file"
            raise ConfigError(f"{p}: cannot read the recipe: {what}")
        with p.open("rb") as fh:
            raw = fh.read(MAX_TOML_BYTES + 1)
        if len(raw) > MAX_TOML_BYTES:
            raise ConfigError(
                f"{p}: larger than {MAX_TOML_BYTES:,} bytes, too large for a recipe file"
            )
        return tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"recipe file not found: {p}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "TOML files must be UTF-8"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the recipe: {exc.strerror or exc}") from exc


def save_toml(data: Mapping[str, Any], path: str | Path) -> None:
    """Write a mapping as TOML (atomically: temp file then rename)."""
    atomic_write_text(path, tomli_w.dumps(dict(data)))
