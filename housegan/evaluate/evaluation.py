"""One evaluation of a generator: novelty, fidelity/diversity and conditioning in one result.

``evaluate_model`` is the step (plain arguments in, a frozen ``ModelEvaluation`` out);
``housegan.tracking.log_evaluation`` records it in MLflow, nested under the training run. The
``key`` names what the numbers depend on (dataset, embedder tag, seeds, sample sizes, metric
settings): two evaluations with one key are comparable, which is what promotion relies on.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from housegan.config import EmbedSettings, EvaluateSettings
from housegan.devices import resolve_device
from housegan.evaluate import conditioning, fidelity, figures, novelty, sampling
from housegan.evaluate.sampling import Embedder, ImageSource, ProgressFactory, Sample
from housegan.gan.data import PackedDataset

FORMAT = "housegan.evaluate/1"
# The settings the numbers depend on (not device, batch or memory sizes, nor figure looks).
METRIC_FIELDS = (
    "samples_per_cell",
    "seed",
    "holdout_fraction",
    "holdout_max",
    "reference_max",
    "split_seed",
    "copy_percentile",
    "copy_threshold",
    "knn_precision",
    "knn_rerank",
    "pr_k",
    "dc_k",
    "kid_subsets",
    "kid_subset_size",
    "classifier_pca_dim",
    "classifier_max_train",
    "classifier_c",
)
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
# What `housegan evaluate --json` prints, in this order.
SUMMARY_METRICS = (
    "copy_rate",
    "fd",
    "kid",
    "precision",
    "recall",
    "density",
    "coverage",
    "diversity",
    "diversity_min",
    "cond_acc_city",
    "cond_acc_type",
)


@dataclass(frozen=True)
class ModelEvaluation:
    model_uri: str
    key: str
    dataset_id: str
    embed_tag: str
    metrics: dict[str, float | None]  # overall, plus fd/<city> and kid/<city>
    cells: pd.DataFrame  # one row per (city, image type)
    cities: pd.DataFrame  # one row per city: fd, kid
    figures: dict[str, Path]  # artifact path -> local PNG
    params: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, float | None]:
        return {name: self.metrics.get(name) for name in SUMMARY_METRICS}


def evaluation_key(dataset_id: str, embed_tag: str, cfg: EvaluateSettings) -> str:
    body = {
        "format": FORMAT,
        "dataset_id": dataset_id,
        "embed_tag": embed_tag,
        **cfg.model_dump(include=set(METRIC_FIELDS)),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def evaluate_model(
    source: ImageSource,
    vocab: Mapping[str, Sequence[str]],
    dataset: PackedDataset,
    embed_cfg: EmbedSettings,
    cfg: EvaluateSettings,
    *,
    model_uri: str = "",
    store_uri: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    figures_dir: str | Path | None = None,
    progress: ProgressFactory | None = None,
    embedder: Embedder | None = None,
) -> ModelEvaluation:
    """Draw ``samples_per_cell`` images of every (city, type) cell the model and the dataset
    share, embed them like the training set, and measure them against it.

    ``vocab`` is the model's; ``store_uri`` caches the real features (per dataset and tag);
    ``embedder`` may be shared by several evaluations (promotion evaluates two models).
    """
    device = str(resolve_device(cfg.device))
    cell_list = sampling.cells(vocab, dataset)
    embedder = embedder or Embedder(embed_cfg, device, storage_options)
    cache = store_uri if cfg.cache_features else None
    real = sampling.real_sample(dataset, embedder, cache, storage_options, progress)
    generated = sampling.draw_cells(
        source, cell_list, dataset, cfg.samples_per_cell, cfg.seed, embedder, progress
    )
    rows = novelty.split(len(real), cfg)
    center = novelty.real_mean(real.features)
    novel = novelty.novelty(generated.features, real.features, rows, cfg, device, center)
    metrics, cities = _fidelity(real, generated, center, cfg, device)
    diversity = fidelity.diversity_ratio(
        generated.features, generated.cell_of(), real.features, real.cell_of(), center
    )
    metrics["diversity"] = float(np.mean(list(diversity.values()))) if diversity else None
    # the least varied cell: one class drawn from few of its modes hides in the mean
    metrics["diversity_min"] = float(min(diversity.values())) if diversity else None
    cond = conditioning.conditioning(
        real.features,
        {"city": real.city, "type": real.image_type},
        rows.holdout,
        rows.rest,
        generated.features,
        {"city": generated.city, "type": generated.image_type},
        cfg,
    )
    metrics = {
        "copy_rate": novel.copy_rate,
        "copy_threshold": novel.threshold,
        "authenticity": novel.authenticity,
        "nn_cosine_median": float(np.median(novel.nn_cosine)),
        **metrics,
        **cond.metrics,
    }
    folder = Path(figures_dir or tempfile.mkdtemp(prefix="housegan-eval-"))
    return ModelEvaluation(
        model_uri=model_uri,
        key=evaluation_key(dataset.dataset_id, embedder.tag, cfg),
        dataset_id=dataset.dataset_id,
        embed_tag=embedder.tag,
        metrics=metrics,
        cells=_cell_table(cell_list, real, generated, novel, cond, diversity),
        cities=cities,
        figures=_pair_figures(cell_list, real, generated, novel, cfg, folder),
        params={
            "model_uri": model_uri,
            "dataset_id": dataset.dataset_id,
            "embed_tag": embedder.tag,
            "cells": len(cell_list),
            "n_generated": len(generated),
            "n_real": len(real),
            "n_holdout": len(rows.holdout),
            "copy_threshold_source": novel.threshold_source,
            **cfg.model_dump(include=set(METRIC_FIELDS)),
        },
    )


def _reference(n: int, cfg: EvaluateSettings, salt: int = 0) -> np.ndarray:
    """A seeded sample of at most ``reference_max`` of ``n`` rows (sorted)."""
    if n <= cfg.reference_max:
        return np.arange(n)
    rng = np.random.default_rng([cfg.split_seed, salt])
    return np.sort(rng.choice(n, cfg.reference_max, replace=False))


def _fidelity(
    real: Sample, generated: Sample, center: np.ndarray, cfg: EvaluateSettings, device: str
) -> tuple[dict[str, float | None], pd.DataFrame]:
    """FD and KID overall and per city; precision/recall/density/coverage overall."""
    reference = _reference(len(real), cfg)
    rows, overall = [], None
    for code, city in enumerate(real.cities):
        real_rows = np.flatnonzero(real.city == code)
        gen_rows = np.flatnonzero(generated.city == code)
        if len(real_rows) == 0:
            continue
        stats = fidelity.gaussian(real.features[real_rows], device=device)
        overall = fidelity.merge(overall, stats)
        if len(gen_rows) == 0:
            continue
        city_ref = real_rows[_reference(len(real_rows), cfg, salt=code + 1)]
        kid_mean, kid_std = _kid(generated.features[gen_rows], real.features[city_ref], cfg)
        fd = (
            fidelity.frechet_distance(generated.features[gen_rows], stats)
            if len(real_rows) > 1
            else None
        )
        rows.append(
            {
                "city": city,
                "fd": fd,
                "kid": kid_mean,
                "kid_std": kid_std,
                "n_generated": len(gen_rows),
                "n_real": len(real_rows),
            }
        )
    kid_mean, kid_std = _kid(generated.features, real.features[reference], cfg)
    scores = fidelity.prdc(
        real.features[reference],
        generated.features,
        cfg.pr_k,
        cfg.dc_k,
        center=center,
        memory_bytes=cfg.knn_memory_mb * 2**20,
        device=device,
    )
    metrics: dict[str, float | None] = {
        "fd": fidelity.frechet_distance(generated.features, overall),
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": scores.precision,
        "recall": scores.recall,
        "density": scores.density,
        "coverage": scores.coverage,
    }
    for row in rows:
        metrics[f"fd/{row['city']}"] = row["fd"]
        metrics[f"kid/{row['city']}"] = row["kid"]
    return metrics, pd.DataFrame(
        rows, columns=["city", "fd", "kid", "kid_std", "n_generated", "n_real"]
    )


def _kid(
    generated: np.ndarray, real: np.ndarray, cfg: EvaluateSettings
) -> tuple[float | None, float | None]:
    """KID on the features as they are, torch-fidelity's way. Not centred or rescaled: that
    turns its cubic kernel toward feature norms, and on random-init VGG16 features it then
    ranked uniform noise above a trained GAN."""
    if min(len(generated), len(real)) < 2:
        return None, None
    return fidelity.kid(generated, real, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)


def _cell_table(
    cell_list: Sequence[tuple[str, str]],
    real: Sample,
    generated: Sample,
    novel: novelty.Novelty,
    cond: conditioning.Conditioning,
    diversity: dict[int, float],
) -> pd.DataFrame:
    rows = []
    for city, image_type in cell_list:
        c, t = real.cities.index(city), real.image_types.index(image_type)
        members = np.flatnonzero((generated.city == c) & (generated.image_type == t))
        rows.append(
            {
                "city": city,
                "image_type": image_type,
                "n": len(members),
                "n_real": int(np.sum((real.city == c) & (real.image_type == t))),
                "copy_rate": float(novel.copies[members].mean()),
                "authenticity": float(novel.authentic[members].mean()),
                "nn_cosine_median": float(np.median(novel.nn_cosine[members])),
                "nn_cosine_max": float(novel.nn_cosine[members].max()),
                "cond_acc_city": _share(cond.city_hit, members),
                "cond_acc_type": _share(cond.type_hit, members),
                "diversity": diversity.get(c * len(real.image_types) + t),
            }
        )
    return pd.DataFrame(rows)


def _share(hits: np.ndarray | None, members: np.ndarray) -> float | None:
    return None if hits is None else float(hits[members].mean())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _pair_figures(
    cell_list: Sequence[tuple[str, str]],
    real: Sample,
    generated: Sample,
    novel: novelty.Novelty,
    cfg: EvaluateSettings,
    folder: Path,
) -> dict[str, Path]:
    """Per cell, the ``pairs_per_cell`` generated images nearest a training photo."""
    out: dict[str, Path] = {}
    if cfg.pairs_per_cell == 0:
        return out
    for city, image_type in cell_list:
        c, t = real.cities.index(city), real.image_types.index(image_type)
        members = np.flatnonzero((generated.city == c) & (generated.image_type == t))
        top = novelty.closest_pairs(novel, members, cfg.pairs_per_cell)
        image = figures.pair_figure(
            generated.images[top],
            real.images[novel.nn_index[top]],
            novel.nn_cosine[top].tolist(),
            f"{city} x {image_type}: generated (top), nearest training image (bottom)",
            cfg.figure_thumb,
        )
        name = f"novelty/pairs-{_slug(city)}-{_slug(image_type)}.png"
        out[name] = figures.save_png(image, folder / name)
    return out


@dataclass(frozen=True)
class LoggedEvaluation:
    evaluation: ModelEvaluation
    run_id: str  # the MLflow evaluation run (nested under the training run when there is one)
    training_run_id: str | None
    version: Any  # housegan.tracking.RegisteredVersion, or None for a folder


def resolve_dataset(
    model_uri: str,
    training_run_id: str | None,
    dataset_uri: str | None,
    tracking_uri: str,
) -> str:
    """The packed dataset to measure a model against: the one given, else its training run's."""
    from housegan import tracking

    if dataset_uri:
        return dataset_uri
    found = tracking.training_dataset(training_run_id, tracking_uri) if training_run_id else None
    if found is None:
        raise ValueError(
            f"no training dataset is recorded for {model_uri}; pass the packed dataset "
            "(<store>/datasets/<id>) it should be measured against"
        )
    return found[1]


def load_generator(model_uri: str, tracking_uri: str, device: str) -> Any:
    """A ``serving.LoadedGenerator`` from a model folder or an MLflow model URI."""
    from housegan import tracking
    from housegan.gan import serving

    if model_uri.startswith(MLFLOW_SCHEMES):
        return tracking.load_generator_model(model_uri, tracking_uri, device)
    return serving.load_generator(model_uri, device=device)


def evaluate_and_log(
    model_uri: str,
    settings: Any,
    *,
    dataset_uri: str | None = None,
    progress: ProgressFactory | None = None,
    embedder: Embedder | None = None,
    figures_dir: str | Path | None = None,
) -> LoggedEvaluation:
    """The whole step for a model URI (folder, ``models:/NAME@ALIAS``, ``models:/NAME/V``,
    ``runs:/``): load it, find its training data, evaluate, log the run nested under the
    training run and tag the registered version with it. ``settings``: ``config.Settings``."""
    from housegan import tracking
    from housegan.gan.data import load_packed

    tracking_uri = settings.mlflow_tracking_uri
    options = settings.storage_options()
    version = tracking.registered_version(model_uri, tracking_uri)
    run_id = tracking.training_run_id(model_uri, tracking_uri, options)
    dataset = load_packed(resolve_dataset(model_uri, run_id, dataset_uri, tracking_uri), options)
    cfg: EvaluateSettings = settings.evaluate
    device = str(resolve_device(cfg.device))
    # A registry alias is resolved once: the version measured is the version tagged.
    model = load_generator(version.uri if version else model_uri, tracking_uri, device)
    evaluation = evaluate_model(
        sampling.generator_source(model, cfg.generate_batch_size),
        model.vocab,
        dataset,
        settings.embed,
        cfg,
        model_uri=version.uri if version else model_uri,
        store_uri=settings.store_uri,
        storage_options=options,
        figures_dir=figures_dir,
        progress=progress,
        embedder=embedder,
    )
    logged = tracking.log_evaluation(
        evaluation, tracking_uri, settings.mlflow_experiment, run_id, version
    )
    return LoggedEvaluation(evaluation, logged, run_id, version)
