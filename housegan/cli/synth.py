"""``housegan synth``: write a synthetic listing bucket (photos + defects) and its truth Parquet."""

from __future__ import annotations

import argparse
import json

from housegan.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth", help="draw procedural listing photos (with real-bucket defects) into a URI"
    )
    parser.add_argument("--dest", required=True, help="where photos go, e.g. s3://listings/raw")
    parser.add_argument("--cities", type=int, required=True, help="number of cities")
    parser.add_argument("--per-city", type=int, required=True, help="listings per city")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> identical bytes")
    parser.add_argument("--truth", help="truth Parquet URI (default: <dest>_truth.parquet)")
    parser.add_argument("--no-defects", action="store_true", help="only clean photos")
    parser.add_argument("--json", action="store_true", help="print a JSON summary line last")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from housegan import synth
    from housegan.config import get_settings

    try:
        result = synth.synthesize(
            args.dest,
            cities=args.cities,
            per_city=args.per_city,
            seed=args.seed,
            storage_options=get_settings().storage_options(),
            truth_uri=args.truth,
            defects=not args.no_defects,
            progress=True,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    except OSError as exc:  # FileNotFoundError, PermissionError, ...
        raise UserError(f"cannot write to {args.dest}: {exc}") from exc
    kinds = {k: n for k, n in result.counts.items() if k in synth.KINDS}
    defects = {k: n for k, n in result.counts.items() if k not in synth.KINDS}
    print(f"wrote {result.objects} objects under {args.dest}")
    print("  clean photos: " + ", ".join(f"{k} {n}" for k, n in kinds.items()))
    if defects:
        print("  defects:      " + ", ".join(f"{k} {n}" for k, n in defects.items()))
    print(f"  truth:        {result.truth_uri}")
    if args.json:
        print(
            json.dumps(
                {"truth_uri": result.truth_uri, "objects": result.objects, "counts": result.counts}
            )
        )
    return 0
