"""`housegan train` and `housegan generate` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from housegan.cli import main
from housegan.config import get_settings
from housegan.gan import serving
from housegan.gan.models import Generator, ModelSpec
from housegan.testing.gan import configure_tiny_gan, write_photos

REPO = Path(__file__).resolve().parents[2]
VOCAB = {"city": ["austin", "boston"], "image_type": ["exterior", "landscape"]}


@pytest.fixture
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings through the environment, as a user sets them: a local store, SQLite MLflow."""
    return configure_tiny_gan(monkeypatch, tmp_path)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    spec = ModelSpec(image_size=32, n_cities=2, n_types=2, z_dim=16, width=4, embed_dim=8)
    serving.save_model_dir(Generator(spec), spec, VOCAB, str(tmp_path / "model"))
    return tmp_path / "model"


def _generate(model: str, out: Path, seed: int = 3, n: int = 3, city: str = "austin") -> int:
    return main(
        [
            "generate",
            "--model",
            model,
            "--city",
            city,
            "--image-type",
            "exterior",
            "--seed",
            str(seed),
            "--n",
            str(n),
            "--out",
            str(out),
        ]
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_generate_to_a_folder_writes_one_png_per_image(model_dir: Path, tmp_path: Path) -> None:
    assert _generate(str(model_dir), tmp_path / "out", n=3) == 0
    files = sorted((tmp_path / "out").glob("*.png"))
    assert len(files) == 3
    expected = serving.generate(serving.load_generator(model_dir), "austin", "exterior", 3, 3)
    for path, image in zip(files, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), image)


def test_generate_to_a_png_path_writes_one_grid(model_dir: Path, tmp_path: Path) -> None:
    assert _generate(str(model_dir), tmp_path / "grid.png", n=4) == 0
    assert Image.open(tmp_path / "grid.png").size == (2 * 32 + 3 * 2, 2 * 32 + 3 * 2)
    assert list(tmp_path.glob("*.png")) == [tmp_path / "grid.png"]


def test_generate_same_seed_is_byte_identical_across_processes(
    model_dir: Path, tmp_path: Path
) -> None:
    assert _generate(str(model_dir), tmp_path / "here", seed=11) == 0
    command = [
        *(sys.executable, "-m", "housegan", "generate", "--model", str(model_dir)),
        *("--city", "austin", "--image-type", "exterior", "--seed", "11", "--n", "3"),
        *("--out", str(tmp_path / "there")),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _files(tmp_path / "here") == _files(tmp_path / "there")
    assert _generate(str(model_dir), tmp_path / "other", seed=12) == 0
    assert _files(tmp_path / "other") != _files(tmp_path / "here")


def test_generate_unknown_city_exits_2_listing_the_valid_ones(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _generate(str(model_dir), tmp_path / "out", city="paris") == 2
    error = capsys.readouterr().err
    assert "unknown city 'paris'" in error and "austin, boston" in error
    assert not (tmp_path / "out").exists()


def test_generate_from_a_folder_without_a_model_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _generate(str(tmp_path), tmp_path / "out") == 2
    assert "g_ema.safetensors" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- train
def _manifest_with_rejected_rows(root: Path) -> tuple[Path, int]:
    """Photos (4 per class) plus rows that keep/status must filter out (their files are
    missing, so if they were used they would show up as unreadable)."""
    manifest = write_photos(root, per_class=4)
    good = pd.read_parquet(manifest).assign(keep=True, status="ok")
    rejected = pd.DataFrame(
        [
            {"uri": (root / "gone-1.png").as_uri(), "keep": False, "status": "ok"},
            {"uri": (root / "gone-2.png").as_uri(), "keep": True, "status": "corrupt"},
        ]
    ).assign(city="austin", image_type="exterior")
    pd.concat([good, rejected], ignore_index=True).to_parquet(manifest)
    return manifest, len(good)


def _train(manifest: Path, out: Path, kimg: float, *extra: str) -> int:
    return main(
        [
            *("train", "--manifest", str(manifest), "--image-size", "32"),
            *("--kimg", str(kimg), "--batch-size", "8", "--device", "cpu"),
            *("--out", str(out), *extra),
        ]
    )


@pytest.mark.slow
def test_train_registers_a_model_that_generate_loads_and_resume_continues_the_run(
    configured: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    from housegan import tracking

    manifest, n_good = _manifest_with_rejected_rows(configured / "photos")
    out = configured / "run"
    assert _train(manifest, out, kimg=0.032) == 0
    printed = capsys.readouterr().out
    assert f": {n_good} images," in printed and "unreadable" not in printed
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]

    client = mlflow.MlflowClient(get_settings().mlflow_tracking_uri)
    run = client.get_run(run_id)
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == run.data.tags["dataset_id"]
    assert {"loss/g", "loss/d", "speed/img_per_s"} <= run.data.metrics.keys()
    [version] = client.search_model_versions("name='housegan-cgan'")
    assert version.run_id == run_id

    assert _train(manifest, out, 0.064, "--resume") == 0  # 4 more steps, same run
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == run_id
    kimg = client.get_metric_history(run_id, "progress/kimg")
    assert max(m.value for m in kimg) == pytest.approx(0.064)
    assert sorted(m.step for m in kimg) == [2, 4, 6, 8], "resume must continue, not restart"
    assert len(client.search_model_versions("name='housegan-cgan'")) == 2

    tracking.set_alias("housegan-cgan", 2, "champion")
    assert _generate(str(out), configured / "from-folder", seed=5) == 0
    assert _generate("models:/housegan-cgan@champion", configured / "from-registry", seed=5) == 0
    assert _files(configured / "from-folder") == _files(configured / "from-registry")


def test_train_with_a_manifest_lacking_labels_is_a_user_error(
    configured: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = configured / "bare.parquet"
    pd.DataFrame({"uri": ["file:///nowhere.png"], "city": ["austin"]}).to_parquet(manifest)
    assert _train(manifest, configured / "run", kimg=0.008) == 2
    assert "image_type" in capsys.readouterr().err
    assert not (configured / "run").exists()


def test_train_with_a_missing_manifest_is_a_user_error(
    configured: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _train(configured / "absent.parquet", configured / "run", kimg=0.008) == 2
    assert "absent.parquet" in capsys.readouterr().err
