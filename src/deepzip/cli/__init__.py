"""The ``deepzip`` command line: the only place that prints to the terminal or exits.

Every command has ``--help``, shows progress bars on long work, and on error exits non-zero
with one clear line (``deepzip: error: ...``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from deepzip.cli._common import _os_error, err_console
from deepzip.cli.parser import build_parser
from deepzip.errors import DeepZipError

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deepzip`` command. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except (DeepZipError, OSError) as exc:  # a file that cannot be read or written
        text = _os_error(exc) if isinstance(exc, OSError) else str(exc)
        one_line = " ".join(text.split())
        err_console.print(
            f"deepzip: error: {one_line}", markup=False, highlight=False, soft_wrap=True
        )
        return 2
    except KeyboardInterrupt:
        err_console.print("deepzip: interrupted", markup=False)
        return 130
    return code
