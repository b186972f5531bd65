"""The Generate page's logic: which model, its card (version, data, metrics), display images.

A registry URI with an alias (``models:/housegan-cgan@champion``) is resolved to its version
first, so the app caches ``models:/NAME/VERSION`` and shows a newly promoted champion on the
next page view instead of the one it loaded at start-up.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from housegan import storage
from housegan.app.problems import NoModelYet, check_tracking, is_missing
from housegan.config import Resampling, Settings

RESAMPLING: dict[Resampling, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
}
SYNTHETIC_NOTICE = (
    "These images are synthetic: drawn by a generative model, not photos of real properties. "
    "Under each one is the most similar photo of the training set, so you can check it is new."
)


@dataclass(frozen=True)
class ModelCard:
    """What the page says about the model it shows."""

    requested_uri: str  # as configured: models:/NAME@ALIAS, models:/NAME/V, runs:/..., a folder
    load_uri: str  # what is loaded (and cached): models:/NAME/V, runs:/..., or the folder
    name: str | None = None
    version: str | None = None
    aliases: tuple[str, ...] = ()
    run_id: str | None = None
    run_url: str | None = None
    dataset_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the training run's
    evaluation: dict[str, float] = field(default_factory=dict)  # the evaluation run's

    @property
    def from_registry(self) -> bool:
        return self.load_uri.startswith(("models:/", "runs:/"))


def resolve_model(model_uri: str, settings: Settings) -> ModelCard:
    """The card of ``model_uri``; ``NoModelYet`` when nothing is there (no champion yet)."""
    from housegan import tracking

    ref = tracking.parse_registry_uri(model_uri)
    if ref is None and not model_uri.startswith("runs:/"):
        return _folder_card(model_uri, settings)
    check_tracking(settings)
    if ref is None:
        return ModelCard(requested_uri=model_uri, load_uri=model_uri)
    from mlflow.exceptions import MlflowException

    try:
        version = tracking.describe_version(
            ref.name,
            alias=ref.alias,
            version=ref.version,
            tracking_uri=settings.mlflow_tracking_uri,
        )
    except MlflowException as exc:
        if not is_missing(exc):
            raise
        raise NoModelYet(_no_model_message(model_uri, ref.alias)) from exc
    return ModelCard(
        requested_uri=model_uri,
        load_uri=version.uri,
        name=version.name,
        version=version.version,
        aliases=version.aliases,
        run_id=version.run_id,
        run_url=_run_url(settings, version.experiment_id, version.run_id),
        dataset_id=version.dataset_id,
        metrics=version.metrics,
        evaluation=version.evaluation,
    )


def _no_model_message(model_uri: str, alias: str | None) -> str:
    if alias:
        return (
            f"No model is registered as {model_uri} yet. Train one (`housegan train` or "
            f"`make demo`) and point the alias '{alias}' at a version; or start the app with "
            "`housegan app --model models:/NAME/VERSION`."
        )
    return f"No model {model_uri} in the registry: check the name and version."


def _folder_card(model_uri: str, settings: Settings) -> ModelCard:
    from housegan import tracking
    from housegan.gan import serving

    folder = storage.local_path(model_uri) if model_uri.startswith("file://") else Path(model_uri)
    if not serving.is_model_dir(folder):
        raise NoModelYet(
            f"No model at {model_uri}: a model folder holds {serving.WEIGHTS_FILE} and "
            f"{serving.CONFIG_FILE} (`housegan train --out DIR` writes one)."
        )
    card = ModelCard(requested_uri=model_uri, load_uri=str(folder))
    run_id = tracking.read_run_id(str(folder))
    if run_id is None or not tracking.server_reachable(
        settings.mlflow_tracking_uri, settings.app.reachable_timeout_s
    ):
        return card
    run = tracking.run_summary(run_id, settings.mlflow_tracking_uri)
    return ModelCard(
        requested_uri=model_uri,
        load_uri=str(folder),
        run_id=run_id,
        run_url=_run_url(settings, run.experiment_id, run_id),
        dataset_id=run.tags.get("dataset_id"),
        metrics=run.metrics,
    )


def _run_url(settings: Settings, experiment_id: str | None, run_id: str | None) -> str | None:
    from housegan import tracking
    from housegan.app.runs import mlflow_ui_url

    base = mlflow_ui_url(settings)
    if base is None or experiment_id is None or run_id is None:
        return None
    return tracking.run_url(base, experiment_id, run_id)


def load_model(load_uri: str, tracking_uri: str, device: str):
    """The generator of a card's ``load_uri`` (registry/run URIs through MLflow, folders
    directly); ``housegan.gan.serving.LoadedGenerator``."""
    from housegan.gan import serving

    if load_uri.startswith(("models:/", "runs:/")):
        from housegan import tracking

        return tracking.load_generator_model(load_uri, tracking_uri, device)
    return serving.load_generator(load_uri, device=device)


def new_seed() -> int:
    """A fresh seed a person can read back and type in again."""
    return secrets.randbelow(1_000_000)


def upscale(image: np.ndarray, size: int, resampling: Resampling) -> Image.Image:
    """One ``[R, R, 3]`` uint8 image as a ``size`` x ``size`` picture."""
    return Image.fromarray(image).resize((size, size), RESAMPLING[resampling])


def png_bytes(image: Image.Image) -> bytes:
    """PNG bytes; the same pixels always give the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def grid_png(pictures: Sequence[Image.Image]) -> bytes:
    """The pictures tiled into one PNG (what the download button offers)."""
    from housegan.gan import serving

    stacked = np.stack([np.asarray(picture.convert("RGB")) for picture in pictures])
    return png_bytes(serving.grid(stacked))


def download_name(city: str, image_type: str, seed: int, n: int) -> str:
    return f"housegan-{city}-{image_type}-seed{seed}-n{n}.png"


# The evaluation's summary metrics (housegan.evaluate), in the order the page shows them.
HEADLINE_METRICS = {
    "copy_rate": "copy rate",
    "fd": "FD",
    "kid": "KID",
    "precision": "precision",
    "recall": "recall",
    "cond_acc_city": "city accuracy",
    "cond_acc_type": "type accuracy",
}
COPY_THRESHOLD = "copy_threshold"


def facts(card: ModelCard) -> pd.DataFrame:
    """What the model is: the URI asked for, its version, training set and run."""
    rows = {
        "model": card.requested_uri,
        "version": card.version or "-",
        "training set": card.dataset_id or "-",
        "training run": card.run_id or "-",
    }
    return pd.DataFrame({"value": list(rows.values())}, index=list(rows))


def headline_metrics(card: ModelCard) -> dict[str, float]:
    """The evaluation's summary metrics the card has, by display name."""
    return {
        label: card.evaluation[name]
        for name, label in HEADLINE_METRICS.items()
        if name in card.evaluation
    }


def match_caption(match: Any, card: ModelCard) -> str:
    """``nearest real: cosine 0.812 (austin, exterior, #17)``, and when the model's evaluation
    calibrated a copy threshold, whether this image is past it."""
    where = f"{match.city}, {match.image_type}, #{match.index}"
    text = f"nearest real: cosine {match.cosine:.3f} ({where})"
    threshold = card.evaluation.get(COPY_THRESHOLD)
    if threshold is None:
        return text
    verdict = "above: a likely copy" if match.cosine > threshold else "below: new"
    return f"{text} · copy threshold {threshold:.3f}, {verdict}"


def metric_rows(card: ModelCard) -> list[tuple[str, str, float]]:
    """(source, metric, value) rows: evaluation first, then the training run's."""
    rows = [("evaluation", name, value) for name, value in sorted(card.evaluation.items())]
    rows += [("training", name, value) for name, value in sorted(card.metrics.items())]
    return rows
