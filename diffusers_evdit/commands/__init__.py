"""Subcommands of ``evdit``: each module here defines ``register(subparsers)``, found automatically by the CLI."""

import argparse


def positive_int(text: str) -> int:
    """An argparse type for counts (steps, frames, pixels, prompts, rounds): an integer >= 1, else a usage error
    naming the flag, before any model is loaded.

        >>> positive_int("4")
        4
        >>> positive_int("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected an integer >= 1, got '0'
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value
