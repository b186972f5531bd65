"""The ``housegan`` console entry point: one subcommand per stage and for the local stack.

Each subcommand lives in its own module here, exposing ``register(subparsers)``; heavy imports
(torch, prefect, mlflow) happen inside the handlers, so ``housegan --help`` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence


class UserError(Exception):
    """An error the user can act on: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="housegan",
        description="Listing photos in S3 -> curated data -> a conditional GAN per city.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Every module in this package is one subcommand: adding a stage needs no edit here.
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"housegan.cli.{module}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"housegan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"housegan {args.command}: interrupted", file=sys.stderr)
        return 130
