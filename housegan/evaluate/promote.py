"""The promotion gate: which registered version serves as ``champion``.

A candidate version is compared with the current champion on the same evaluation (one key:
dataset, embedder tag, seeds, sample sizes), measured against the candidate's training data;
an evaluation already logged with that key is reused, a missing one is run and logged. The
bars are MLflow ``MetricThreshold``s checked by ``mlflow.validate_evaluation_results``:

- ``copy_rate <= evaluate.max_copy_rate``, always: a copier is never promoted;
- ``fd <= champion's fd * (1 + fd_tolerance)`` and ``kid <= champion's kid +
  max(kid_tolerance * |kid|, kid_std_slack * kid_std)``, when there is a champion (KID is
  unbiased but noisy: near zero, a relative tolerance alone would gate on its noise).

Passing moves ``champion`` to the candidate and the old champion to ``previous``; failing sets
``challenger`` on the candidate. Either way the version gets ``promotion.decision`` and
``promotion.reason`` tags. ``rollback`` restores ``previous`` as champion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from housegan import tracking
from housegan.config import EvaluateSettings, Settings
from housegan.evaluate.sampling import ProgressFactory

CHAMPION = "champion"
PREVIOUS = "previous"
CHALLENGER = "challenger"
Decision = Literal["champion", "challenger", "unchanged"]

# (registered version, dataset URI) -> its metrics; called for a version with no evaluation
# logged under the key in force (the default evaluates and logs one)
Evaluator = Callable[[tracking.RegisteredVersion, str], Mapping[str, float | None]]


@dataclass(frozen=True)
class Promotion:
    name: str
    candidate: str  # version
    decision: Decision
    reason: str
    champion_before: str | None
    candidate_metrics: dict[str, float | None]
    champion_metrics: dict[str, float | None] | None


@dataclass(frozen=True)
class Rollback:
    name: str
    restored: str  # the version champion points at now
    demoted: str | None  # the version it pointed at before


def thresholds(
    cfg: EvaluateSettings, champion: Mapping[str, float | None] | None
) -> dict[str, tuple[float, bool]]:
    """``{metric: (threshold, greater_is_better)}`` a candidate must meet."""
    bars = {"copy_rate": (float(cfg.max_copy_rate), False)}
    if champion is None:
        return bars
    if champion.get("fd") is not None:
        bars["fd"] = (float(champion["fd"]) * (1.0 + cfg.fd_tolerance), False)
    if champion.get("kid") is not None:
        kid = float(champion["kid"])
        noise = cfg.kid_std_slack * float(champion.get("kid_std") or 0.0)
        bars["kid"] = (kid + max(cfg.kid_tolerance * abs(kid), noise), False)
    return bars


def promote(
    model_uri: str,
    settings: Settings,
    *,
    dataset_uri: str | None = None,
    evaluate: Evaluator | None = None,
    progress: ProgressFactory | None = None,
) -> Promotion:
    """Gate ``model_uri`` (``models:/NAME/VERSION`` or ``@ALIAS``) against the champion."""
    from housegan.evaluate.evaluation import resolve_dataset

    tracking_uri = settings.mlflow_tracking_uri
    candidate = tracking.registered_version(model_uri, tracking_uri)
    if candidate is None:
        raise ValueError(f"{model_uri} is not a registered version: use models:/NAME/VERSION")
    champion = tracking.alias_version(candidate.name, CHAMPION, tracking_uri)
    if champion == candidate.version:
        return Promotion(
            candidate.name,
            candidate.version,
            "unchanged",
            f"version {candidate.version} is already {CHAMPION}",
            champion,
            {},
            None,
        )
    dataset = resolve_dataset(model_uri, candidate.run_id, dataset_uri, tracking_uri)
    measure = _measure(settings, progress, evaluate)
    candidate_metrics = dict(measure(candidate, dataset))
    champion_metrics = None
    if champion is not None:
        current = tracking.registered_version(f"models:/{candidate.name}/{champion}", tracking_uri)
        champion_metrics = dict(measure(current, dataset))
    failure = tracking.check_thresholds(
        candidate_metrics, thresholds(settings.evaluate, champion_metrics)
    )
    decision: Decision = CHALLENGER if failure else CHAMPION
    reason = failure or _passed(candidate_metrics, champion, champion_metrics)
    _move_aliases(candidate, champion, decision, tracking_uri)
    tracking.set_version_tags(
        candidate.name,
        candidate.version,
        {tracking.PROMOTION_DECISION_TAG: decision, tracking.PROMOTION_REASON_TAG: reason},
        tracking_uri,
    )
    return Promotion(
        candidate.name,
        candidate.version,
        decision,
        reason,
        champion,
        candidate_metrics,
        champion_metrics,
    )


def _move_aliases(
    candidate: tracking.RegisteredVersion,
    champion: str | None,
    decision: Decision,
    tracking_uri: str,
) -> None:
    name = candidate.name
    if decision == CHALLENGER:
        tracking.set_alias(name, candidate.version, CHALLENGER, tracking_uri)
        return
    if champion is not None:
        tracking.set_alias(name, champion, PREVIOUS, tracking_uri)
    tracking.set_alias(name, candidate.version, CHAMPION, tracking_uri)
    if tracking.alias_version(name, CHALLENGER, tracking_uri) == candidate.version:
        tracking.delete_alias(name, CHALLENGER, tracking_uri)


def _passed(
    metrics: Mapping[str, float | None], champion: str | None, baseline: Mapping | None
) -> str:
    shown = ", ".join(f"{k}={metrics.get(k)}" for k in ("copy_rate", "fd", "kid"))
    if champion is None or baseline is None:
        return f"passed (no champion before): {shown}"
    before = ", ".join(f"{k}={baseline.get(k)}" for k in ("fd", "kid"))
    return f"passed against version {champion} ({before}): {shown}"


def _measure(
    settings: Settings, progress: ProgressFactory | None, evaluate: Evaluator | None
) -> Evaluator:
    """Reuse an evaluation logged with the key in force; otherwise ``evaluate`` (default: run
    and log one, one embedder serving both models)."""
    from housegan import embed
    from housegan.evaluate.evaluation import evaluation_key

    keys: dict[str, str] = {}
    fresh = evaluate or _evaluate_and_log(settings, progress)

    def measure(
        version: tracking.RegisteredVersion, dataset_uri: str
    ) -> Mapping[str, float | None]:
        if dataset_uri not in keys:
            tag = embed.model_tag(settings.embed, settings.storage_options())
            dataset_id = _dataset_id(dataset_uri, settings)
            keys[dataset_uri] = evaluation_key(dataset_id, tag, settings.evaluate)
        if version.run_id is not None:
            found = tracking.find_evaluation(
                version.run_id, keys[dataset_uri], settings.mlflow_tracking_uri
            )
            if found is not None:
                return found[1]
        return fresh(version, dataset_uri)

    return measure


def _evaluate_and_log(settings: Settings, progress: ProgressFactory | None) -> Evaluator:
    from housegan.devices import resolve_device
    from housegan.evaluate.evaluation import evaluate_and_log
    from housegan.evaluate.sampling import Embedder

    shared: list[Embedder] = []

    def run(version: tracking.RegisteredVersion, dataset_uri: str) -> Mapping[str, float | None]:
        if not shared:
            device = str(resolve_device(settings.evaluate.device))
            shared.append(Embedder(settings.embed, device, settings.storage_options()))
        logged = evaluate_and_log(
            version.uri, settings, dataset_uri=dataset_uri, progress=progress, embedder=shared[0]
        )
        return logged.evaluation.metrics

    return run


def _dataset_id(dataset_uri: str, settings: Settings) -> str:
    """A packed dataset's id, from its small ``dataset.json`` (not its images)."""
    import json

    from housegan import storage
    from housegan.gan.data import INFO_FILE

    info_uri = storage.join(storage.normalize_uri(dataset_uri), INFO_FILE)
    return json.loads(storage.read_bytes(info_uri, settings.storage_options()))["dataset_id"]


def rollback(name: str, tracking_uri: str) -> Rollback:
    """Point ``champion`` back at ``previous`` (which is then cleared: one step back at a time)."""
    previous = tracking.alias_version(name, PREVIOUS, tracking_uri)
    if previous is None:
        raise ValueError(f"{name} has no '{PREVIOUS}' version to roll back to")
    demoted = tracking.alias_version(name, CHAMPION, tracking_uri)
    tracking.set_alias(name, previous, CHAMPION, tracking_uri)
    tracking.delete_alias(name, PREVIOUS, tracking_uri)
    if demoted is not None and demoted != previous:
        tracking.set_version_tags(
            name,
            demoted,
            {
                tracking.PROMOTION_DECISION_TAG: "rolled_back",
                tracking.PROMOTION_REASON_TAG: f"rolled back: version {previous} restored",
            },
            tracking_uri,
        )
    return Rollback(name, previous, demoted)
