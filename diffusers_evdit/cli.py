"""The ``evdit`` command line. Each subcommand lives in :mod:`diffusers_evdit.commands` (one module each, with a
``register(subparsers)`` function), so features add commands without touching this file.

    evdit smoke                      # tiny random models: install plans, check the kernels agree, time CPU forwards
    evdit plan uniform --layers 30 --k 2 --out plan.json
    evdit plan show plan.json --frames 13 --tokens-per-frame 1350 --text 226 --text-position first
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evdit", description="Efficient-vDiT tile-sparse attention for diffusers.")
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``evdit`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, NotImplementedError) as err:
        print(f"evdit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
