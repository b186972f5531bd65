"""Serving the generator: model folder round trip, reproducible images, clear label errors, and
an MLflow model that loads from code + safetensors without ever unpickling."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from housegan.gan import serving
from housegan.gan.models import Generator, ModelSpec

REPO = Path(__file__).resolve().parents[2]
VOCAB = {"city": ["austin", "boston"], "image_type": ["exterior", "landscape"]}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A tiny, randomly initialised generator saved as a model folder."""
    torch.manual_seed(0)
    spec = ModelSpec(image_size=32, n_cities=2, n_types=2, z_dim=16, width=4, embed_dim=8)
    generator = Generator(spec)
    # Non-trivial batch-norm statistics, so a lost buffer would show in the images.
    for module in generator.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    folder = tmp_path / "model"
    serving.save_model_dir(generator, spec, VOCAB, str(folder))
    torch.save(generator.state_dict(), tmp_path / "reference.pt")
    return folder


def test_model_folder_round_trip_restores_every_tensor(model_dir: Path) -> None:
    reference = torch.load(model_dir.parent / "reference.pt", weights_only=True)
    loaded = serving.load_generator(model_dir)
    restored = loaded.generator.state_dict()
    assert restored.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(restored[name], tensor), name
    assert loaded.vocab == VOCAB
    assert loaded.spec.image_size == 32
    assert not loaded.generator.training


def test_same_seed_gives_byte_identical_images_across_loads(model_dir: Path) -> None:
    first = serving.generate(serving.load_generator(model_dir), "austin", "exterior", 7, 4)
    second = serving.generate(serving.load_generator(model_dir), "austin", "exterior", 7, 4)
    assert first.dtype == np.uint8 and first.shape == (4, 32, 32, 3)
    assert first.tobytes() == second.tobytes()


def test_seed_city_and_type_each_change_the_images(model_dir: Path) -> None:
    model = serving.load_generator(model_dir)
    base = serving.generate(model, "austin", "exterior", 7, 2)
    assert not np.array_equal(base, serving.generate(model, "austin", "exterior", 8, 2))
    assert not np.array_equal(base, serving.generate(model, "boston", "exterior", 7, 2))
    assert not np.array_equal(base, serving.generate(model, "austin", "landscape", 7, 2))
    assert not np.array_equal(base[0], base[1]), "images of one request must differ"


def test_asking_for_more_images_keeps_the_first_ones(model_dir: Path) -> None:
    model = serving.load_generator(model_dir)
    few = serving.generate(model, "boston", "landscape", 3, 2)
    many = serving.generate(model, "boston", "landscape", 3, 5, batch_size=2)
    np.testing.assert_array_equal(many[:2], few)


@pytest.mark.parametrize(
    ("city", "image_type", "named", "valid"),
    [
        ("paris", "exterior", "city 'paris'", "austin, boston"),
        ("austin", "interior", "image_type 'interior'", "exterior, landscape"),
    ],
)
def test_unknown_label_error_names_the_valid_ones(
    model_dir: Path, city: str, image_type: str, named: str, valid: str
) -> None:
    model = serving.load_generator(model_dir)
    with pytest.raises(serving.UnknownLabelError) as caught:
        serving.generate(model, city, image_type, 0, 1)
    assert named in str(caught.value) and valid in str(caught.value)


def test_folder_without_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"g_ema\.safetensors"):
        serving.load_generator(tmp_path)


def test_save_images_writes_a_folder_of_pngs_or_one_grid(tmp_path: Path) -> None:
    from PIL import Image

    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    paths = serving.save_images(images, tmp_path / "each", stem="x")
    assert [p.name for p in paths] == [f"x-{i:04d}.png" for i in range(5)]
    np.testing.assert_array_equal(np.asarray(Image.open(paths[3])), images[3])
    [grid_path] = serving.save_images(images, tmp_path / "grid.png")
    assert Image.open(grid_path).size == (3 * 8 + 4 * 2, 2 * 8 + 3 * 2)  # 3x2 tiles, 2 px gaps


# ------------------------------------------------------------------------------ MLflow model
@pytest.fixture
def registered(model_dir: Path, tmp_path: Path) -> str:
    """The model folder logged and registered in a SQLite-backed MLflow; returns its name."""
    from housegan import tracking

    with tracking.start_run(f"sqlite:///{tmp_path / 'mlflow.db'}", "test-serving"):
        info = tracking.log_generator_model(str(model_dir), "cgan-test")
    tracking.set_alias("cgan-test", info.registered_model_version, "champion")
    return "cgan-test"


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("model loading tried to unpickle")


def test_registered_model_loads_without_unpickling_and_matches_the_folder(
    registered: str, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cloudpickle
    import mlflow

    for module, name in [
        (pickle, "load"),
        (pickle, "loads"),
        (cloudpickle, "load"),
        (cloudpickle, "loads"),
        (torch, "load"),
    ]:
        monkeypatch.setattr(module, name, _refuse)
    model = mlflow.pyfunc.load_model(f"models:/{registered}@champion")
    request = pd.DataFrame(
        {"city": ["austin", "boston"], "image_type": ["landscape", "exterior"], "seed": [5, 9]}
    ).assign(n=[2, 1])
    images = model.predict(request)

    direct = serving.load_generator(model_dir)
    expected = np.concatenate(
        [
            serving.generate(direct, "austin", "landscape", 5, 2),
            serving.generate(direct, "boston", "exterior", 9, 1),
        ]
    )
    assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3)
    assert images.tobytes() == expected.tobytes()


def test_logged_model_holds_safetensors_and_code_but_no_pickle(registered: str) -> None:
    import mlflow
    import yaml

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{registered}/1"))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".pth", ".joblib"))]
    assert "artifacts/g_ema.safetensors" in files and "artifacts/model.json" in files
    pyfunc = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert pyfunc["model_code_path"].endswith("pyfunc_model.py")
    assert "python_model" not in pyfunc  # the cloudpickled-object form


def test_registered_model_rejects_unknown_city_naming_valid_ones(registered: str) -> None:
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{registered}@champion")
    request = pd.DataFrame({"city": ["paris"], "image_type": ["exterior"], "seed": [0], "n": [1]})
    with pytest.raises(Exception, match="austin, boston"):
        model.predict(request)


# ---------------------------------------------------------------------------- weights loading
def _unsafe_torch_loads(path: Path) -> list[int]:
    """Line numbers of ``torch.load(...)`` calls without ``weights_only=True``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
        ):
            safe = any(
                k.arg == "weights_only"
                and isinstance(k.value, ast.Constant)
                and k.value.value is True
                for k in node.keywords
            )
            if not safe:
                lines.append(node.lineno)
    return lines


def test_library_never_calls_torch_load_without_weights_only() -> None:
    offenders = {
        str(path.relative_to(REPO)): lines
        for folder in ("housegan", "tasks", "flows")
        for path in sorted((REPO / folder).rglob("*.py"))
        if (lines := _unsafe_torch_loads(path))
    }
    assert offenders == {}
