"""``make demo``: a synthetic listing bucket through the full refresh, on the local stack.

Draws ~500 listings over 5 cities into the source bucket, plays the human labeller (30 labels
per image type from the synthetic ground truth), runs the full refresh (train, evaluate, promote
to ``champion``) and prints where to look.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from prefect import flow

from flows.refresh import full_refresh
from housegan.config import get_settings
from housegan.steps import to_json
from housegan.steps.evaluate import PAIRS_DIR
from tasks.evaluate import metrics_line
from tasks.synth import seed_labels_task, synthesize_task
from tasks.train import sample_grid_task

GRID_PATH = ".housegan/demo/samples.png"  # the final model's images, one row per (city, type)


@flow(name="demo")
def demo_flow(
    cities: int = 5,
    per_city: int = 100,
    seed: int = 0,
    labels_per_type: int = 30,
    kimg: float | None = None,
    max_minutes: float | None = None,
) -> dict[str, Any]:
    settings = get_settings()
    synthetic = synthesize_task(settings.source_uri, cities, per_city, seed)
    labelled = seed_labels_task(synthetic["truth_uri"], settings.store_uri, labels_per_type, seed)
    refreshed = full_refresh(
        source_uri=settings.source_uri,
        store_uri=settings.store_uri,
        labels_uri=labelled["labels_uri"],
        kimg=kimg,
        max_minutes=max_minutes,
    )
    trained = refreshed["train"]
    grid = sample_grid_task(trained.model_uri, GRID_PATH, seed) if trained else None
    return {"synth": synthetic, "labels": labelled, "grid": grid, **refreshed}


def print_summary(result: dict[str, Any]) -> None:
    settings = get_settings()
    ingest, curate, train = result["ingest"], result["curate"], result["train"]
    print("\n=== housegan demo ===")
    print(f"source     {settings.source_uri}  ({result['synth']['objects']} objects)")
    print(f"manifest   {ingest.manifest_uri}")
    print("           " + ", ".join(f"{k}={v}" for k, v in sorted(ingest.counts.items())))
    print(f"           new {ingest.new}, downloaded {ingest.downloaded}")
    print(f"labels     {result['labels']['rows']} imported -> {result['labels']['labels_uri']}")
    print(f"curated    {curate.curated_uri}")
    print(f"           embedded {curate.embed.computed}, reused {curate.embed.reused}")
    for stage, count in curate.filter.funnel.items():
        print(f"           {stage:<20} {count}")
    if curate.type_accuracy is not None:
        print(
            f"           image-type classifier, cross-validated accuracy {curate.type_accuracy:.3f}"
        )
    if train:
        print(f"model      {train.model_uri}  ({train.kimg:.1f} kimg, {train.step} steps)")
        print(f"samples    {train.samples_uri}")
    if result.get("grid"):
        print(f"           final grid {result['grid']}  (one row per city x type)")
    _print_evaluation(result.get("evaluate"), result.get("promote"))
    prefect_ui = os.environ.get("PREFECT_API_URL", "").removesuffix("/api")
    print("\nwhere to look")
    # The URI the runs were logged to: the stack's server under `make demo`.
    print(
        f"  MLflow UI   {settings.mlflow_tracking_uri}  (experiment '{settings.mlflow_experiment}')"
    )
    if train and train.run_url:
        print(f"  train run   {train.run_url}  (Artifacts: images/ holds the sample grids)")
    if prefect_ui:
        print(
            f"  Prefect UI  {prefect_ui}  (flow run 'demo': subflows, progress and table artifacts)"
        )
    if settings.stack.app_port:  # the stack runs the app, which serves the champion
        print(
            f"  app         http://{settings.stack.host}:{settings.stack.app_port}  "
            f"(housegan app; {settings.app.model_uri})"
        )
        promoted = result.get("promote")
        if promoted is not None and promoted.decision == "challenger":
            print(
                f"              this version did not pass the gate: HOUSEGAN_APP__MODEL_URI="
                f"models:/{promoted.name}/{promoted.version} shows it"
            )
    if train:
        city = result["synth"]["cities"][0]
        print(
            f"  try         .venv/bin/housegan generate --model {train.model_uri} --city {city}"
            " --image-type exterior --seed 7 --n 16 --out demo-grid.png"
        )


def _print_evaluation(evaluated: Any, promoted: Any) -> None:
    """The ``evaluation`` block: headline metrics, where the pair figures are, the decision."""
    if evaluated is None:
        return
    print(f"evaluation {metrics_line(evaluated)}")
    print(f"           run {evaluated.run_url or evaluated.run_id}  (nested under the train run)")
    if evaluated.pairs_uri:
        print(f"           nearest pairs  Artifacts: {PAIRS_DIR}/  ({evaluated.pairs_uri})")
    if promoted is not None:
        where = f" -> {promoted.alias_uri}" if promoted.alias_uri else ""
        print(f"promotion  version {promoted.version}: {promoted.decision}{where}")
        print(f"           {promoted.reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cities", type=int, default=5)
    parser.add_argument("--per-city", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--kimg", type=float, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = demo_flow(
        args.cities, args.per_city, args.seed, kimg=args.kimg, max_minutes=args.max_minutes
    )
    print_summary(result)
    if args.json:
        print(json.dumps(to_json(result)))


if __name__ == "__main__":
    main()
