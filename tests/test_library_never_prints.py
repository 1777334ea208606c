"""The library never prints or exits: only ``deepzip.cli`` talks to the terminal (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import deepzip

PACKAGE = Path(deepzip.__file__).parent
CLI = PACKAGE / "cli"
FORBIDDEN_NAMES = frozenset({"print", "exit", "quit", "breakpoint", "input"})
FORBIDDEN_ATTRIBUTES = frozenset({("sys", "exit"), ("os", "_exit"), ("os", "abort")})
TERMINAL_STREAMS = frozenset({"stdout", "stderr", "stdin"})


def offences(source: str) -> list[str]:
    """``"line: what"`` for every call that prints, reads the terminal or ends the process, and
    every use of ``sys.stdout``/``stderr``/``stdin``: under any name ``sys`` or ``os`` is
    imported as, imported from them by name, through a ``.print()`` method (rich's
    ``Console``, ``pprint``), or by raising ``SystemExit``."""
    found = []
    tree = ast.parse(source)
    modules = {"sys": "sys", "os": "os"}  # local name -> module, for `import sys as s`
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in ("sys", "os"):
                    modules[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("sys", "os", "builtins"):
            for alias in node.names:
                pair = (node.module, alias.name)
                if (
                    pair in FORBIDDEN_ATTRIBUTES
                    or (node.module == "sys" and alias.name in TERMINAL_STREAMS)
                    or (node.module == "builtins" and alias.name in FORBIDDEN_NAMES)
                ):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id == "SystemExit":
                found.append(f"{node.lineno}: raise SystemExit")
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and modules.get(node.value.id) == "sys"
            and node.attr in TERMINAL_STREAMS
        ):
            found.append(f"{node.lineno}: sys.{node.attr}")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in FORBIDDEN_NAMES:
            found.append(f"{node.lineno}: {func.id}()")
        elif (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and (modules.get(func.value.id), func.attr) in FORBIDDEN_ATTRIBUTES
        ):
            found.append(f"{node.lineno}: {modules[func.value.id]}.{func.attr}()")
        elif isinstance(func, ast.Attribute) and func.attr in ("print", "pprint"):
            found.append(f"{node.lineno}: .{func.attr}()")
    return found


def library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if CLI not in p.parents)


def test_the_check_finds_what_it_looks_for() -> None:
    source = (
        "import os, sys\nprint('x')\nsys.exit(1)\nos._exit(0)\nlogger.info('fine')\n"
        "sys.stderr.write('x')\n"
    )
    assert sorted(offences(source)) == [
        "2: print()",
        "3: sys.exit()",
        "4: os._exit()",
        "6: sys.stderr",
    ]
    # other spellings of the same thing (each passed the check before it looked for them)
    source = (
        "import sys as _s\n_s.exit(1)\n_s.stdout.write('x')\nfrom sys import stdout\n"
        "from os import _exit\nConsole().print('x')\nraise SystemExit(2)\nraise SystemExit\n"
        "try:\n    pass\nexcept (KeyboardInterrupt, SystemExit):\n    raise\n"
        "fh.write(b'x')\nlogger.warning('fine')\n"
    )
    assert sorted(offences(source)) == [
        "2: sys.exit()",
        "3: sys.stdout",
        "4: from sys import stdout",
        "5: from os import _exit",
        "6: .print()",
        "7: raise SystemExit",
        "8: raise SystemExit",
    ]


def test_the_library_has_modules_to_check() -> None:
    names = {p.relative_to(PACKAGE).as_posix() for p in library_modules()}
    assert {"pipeline/run.py", "config/recipe.py", "format/dzip_reader.py"} <= names
    assert not any(n.startswith("cli/") for n in names)


@pytest.mark.parametrize("path", library_modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_module_outside_the_cli_prints_or_exits(path: Path) -> None:
    assert offences(path.read_text("utf-8")) == [], path.relative_to(PACKAGE).as_posix()
