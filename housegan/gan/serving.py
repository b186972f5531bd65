"""Serve a trained generator: load G_ema from safetensors + JSON, make reproducible images.

A model folder holds exactly what ``train`` writes at the end: ``g_ema.safetensors`` (the EMA
generator's state dict) and ``model.json`` (the ``ModelSpec`` and the label vocabularies). Nothing
is unpickled: weights come from safetensors, everything else from JSON.

Image ``i`` of a request depends only on ``(seed, i)``: its latent is drawn from NumPy's
``default_rng([seed, i])``, so the same seed gives byte-identical images on the same device, and
asking for more images only appends new ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from housegan import storage
from housegan.devices import DeviceSpec, resolve_device
from housegan.gan.models import Generator, ModelSpec

WEIGHTS_FILE = "g_ema.safetensors"
CONFIG_FILE = "model.json"
CONFIG_FORMAT = "housegan.gan.generator/1"
LABEL_KINDS = ("city", "image_type")


class UnknownLabelError(ValueError):
    """A requested city or image type is not in the model's vocabulary."""


@dataclass(frozen=True)
class LoadedGenerator:
    generator: Generator
    spec: ModelSpec
    vocab: dict[str, list[str]]
    device: torch.device

    @property
    def image_size(self) -> int:
        return self.spec.image_size


def save_model_dir(
    generator: torch.nn.Module,
    spec: ModelSpec,
    vocab: Mapping[str, Sequence[str]],
    model_dir: str,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write a folder ``load_generator`` reads (each file atomically); returns its URI."""
    model_uri = storage.normalize_uri(str(model_dir))
    # clone: safetensors refuses shared or non-contiguous tensors.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in generator.state_dict().items()}
    body = {
        "format": CONFIG_FORMAT,
        "spec": asdict(spec),
        "vocab": {kind: list(vocab[kind]) for kind in LABEL_KINDS},
    }
    weights = safetensors_bytes(state, metadata={"format": CONFIG_FORMAT})
    storage.write_bytes_atomic(storage.join(model_uri, WEIGHTS_FILE), weights, storage_options)
    config = json.dumps(body, indent=2).encode()
    storage.write_bytes_atomic(storage.join(model_uri, CONFIG_FILE), config, storage_options)
    return model_uri


def read_model_config(config_path: str | Path) -> tuple[ModelSpec, dict[str, list[str]]]:
    """The spec and vocabularies stored in a ``model.json``."""
    body = json.loads(Path(config_path).read_text())
    vocab = {kind: list(body["vocab"][kind]) for kind in LABEL_KINDS}
    return ModelSpec(**body["spec"]), vocab


def is_model_dir(model_dir: str | Path) -> bool:
    return all(Path(model_dir, name).is_file() for name in (WEIGHTS_FILE, CONFIG_FILE))


def load_generator(
    model_dir: str | Path, device: DeviceSpec | torch.device = "cpu"
) -> LoadedGenerator:
    """Load the generator of a model folder (``g_ema.safetensors`` + ``model.json``)."""
    if str(model_dir).startswith("file://"):
        model_dir = storage.local_path(str(model_dir))
    if not is_model_dir(model_dir):
        raise FileNotFoundError(f"{model_dir} holds no {WEIGHTS_FILE} + {CONFIG_FILE}")
    return load_generator_files(Path(model_dir, WEIGHTS_FILE), Path(model_dir, CONFIG_FILE), device)


def load_generator_files(
    weights_path: str | Path, config_path: str | Path, device: DeviceSpec | torch.device = "cpu"
) -> LoadedGenerator:
    """Build the generator from its JSON config and fill it from safetensors weights."""
    target = resolve_device(device)  # first: a wrong device fails before any file is read
    spec, vocab = read_model_config(config_path)
    generator = Generator(spec)
    generator.load_state_dict(load_file(str(weights_path)))
    generator.to(target).eval().requires_grad_(False)
    return LoadedGenerator(generator=generator, spec=spec, vocab=vocab, device=target)


def label_code(vocab: Mapping[str, Sequence[str]], kind: str, value: str) -> int:
    """The integer code of ``value``; an unknown value raises, naming the valid ones."""
    names = list(vocab[kind])
    if value not in names:
        raise UnknownLabelError(
            f"unknown {kind} {value!r}; this model knows: {', '.join(names) or '(none)'}"
        )
    return names.index(value)


def latents(seed: int, n: int, z_dim: int) -> torch.Tensor:
    """Latents for images ``0..n-1`` of ``seed``; row ``i`` depends only on ``(seed, i)``."""
    rows = [np.random.default_rng([seed, i]).standard_normal(z_dim) for i in range(n)]
    return torch.from_numpy(np.stack(rows).astype(np.float32)) if rows else torch.empty(0, z_dim)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """NCHW floats in [-1, 1] -> NHWC uint8."""
    scaled = (images.float() * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).contiguous().cpu().numpy()


@torch.inference_mode()
def generate(
    model: LoadedGenerator,
    city: str,
    image_type: str,
    seed: int,
    n: int = 1,
    batch_size: int = 64,
    progress: Callable[[int], Any] | None = None,
) -> np.ndarray:
    """``n`` images ``[n, R, R, 3]`` uint8 of ``city`` x ``image_type`` from ``seed``.

    ``progress`` is called with the number of images finished after each batch.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    city_code = label_code(model.vocab, "city", city)
    type_code = label_code(model.vocab, "image_type", image_type)
    z = latents(seed, n, model.spec.z_dim)
    chunks = [np.empty((0, model.image_size, model.image_size, 3), np.uint8)]
    for start in range(0, n, batch_size):
        batch = z[start : start + batch_size].to(model.device)
        count = batch.shape[0]
        cities = torch.full((count,), city_code, dtype=torch.long, device=model.device)
        types = torch.full((count,), type_code, dtype=torch.long, device=model.device)
        chunks.append(to_uint8(model.generator(batch, cities, types)))
        if progress is not None:
            progress(count)
    return np.concatenate(chunks)


def generate_requests(model: LoadedGenerator, requests: Any) -> np.ndarray:
    """Images for each row (city, image_type, seed, n) of a DataFrame, concatenated in order."""
    missing = [c for c in ("city", "image_type", "seed") if c not in requests.columns]
    if missing:
        raise ValueError(f"request is missing columns {missing}; needs city, image_type, seed, n")
    counts = requests["n"] if "n" in requests.columns else [1] * len(requests)
    parts = [
        generate(model, str(city), str(image_type), int(seed), int(n))
        for city, image_type, seed, n in zip(
            requests["city"], requests["image_type"], requests["seed"], counts, strict=True
        )
    ]
    size = model.image_size
    return np.concatenate([np.empty((0, size, size, 3), np.uint8), *parts])


def grid(images: np.ndarray, columns: int | None = None) -> Image.Image:
    """Tile ``[n, H, W, 3]`` uint8 images into one image, row-major, 2 px apart."""
    from torchvision.utils import make_grid

    columns = columns or max(1, math.ceil(math.sqrt(len(images))))
    tiles = make_grid(torch.from_numpy(images).permute(0, 3, 1, 2), nrow=columns, padding=2)
    return Image.fromarray(tiles.permute(1, 2, 0).numpy())


def save_images(images: np.ndarray, out: str | Path, stem: str = "image") -> list[Path]:
    """A ``.png`` path gets one grid; any other path is a folder of one PNG per image."""
    out = Path(out)
    if out.suffix.lower() == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        grid(images).save(out)
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}-{index:04d}.png" for index in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image).save(path)
    return paths


def class_grid(model: LoadedGenerator, seed: int = 0, per_class: int = 8) -> Image.Image:
    """Every (city, type) of the model as a labelled row of ``per_class`` images from ``seed``
    (the same latents in every row, so rows differ by their labels only)."""
    from housegan.gan.train import sample_grid

    return sample_grid(model.generator, model.vocab, latents(seed, per_class, model.spec.z_dim))
