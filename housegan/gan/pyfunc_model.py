"""The MLflow pyfunc model of the generator, logged as "models from code".

MLflow copies this file into the model and executes it at load time instead of unpickling a
Python object; the weights come from the ``weights`` artifact (safetensors) and the spec and
vocabularies from the ``config`` artifact (JSON). Input: a DataFrame with columns city,
image_type, seed, n; output: uint8 images ``[sum(n), R, R, 3]`` in row order.

``model_config={"device": "cuda"}`` at load time moves the generator to a GPU (default: CPU).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from housegan.devices import resolve_device
from housegan.gan import serving

WEIGHTS_ARTIFACT = "weights"
CONFIG_ARTIFACT = "config"


class GeneratorModel(PythonModel):
    """Reproducible images of a city x image type from a seed."""

    def __init__(self) -> None:
        self.loaded: serving.LoadedGenerator | None = None

    def load_context(self, context: PythonModelContext) -> None:
        # Resolved here so a wrong or absent GPU fails the load, naming the configured spec.
        device = resolve_device((context.model_config or {}).get("device", "cpu"))
        self.loaded = serving.load_generator_files(
            context.artifacts[WEIGHTS_ARTIFACT], context.artifacts[CONFIG_ARTIFACT], device
        )

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> np.ndarray:
        """Images for each request row, concatenated: uint8 ``[sum(n), R, R, 3]``."""
        if self.loaded is None:
            raise RuntimeError("model used before load_context")
        return serving.generate_requests(self.loaded, model_input)


mlflow.models.set_model(GeneratorModel())
