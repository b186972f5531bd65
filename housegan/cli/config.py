"""``housegan config``: the effective settings (defaults < YAML < environment)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="print the effective configuration as YAML")
    parser.add_argument("action", choices=("show",), nargs="?", default="show")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from housegan.config import get_settings

    print(yaml.safe_dump(get_settings().model_dump(mode="json"), sort_keys=False), end="")
    return 0
