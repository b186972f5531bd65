"""The evaluation flow: a registered generator -> an MLflow evaluation run -> the promotion gate.

Run with ``python -m flows.evaluate models:/housegan-cgan/3`` or from the Prefect deployment.
The same two steps as ``housegan.steps.evaluate.run_evaluate``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from prefect import flow

from housegan.steps import to_json
from housegan.steps.evaluate import Evaluated, EvaluateInput, Promoted, PromoteInput
from tasks.evaluate import evaluate_task, promote_task


@flow(name="evaluate")
def evaluate_flow(
    model_uri: str, dataset_uri: str | None = None, promote: bool = True
) -> dict[str, Any]:
    """Evaluate ``model_uri`` (default dataset: its training data) and, with ``promote``, gate it:
    champion if it copies little and is not worse than the champion, else challenger."""
    evaluated: Evaluated = evaluate_task(EvaluateInput(model_uri, dataset_uri))
    promoted: Promoted | None = (
        promote_task(PromoteInput(evaluated.model_uri, dataset_uri))
        if promote and evaluated.model_version is not None  # only registered versions hold aliases
        else None
    )
    return {"evaluate": evaluated, "promote": promoted}


@flow(name="promote")
def promote_flow(model_uri: str, dataset_uri: str | None = None) -> Promoted:
    """The promotion gate alone (evaluations missing under the key in force are run first)."""
    return promote_task(PromoteInput(model_uri, dataset_uri))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_uri")
    parser.add_argument("--dataset-uri")
    parser.add_argument("--no-promote", action="store_true")
    args = parser.parse_args()
    result = evaluate_flow(args.model_uri, args.dataset_uri, not args.no_promote)
    print(json.dumps(to_json(result), indent=2))
