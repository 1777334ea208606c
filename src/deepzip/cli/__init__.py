"""The ``deepzip`` command line: the only place that prints to the terminal or exits.

Every command has ``--help``, shows progress bars on long work, and on error exits non-zero
with one clear line (``deepzip: error: ...``). A ``SIGTERM`` stops a command as Ctrl-C does, so
that a file being written is removed rather than left as a temporary file.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from deepzip.cli._common import _os_error, err_console
from deepzip.cli.parser import build_parser
from deepzip.errors import DeepZipError

__all__ = ["build_parser", "main"]

# terminal control sequences (torch.load's refusal puts bold on and off in its message)
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deepzip`` command. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger("deepzip")
    level = logger.level
    if args.verbose:  # deepzip's own debug messages, not those of every library it imports
        logger.setLevel(logging.DEBUG)
    try:
        return _run(args)
    finally:  # for this command only: a later main() in the process without -v logs none
        logger.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; the exit code, with errors and signals as one line."""
    try:
        with _terminate_as_interrupt():
            code: int = args.func(args)
    except _Terminated:
        err_console.print("deepzip: terminated", markup=False)
        return 128 + signal.SIGTERM
    except BrokenPipeError:  # the reader went away (`deepzip inspect x.dzip --json | head`)
        _drop_stdout()
        return 1  # as Python, and rich for the tables, exit on a closed pipe: no error line
    except (DeepZipError, OSError) as exc:  # a file that cannot be read or written
        text = _os_error(exc) if isinstance(exc, OSError) else str(exc)
        one_line = " ".join(_ESCAPES.sub("", text).split())
        err_console.print(
            f"deepzip: error: {one_line}", markup=False, highlight=False, soft_wrap=True
        )
        return 2
    except KeyboardInterrupt:
        err_console.print("deepzip: interrupted", markup=False)
        return 130
    return code


def _drop_stdout() -> None:
    """Point standard output at ``os.devnull``, so that the interpreter's last flush of what
    is still buffered does not fail on the closed pipe again ("Exception ignored ...")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (output captured in memory)
        pass


class _Terminated(KeyboardInterrupt):
    """Raised by the ``SIGTERM`` handler: unwinds like ``KeyboardInterrupt`` (``finally``
    blocks and atomic writes clean up) without being taken for an error. It is one, so that
    code letting ``KeyboardInterrupt`` through a broad ``except`` lets it through too (ANS
    decoding turned it into "invalid ANS payload")."""


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While a command runs, turn ``SIGTERM`` into :class:`_Terminated` (the previous handler
    is put back after; only the main thread can set one, elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
