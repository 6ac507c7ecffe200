"""The ``regiongpt`` command: one sub-command per module in ``regiongpt.cli``.

Each command module exposes ``register(subparsers) -> None``, which adds its parser and sets
``func`` (a callable taking the parsed arguments and returning an exit code). User errors
(:class:`regiongpt.errors.RegionGPTError`, missing files) are printed as one line, without
a traceback, with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

from regiongpt.errors import USER_ERRORS

# Sub-command modules, in the order `--help` lists them.
COMMAND_MODULES = ("example", "describe", "ground", "chat", "train", "eval", "synth", "convert", "data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regiongpt",
        description="RegionGPT: a vision-language model that understands image regions.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"regiongpt.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from regiongpt import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"regiongpt {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return int(args.func(args) or 0)
    except USER_ERRORS as error:
        print(f"regiongpt {args.command}: error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"regiongpt {args.command}: error: file not found: {error.filename or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"regiongpt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
