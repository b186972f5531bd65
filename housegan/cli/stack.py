"""``housegan stack up|down|status``: the embedded local servers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from housegan import stack
from housegan.config import StackSettings, get_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stack",
        help="start/stop the local servers: S3, PostgreSQL, MLflow, Prefect + workers, the app",
    )
    parser.add_argument("action", choices=("up", "down", "status", "env"))
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgres"),
        help="with up: where MLflow and Prefect keep their stores (default: stack.db)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = get_settings().stack
    access_key, secret_key = stack.credentials(
        settings.dir,
        settings.access_key,
        settings.secret_key.get_secret_value() if settings.secret_key else None,
    )
    if args.action == "up":
        try:
            services = _up(args, settings, access_key, secret_key)
        except stack.StackError as error:
            print(f"housegan stack up: {error}", file=sys.stderr)
            return 2
        for name, service in services.items():
            print(f"{name:8s} {service.endpoint}  (pid {service.pid}, log {service.log})")
        print("point clients at it with:  eval $(housegan stack env)")
    elif args.action == "down":
        stopped = stack.down(settings.dir)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    elif args.action == "status":
        return _status(settings.dir)
    else:  # env
        running = {n: s for n, (s, alive) in stack.status(settings.dir).items() if alive}
        for key, value in stack.stack_env(running, access_key, secret_key).items():
            print(f"export {key}={value}")
    return 0


def _status(stack_dir: Path) -> int:
    """The services, then (Prefect running) each pool's workers and deployments."""
    services = stack.status(stack_dir)
    if not services:
        print("stack: not started")
    for name, (service, alive) in services.items():
        state = "running" if alive else "stopped"
        backend = f" [{service.backend}]" if service.backend else ""
        print(f"{name}: {state} {service.endpoint} (pid {service.pid}){backend}")
    prefect = services.get("prefect")
    if prefect and prefect[1]:
        try:
            pools = stack.prefect_overview(f"{prefect[0].endpoint}/api")
        except OSError as error:
            print(f"pools: Prefect API unreachable ({error})")
            return 1
        for pool in pools:
            workers = ", ".join(f"{n} {s}" for n, s in pool.workers.items()) or "no worker"
            print(f"pool {pool.name} ({pool.type}): {workers}")
            print(f"  deployments: {', '.join(pool.deployments) or 'none'}")
    return 0 if services and all(alive for _, alive in services.values()) else 1


def _up(
    args: argparse.Namespace, settings: StackSettings, access_key: str, secret_key: str
) -> dict[str, stack.Service]:
    return stack.up(
        settings.dir,
        host=settings.host,
        s3_port=settings.s3_port,
        access_key=access_key,
        secret_key=secret_key,
        buckets=settings.buckets,
        timeout_s=settings.startup_timeout_s,
        mlflow_port=settings.mlflow_port,
        mlflow_artifacts_uri=settings.mlflow_artifacts_uri,
        prefect_port=settings.prefect_port,
        app_port=settings.app_port,
        app_timeout_s=get_settings().app.startup_timeout_s,
        db=args.db or settings.db,
        postgres_port=settings.postgres_port or None,
        pools=settings.pools if settings.workers else (),
    )
