"""Subcommands of ``evdit``: each module here defines ``register(subparsers)``, found automatically by the CLI."""
