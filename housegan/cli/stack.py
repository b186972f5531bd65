"""``housegan stack up|down|status``: the embedded local servers."""

from __future__ import annotations

import argparse

from housegan import stack
from housegan.config import get_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stack", help="start/stop the local servers: S3 (SeaweedFS), MLflow, Prefect, the app"
    )
    parser.add_argument("action", choices=("up", "down", "status", "env"))
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = get_settings().stack
    access_key, secret_key = stack.credentials(
        settings.dir,
        settings.access_key,
        settings.secret_key.get_secret_value() if settings.secret_key else None,
    )
    if args.action == "up":
        services = stack.up(
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
        )
        for name, service in services.items():
            print(f"{name:8s} {service.endpoint}  (pid {service.pid}, log {service.log})")
        print("point clients at it with:  eval $(housegan stack env)")
    elif args.action == "down":
        stopped = stack.down(settings.dir)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    elif args.action == "status":
        services = stack.status(settings.dir)
        if not services:
            print("stack: not started")
        for name, (service, alive) in services.items():
            state = "running" if alive else "stopped"
            print(f"{name}: {state} {service.endpoint} (pid {service.pid})")
        return 0 if services and all(alive for _, alive in services.values()) else 1
    else:  # env
        running = {n: s for n, (s, alive) in stack.status(settings.dir).items() if alive}
        for key, value in stack.stack_env(running, access_key, secret_key).items():
            print(f"export {key}={value}")
    return 0
