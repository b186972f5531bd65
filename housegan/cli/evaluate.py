"""``housegan evaluate``: novelty, fidelity/diversity and conditioning of a trained generator,
logged to MLflow as an evaluation run nested under the model's training run."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from housegan.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="measure a generator: copies of training photos, FD/KID, precision/recall, "
        "density/coverage, conditioning accuracy",
        description="Draws evaluate.samples_per_cell images per (city, type) from the fixed "
        "evaluation seed, embeds them with the curation embedder and compares them with the "
        "training set. Knobs: the `evaluate` config section.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/generator or a model folder",
    )
    parser.add_argument(
        "--dataset",
        help="the packed dataset to compare with (default: the one the model was trained on)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON summary as the last stdout line"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from housegan.config import get_settings
    from housegan.evaluate.evaluation import evaluate_and_log

    settings = get_settings()
    bars: list[Any] = []
    try:
        logged = evaluate_and_log(
            args.model, settings, dataset_uri=args.dataset, progress=progress_bars(bars)
        )
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    except MlflowException as exc:  # an unknown model, version or alias
        raise UserError(f"cannot evaluate {args.model}: {exc.message}") from None
    finally:
        for bar in bars:
            bar.close()
    evaluation = logged.evaluation
    print(
        f"model {evaluation.model_uri}  dataset {evaluation.dataset_id}  "
        f"embedder {evaluation.embed_tag}  key {evaluation.key}"
    )
    print(_metrics_table(evaluation.metrics))
    print()
    print(evaluation.cells.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print()
    print(evaluation.cities.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(
        f"MLflow evaluation run: {logged.run_id}"
        + (f" (nested under {logged.training_run_id})" if logged.training_run_id else "")
    )
    if args.json:
        print(json.dumps({k: _finite(v) for k, v in evaluation.summary().items()}))
    return 0


def progress_bars(bars: list[Any]):
    """A ``ProgressFactory``: one tqdm bar per phase on stderr, kept in ``bars`` to close."""
    from tqdm import tqdm

    def make(phase: str, total: int):
        bar = tqdm(total=total, desc=phase, unit="img", file=sys.stderr)
        bars.append(bar)
        return bar.update

    return make


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def _metrics_table(metrics: dict[str, float | None]) -> str:
    """Overall metrics, one per line (per-city ones are in the city table)."""
    shown = {k: v for k, v in metrics.items() if "/" not in k}
    width = max(map(len, shown))
    return "\n".join(
        f"  {name:<{width}}  {'n/a' if value is None else f'{value:.4f}'}"
        for name, value in shown.items()
    )
