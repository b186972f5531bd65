"""``housegan curate``: image manifest -> curated manifest (embed, types, funnel), no Prefect."""

from __future__ import annotations

import argparse
import json

from housegan.cli import UserError
from housegan.config import get_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "curate",
        help="embed, type and filter photos; publish the curated manifest and log to MLflow",
    )
    parser.add_argument(
        "--manifest", help="image manifest file or collection (default: the store's latest)"
    )
    parser.add_argument("--store", help="store root URI (default: settings store_uri)")
    parser.add_argument(
        "--labels", help="labels folder or CSV/Parquet file (default: <store>/labels)"
    )
    parser.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    parser.add_argument(
        "--json", action="store_true", help="print a JSON summary as the last stdout line"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from housegan import labels
    from housegan.steps.curate import CurateInput, run_curate

    settings = get_settings()
    options = settings.storage_options()
    try:
        source = CurateInput.resolve(
            args.manifest, args.store or settings.store_uri, args.labels, options
        )
        result = run_curate(
            source, settings, storage_options=options, progress=True, track=not args.no_mlflow
        )
    except (FileNotFoundError, labels.LabelError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(f"curated manifest: {result.curated_uri}")
    print(
        f"embeddings {result.embed.tag}: {result.embed.computed} computed, "
        f"{result.embed.reused} reused"
    )
    for stage, count in result.filter.funnel.items():
        print(f"  {stage:<20} {count}")
    dropped = ", ".join(f"{r}={n}" for r, n in result.filter.drop_counts.items() if n)
    print(f"dropped: {dropped or 'nothing'}")
    if result.finetune is not None:
        print(f"fine-tuned VGG16: held-out accuracy {result.finetune.holdout_accuracy}")
    if result.type_accuracy is not None:
        print(
            f"image types: held-out accuracy {result.type_accuracy:.3f} "
            f"on {result.types.labels_used} labels"
        )
    if result.mlflow_run_id:
        print(f"MLflow run: {result.mlflow_run_id}")
    if args.json:
        print(json.dumps(result.summary(), default=str))
    return 0
