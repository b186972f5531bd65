"""``housegan ec2 up|down|status``: the EC2 GPU worker that polls the Prefect work pool ``gpu``.

Flags override the ``ec2`` config section for one call; see ``housegan.ec2``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from housegan.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ec2",
        help="launch/list/terminate the EC2 GPU worker (a Prefect process worker, pool gpu)",
        description="Instances are found by their tags (housegan:role=gpu-worker, "
        "housegan:pool=POOL). Settings: the `ec2` config section; flags override it.",
    )
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--pool", help="Prefect work pool (default: ec2.pool, 'gpu')")
    parser.add_argument("--region")
    up = parser.add_argument_group("up")
    up.add_argument("--ami", help="AMI id or resolve:ssm:<parameter> of a GPU image")
    up.add_argument("--launch-template", help="launch template id (lt-...) or name")
    up.add_argument("--instance-type", help="default: ec2.instance_type (g5.xlarge)")
    market = up.add_mutually_exclusive_group()
    market.add_argument("--spot", dest="market", action="store_const", const="spot")
    market.add_argument("--on-demand", dest="market", action="store_const", const="on-demand")
    up.add_argument("--instance-profile", help="IAM instance profile name or ARN")
    up.add_argument("--subnet", dest="subnet_id")
    up.add_argument(
        "--security-group", dest="security_group_ids", action="append", help="repeatable"
    )
    up.add_argument("--idle-minutes", type=int, help="terminate after this long without a run")
    up.add_argument("--source", help="git URL (https) or wheel URI the machine installs")
    up.add_argument("--ref", dest="source_ref", help="git branch, tag or commit")
    up.add_argument("--force", action="store_true", help="launch even if a worker is live")
    up.add_argument(
        "--dry-run", action="store_true", help="print the user data and request; launch nothing"
    )
    parser.add_argument("--all", action="store_true", help="status: terminated ones too")
    parser.add_argument(
        "--instance-id", dest="instance_ids", action="append", default=[], help="down: only these"
    )
    parser.set_defaults(handler=run)


_OVERRIDES = (
    "pool",
    "region",
    "ami",
    "launch_template",
    "instance_type",
    "market",
    "instance_profile",
    "subnet_id",
    "security_group_ids",
    "idle_minutes",
    "source",
    "source_ref",
)


def run(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError
    from pydantic import ValidationError

    from housegan import ec2
    from housegan.config import get_settings

    settings = get_settings()
    try:
        cfg = settings.ec2.with_overrides({name: getattr(args, name) for name in _OVERRIDES})
    except ValidationError as exc:
        raise UserError(str(exc)) from exc
    settings = settings.model_copy(update={"ec2": cfg})
    try:
        if args.action == "up":
            return _up(ec2, settings, args)
        if args.action == "down":
            ids = ec2.down(settings, instance_ids=args.instance_ids)
            print(f"terminating: {', '.join(ids)}" if ids else f"no live worker in pool {cfg.pool}")
            return 0
        workers = ec2.status(settings, include_terminated=args.all)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    except (BotoCoreError, ClientError) as exc:  # no credentials, access denied, bad AMI, ...
        raise UserError(f"EC2: {exc}") from exc
    if not workers:
        print(f"no workers in pool {cfg.pool}")
    for worker in workers:
        print(_line(worker))
    return 0


def _up(ec2: Any, settings: Any, args: argparse.Namespace) -> int:
    if args.dry_run:
        user_data = ec2.render_user_data(settings)
        request = ec2.launch_request(settings.ec2, user_data)
        print(user_data)
        print(json.dumps({**request, "UserData": f"<{len(user_data)} bytes above>"}, indent=2))
        return 0
    result = ec2.up(settings, force=args.force)
    for worker in result.existing if not result.launched else result.launched:
        verb = "launched" if result.launched else "already live"
        print(f"{verb}: {_line(worker)}")
    if not result.launched:
        print("(--force launches another)")
    return 0


def _line(worker: Any) -> str:
    launched = worker.launch_time.isoformat(timespec="seconds") if worker.launch_time else "-"
    return (
        f"{worker.instance_id}  {worker.state:13s} {worker.instance_type:12s} "
        f"{worker.market:9s} launched {launched}  {worker.private_ip or ''}"
    ).rstrip()
