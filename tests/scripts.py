"""Running a script's ``main`` in the test process (no interpreter start-up), as the CLI tests do."""

from __future__ import annotations

from types import ModuleType


def run_main(module: ModuleType, argv: list[str], capsys) -> tuple[int, str, str]:
    """``module.main(module.get_arguments(argv))``: exit code (argparse's and ``die``'s included),
    stdout, stderr."""
    try:
        code = module.main(module.get_arguments(argv)) or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def run_call(fn, capsys) -> tuple[int, str, str]:
    """``fn()`` (a script's entry point with its arguments bound): exit code, stdout, stderr."""
    try:
        code = fn() or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
