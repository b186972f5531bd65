"""Does the generator draw the city and image type it was asked for?

Two classifiers (city; image type, on the curation labels the packed dataset carries) are
trained on real features and score the generated images against the labels requested:
``cond_acc_city`` / ``cond_acc_type``. Their accuracy on held-out real photos
(``cond_real_acc_*``) is the ceiling those numbers should be read against.

The Classification Accuracy Score (Ravuri & Vinyals 2019) turns it round: a classifier trained
on generated features only, tested on held-out real photos (``cas_city`` / ``cas_type``). A
generator that draws one convincing image per class scores high on the first and low on CAS.

The classifiers are those of curation: L2-normalized, centred, PCA-projected features
(``cluster.fit_projection``) into a class-balanced logistic regression.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

from housegan.cluster import Projection, fit_projection
from housegan.config import EvaluateSettings


@dataclass(frozen=True)
class LabelClassifier:
    projection: Projection
    scale: float
    model: LogisticRegression

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.model.predict(self.projection.transform(features) / self.scale)


def fit_classifier(
    features: np.ndarray,
    labels: np.ndarray,
    cfg: EvaluateSettings,
    seed: int = 0,
    rows: np.ndarray | None = None,
) -> LabelClassifier | None:
    """A classifier of ``labels`` on ``features`` (only ``rows`` of both, when given; at most
    ``classifier_max_train`` of them); None with < 2 classes: nothing to tell apart."""
    rows = np.arange(len(features)) if rows is None else np.asarray(rows)
    if len(np.unique(labels[rows])) < 2:
        return None
    if len(rows) > cfg.classifier_max_train:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(rows, cfg.classifier_max_train, replace=False))
    features, labels = np.asarray(features[rows], dtype=np.float32), labels[rows]
    projection = fit_projection(features, cfg.classifier_pca_dim, seed, cfg.classifier_max_train)
    reduced = projection.transform(features)
    # Centred, normalized features have tiny entries: one overall scale keeps C meaningful.
    scale = max(float(np.std(reduced)), 1e-12)
    model = LogisticRegression(
        C=cfg.classifier_c, class_weight="balanced", max_iter=2000, random_state=seed
    ).fit(reduced / scale, labels)
    return LabelClassifier(projection, scale, model)


def accuracy(
    classifier: LabelClassifier | None, features: np.ndarray, labels: np.ndarray
) -> float | None:
    if classifier is None or len(labels) == 0:
        return None
    return float(np.mean(classifier.predict(features) == labels))


@dataclass(frozen=True)
class Conditioning:
    metrics: dict[str, float | None]
    city_hit: np.ndarray | None  # per generated image: classified as the city asked for
    type_hit: np.ndarray | None


def conditioning(
    real_features: np.ndarray,
    real_labels: dict[str, np.ndarray],
    holdout: np.ndarray,
    rest: np.ndarray,
    generated_features: np.ndarray,
    generated_labels: dict[str, np.ndarray],
    cfg: EvaluateSettings,
) -> Conditioning:
    """Classifier accuracy on generated images, its real ceiling, and CAS, per label kind.

    ``real_labels`` / ``generated_labels`` map ``"city"`` and ``"type"`` to integer codes.
    """
    metrics: dict[str, float | None] = {}
    hits: dict[str, np.ndarray | None] = {}
    for kind in ("city", "type"):
        on_real = fit_classifier(real_features, real_labels[kind], cfg, cfg.split_seed, rest)
        on_generated = fit_classifier(
            generated_features, generated_labels[kind], cfg, cfg.split_seed
        )
        hits[kind] = (
            None
            if on_real is None
            else on_real.predict(generated_features) == generated_labels[kind]
        )
        metrics[f"cond_acc_{kind}"] = None if hits[kind] is None else float(hits[kind].mean())
        metrics[f"cond_real_acc_{kind}"] = accuracy(
            on_real, real_features[holdout], real_labels[kind][holdout]
        )
        metrics[f"cas_{kind}"] = accuracy(
            on_generated, real_features[holdout], real_labels[kind][holdout]
        )
    return Conditioning(metrics=metrics, city_hit=hits["city"], type_hit=hits["type"])
