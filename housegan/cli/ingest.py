"""``housegan ingest``: bring the image manifest up to date with the source bucket."""

from __future__ import annotations

import argparse
import json
import sys

from housegan.cli import UserError
from housegan.config import get_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ingest", help="list the source, fetch new/changed photos, publish the image manifest"
    )
    parser.add_argument("--source", help="raw photos URI (default: settings source_uri)")
    parser.add_argument("--store", help="store root URI (default: settings store_uri)")
    parser.add_argument(
        "--json", action="store_true", help="print a JSON summary as the last stdout line"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from housegan.ingest import IngestError
    from housegan.steps.ingest import IngestInput, failure_summary, ingest_source

    settings = get_settings()
    bar: tqdm | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="obj", desc="fetch", file=sys.stderr)
        bar.update(done - bar.n)

    inputs = IngestInput(args.source or settings.source_uri, args.store or settings.store_uri)
    try:
        result = ingest_source.run(
            inputs, settings, storage_options=settings.storage_options(), progress=progress
        )
    except IngestError as exc:
        raise UserError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()

    state = "published" if result.published else "unchanged, nothing published"
    print(f"manifest: {result.manifest_uri} ({state})")
    print(f"listed {result.listed}, new {result.new}, downloaded {result.downloaded}")
    counts = ", ".join(f"{status}={n}" for status, n in result.counts.items())
    print(f"counts: {counts or 'no objects'}")
    if args.json:
        print(json.dumps(result.summary()))
    failure = failure_summary(result)
    if failure is not None:
        print(f"housegan ingest: {failure}; they will be fetched again next run", file=sys.stderr)
        return 1
    return 0
