"""``make demo``: a synthetic listing bucket through the full refresh, on the local stack.

Draws ~500 listings over 5 cities into the source bucket and plays the human labeller (30
labels per image type from the synthetic ground truth): the ``demo-data`` flow. Then it does
what a person does in the Prefect UI: presses Run on the ``full-refresh`` deployment (the REST
call the button makes), follows that run and its stages (training on pool ``gpu``) to the end,
draws the new model's sample grid and prints where to look. Without a Prefect server holding
the deployment (``--in-process``), the same refresh runs in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from prefect import flow

from flows.refresh import full_refresh
from housegan import tracking
from housegan.config import get_settings
from housegan.prefect_api import PrefectApi, Progress, RunState
from housegan.steps import to_json
from housegan.steps.evaluate import PAIRS_DIR
from housegan.steps.refresh import read_outcome
from tasks.evaluate import metrics_line
from tasks.synth import seed_labels_task, synthesize_task
from tasks.train import sample_grid_task

GRID_PATH = ".housegan/demo/samples.png"  # the final model's images, one row per (city, type)
REFRESH_DEPLOYMENT = "full-refresh/full-refresh"


@flow(name="demo-data")
def demo_data_flow(
    cities: int = 5, per_city: int = 100, seed: int = 0, labels_per_type: int = 30
) -> dict[str, Any]:
    """The synthetic listing bucket and the labeller's first labels."""
    settings = get_settings()
    synthetic = synthesize_task(settings.source_uri, cities, per_city, seed)
    labelled = seed_labels_task(synthetic["truth_uri"], settings.store_uri, labels_per_type, seed)
    return {"synth": synthetic, "labels": labelled}


@flow(name="demo")
def demo_flow(
    cities: int = 5,
    per_city: int = 100,
    seed: int = 0,
    labels_per_type: int = 30,
    kimg: float | None = None,
    max_minutes: float | None = None,
) -> dict[str, Any]:
    """The demo in one process: the data, then the full refresh as a subflow."""
    settings = get_settings()
    data = demo_data_flow(cities, per_city, seed, labels_per_type)
    refreshed = full_refresh(
        source_uri=settings.source_uri,
        store_uri=settings.store_uri,
        labels_uri=data["labels"]["labels_uri"],
        kimg=kimg,
        max_minutes=max_minutes,
    )
    trained = refreshed["train"]
    grid = sample_grid_task(trained.model_uri, GRID_PATH, seed) if trained else None
    return {**data, "grid": grid, **refreshed}


def refresh_through_api(
    api_url: str, parameters: dict[str, Any], timeout_s: float
) -> tuple[RunState, dict[str, Any]]:
    """Press Run on ``full-refresh`` (POST /api/deployments/{id}/create_flow_run), follow the
    run and its stages to a final state; returns it and what it recorded in MLflow."""
    api = PrefectApi(api_url)
    run = api.create_flow_run(REFRESH_DEPLOYMENT, parameters)
    ui = api_url.removesuffix("/api")
    print(f"full-refresh run '{run.name}' created: {ui}/runs/flow-run/{run.id}", flush=True)
    started = time.monotonic()

    def show(item: RunState) -> None:
        pool = f" on pool {item.work_pool}" if item.work_pool else ""
        elapsed = time.monotonic() - started
        print(f"  {elapsed:6.0f}s  {item.flow_name or '?':<14} {item.state:<10}{pool}", flush=True)

    def moved(item: RunState, progress: Progress) -> None:
        elapsed = time.monotonic() - started
        what = progress.description or progress.key
        print(
            f"  {elapsed:6.0f}s  {item.flow_name or '?':<14} {progress.percent:3.0f}% {what}",
            flush=True,
        )

    final = api.follow(run.id, timeout_s, on_change=show, on_progress=moved)
    if final.state != "COMPLETED":
        return final, {}
    settings = get_settings()
    outcome = read_outcome(final.id, settings.mlflow_tracking_uri, settings.mlflow_experiment)
    return final, {**outcome.by_stage(), "flow_run": final}


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
    if result.get("mlflow_run_id"):
        _, url = tracking.run_location(result["mlflow_run_id"], settings.mlflow_tracking_uri)
        print(f"  refresh run {url or result['mlflow_run_id']}  (ingest, curate, train nested)")
    if train and train.run_url:
        print(f"  train run   {train.run_url}  (Artifacts: images/ holds the sample grids)")
    if prefect_ui:
        run = result.get("flow_run")
        where = f"/runs/flow-run/{run.id}" if run else ""
        print(
            f"  Prefect UI  {prefect_ui}{where}  (the refresh: its stages as subflow runs, "
            "progress and table artifacts; Deployments > full-refresh > Run starts another)"
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
    parser.add_argument("--timeout-minutes", type=float, default=60.0)
    parser.add_argument(
        "--in-process", action="store_true", help="run the refresh here, not on the workers"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # The demo prints its own progress; MLflow's download bars would only interleave with it.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    api_url = os.environ.get("PREFECT_API_URL")
    if args.in_process or not api_url:
        result = demo_flow(
            args.cities, args.per_city, args.seed, kimg=args.kimg, max_minutes=args.max_minutes
        )
    else:
        data = demo_data_flow(args.cities, args.per_city, args.seed)
        parameters = {
            "source_uri": get_settings().source_uri,
            "labels_uri": data["labels"]["labels_uri"],
            "kimg": args.kimg,
            "max_minutes": args.max_minutes,
        }
        final, refreshed = refresh_through_api(
            api_url,
            {k: v for k, v in parameters.items() if v is not None},
            args.timeout_minutes * 60,
        )
        if final.state != "COMPLETED":
            sys.exit(f"full-refresh run {final.name} ended {final.state}: {final.message}")
        trained = refreshed["train"]
        grid = sample_grid_task(trained.model_uri, GRID_PATH, args.seed) if trained else None
        result = {**data, "grid": grid, **refreshed}
    print_summary(result)
    if args.json:
        print(json.dumps(to_json(result)))


if __name__ == "__main__":
    main()
