"""Subcommands of ``evdit``: each module here defines ``register(subparsers)``, found automatically by the CLI."""

import argparse


def _integer_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
    return value


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
    return _integer_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type for counts where 0 means "none" or "the default" (``--threads 0``: torch's choice,
    ``--refine-rounds 0``, ``--text 0``): an integer >= 0, else a usage error naming the flag.

        >>> non_negative_int("0")
        0
        >>> non_negative_int("-1")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected an integer >= 0, got '-1'
    """
    return _integer_at_least(text, 0)
