"""The ``evdit`` command line. Each subcommand lives in :mod:`diffusers_evdit.commands` (one module each, with a
``register(subparsers)`` function), so features add commands without touching this file. Every subcommand takes
``-q/--quiet`` (no progress, no info lines, library warnings off) and ``-v/--verbose`` (per-step detail, library info).

    evdit smoke                      # tiny random models: install plans, check the kernels agree, time CPU forwards
    evdit plan uniform --layers 30 --k 2 --out plan.json
    evdit plan show plan.json --frames 13 --tokens-per-frame 1350 --text 226 --text-position first
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from . import commands


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    flags = group.add_mutually_exclusive_group()
    # SUPPRESS: a nested subcommand and its parent both take the flags without overwriting each other's value
    flags.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress and no info lines (results and errors still print)")
    flags.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="more detail: per-step lines, diffusers' own progress bars on a terminal, library info")


class _Subcommands:
    """``add_subparsers()``'s action, giving every parser it adds (and their own subcommands) the output flags."""

    def __init__(self, action):
        self._action = action

    def add_parser(self, *args, **kwargs) -> argparse.ArgumentParser:
        parser = self._action.add_parser(*args, **kwargs)
        _add_output_flags(parser)
        parser.add_subparsers = lambda **kw: _Subcommands(argparse.ArgumentParser.add_subparsers(parser, **kw))
        return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evdit", description="Efficient-vDiT tile-sparse attention for diffusers.")
    sub = _Subcommands(parser.add_subparsers(dest="command", required=True))
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``evdit`` console script."""
    from .progress import progress_mode, set_verbosity

    args = build_parser().parse_args(argv)
    args.quiet, args.verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    # the process's own command line, for subcommands that relaunch it (``generate --cp N`` under torchrun); None when
    # this call's arguments came from elsewhere
    own = sys.argv[1:]
    args.command_line = own if argv is None or list(argv) == own else None
    set_verbosity(args.quiet, args.verbose, bars=progress_mode(args.quiet) == "bar")
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, NotImplementedError) as err:
        print(f"evdit: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `evdit plan show ... | head`: the reader left; end quietly, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141  # the shell's status for a process ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
