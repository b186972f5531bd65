"""The training loop (interface first version; the body lands next)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from housegan.config import GanSettings
from housegan.gan.models import ModelSpec


class Reporter(Protocol):
    """Where the loop sends what it measures (MLflow in production, a list in tests)."""

    def params(self, params: dict[str, Any]) -> None: ...

    def metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def image(self, name: str, image: Image.Image, step: int) -> None: ...


@dataclass(frozen=True)
class TrainResult:
    out_dir: str  # URI of the run folder: checkpoints/, g_ema.safetensors, model.json
    checkpoint_uri: str  # the last checkpoint written
    step: int
    kimg: float
    spec: ModelSpec
    vocab: dict[str, list[str]]  # {"city": [...], "image_type": [...]}
    g_ema_state_path: str  # URI of g_ema.safetensors
    dataset_id: str = ""
    rollbacks: int = 0
    seconds: float = 0.0  # wall time of this segment's training steps
    images_per_second: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)  # the last reported values


def train(
    dataset_uri: str,
    out_dir: str,
    cfg: GanSettings,
    *,
    resume: bool = False,
    reporter: Reporter | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train on a prepared dataset; ``resume`` continues from the newest checkpoint in out_dir."""
    raise NotImplementedError
