"""``housegan label import|export``: human labels of image types."""

from __future__ import annotations

import argparse
import json

from housegan.cli import UserError
from housegan.config import get_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("label", help="import labels, or export photos to label next")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    imports = actions.add_parser("import", help="append a CSV/Parquet of labels to the store")
    imports.add_argument("file", help="CSV or Parquet: key or sha256, label[, labeller, time]")
    imports.add_argument("--labeller", help="recorded for rows that name no labeller")
    exports = actions.add_parser("export", help="write a CSV of photos to label, least sure first")
    exports.add_argument("--n", type=int, default=100, help="how many photos")
    exports.add_argument("--out", default="to-label.csv", help="CSV file or URI to write")
    exports.add_argument(
        "--curated", help="curated manifest to draw from (default: the store's latest)"
    )
    for sub in (imports, exports):
        sub.add_argument("--store", help="store root URI (default: settings store_uri)")
        sub.add_argument("--json", action="store_true", help="last stdout line: JSON summary")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from housegan import labels, storage

    settings = get_settings()
    store = storage.normalize_uri(args.store or settings.store_uri)
    options = settings.storage_options()
    try:
        if args.action == "import":
            summary = _import(args, store, options)
        else:
            summary = _export(args, store, options)
    except (labels.LabelError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(summary))
    return 0


def _import(args: argparse.Namespace, store: str, options: dict) -> dict:
    from housegan import labels, storage

    result = labels.import_labels(storage.normalize_uri(args.file), store, args.labeller, options)
    counts = ", ".join(f"{k}={v}" for k, v in sorted(result.counts.items()))
    print(f"imported {result.rows} labels ({counts}) -> {result.part_uri}")
    if result.skipped:
        print(f"skipped {result.skipped} rows with an empty label")
    return {"part_uri": result.part_uri, "rows": result.rows, "counts": result.counts}


def _export(args: argparse.Namespace, store: str, options: dict) -> dict:
    from housegan import curate, labels, manifest, storage

    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    collection = manifest.collection_uri(store, curate.CURATED_COLLECTION)
    source = args.curated or collection
    try:
        curated_uri = manifest.resolve(source, options)
    except FileNotFoundError:
        raise UserError(f"no curated manifest at {source}: run `housegan curate` first") from None
    curated = manifest.read(curated_uri, options)
    known = labels.labels_by_content(labels.read_labels(labels.labels_uri(store), options), curated)
    todo = labels.export_candidates(curated, set(known.index), args.n).assign(label="")
    out = storage.normalize_uri(args.out)
    storage.write_bytes_atomic(out, todo.to_csv(index=False).encode(), options)
    print(f"wrote {len(todo)} photos to label to {out} (fill in 'label', then `label import`)")
    return {"out": out, "rows": len(todo), "curated_uri": curated_uri}
