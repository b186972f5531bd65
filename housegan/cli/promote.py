"""``housegan promote``: the promotion gate (champion / challenger), and ``--rollback``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from housegan.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "promote",
        help="make a registered version champion if it passes the gate, else challenger",
        description="The candidate must copy no more than evaluate.max_copy_rate of its images "
        "and, when there is a champion, not be worse than it on FD and KID beyond "
        "evaluate.fd_tolerance / kid_tolerance, on the same evaluation seeds. Missing "
        "evaluations are run (and logged) first.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="the candidate, models:/NAME/VERSION (or @ALIAS); with --rollback, models:/NAME",
    )
    parser.add_argument("--dataset", help="packed dataset (default: the candidate's training data)")
    parser.add_argument(
        "--rollback", action="store_true", help="point champion back at the 'previous' version"
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON summary as the last stdout line"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from housegan.cli.evaluate import progress_bars
    from housegan.config import get_settings
    from housegan.steps.evaluate import PromoteInput, promote_model

    settings = get_settings()
    bars: list[Any] = []
    try:
        if args.rollback:
            return _rollback(args, settings)
        result = promote_model.run(
            PromoteInput(args.model, args.dataset),
            settings,
            storage_options=settings.storage_options(),
            progress=progress_bars(bars),
        )
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    except MlflowException as exc:
        raise UserError(f"cannot promote {args.model}: {exc.message}") from None
    finally:
        for bar in bars:
            bar.close()
    print(f"{result.name} version {result.version}: {result.decision}")
    print(f"  {result.reason}")
    if args.json:
        print(
            json.dumps(
                {
                    "name": result.name,
                    "version": result.version,
                    "decision": result.decision,
                    "reason": result.reason,
                }
            )
        )
    return 0


def _rollback(args: argparse.Namespace, settings: Any) -> int:
    from housegan.evaluate import promote

    name = _model_name(args.model)
    done = promote.rollback(name, settings.mlflow_tracking_uri)
    print(
        f"{done.name}: champion is version {done.restored} again"
        + (f" (was {done.demoted})" if done.demoted else "")
    )
    if args.json:
        print(json.dumps({"name": done.name, "champion": done.restored, "demoted": done.demoted}))
    return 0


def _model_name(model: str) -> str:
    """NAME of models:/NAME, models:/NAME@ALIAS or models:/NAME/VERSION."""
    rest = model.removeprefix("models:/")
    name = rest.split("@", 1)[0].split("/", 1)[0]
    if rest == model or not name:
        raise UserError(f"--rollback needs models:/NAME, got {model}")
    return name
