"""The app's plain helpers, without Streamlit: nearest real photos, the label queue, run tables,
problems as messages."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from housegan import tracking
from housegan.app import generation, labelling, novelty, problems, runs, streamlit_args
from housegan.config import EmbedSettings, EvaluateSettings, Settings
from housegan.testing import appdata

EMBED = EmbedSettings(input_size=32)


@pytest.fixture
def packed_store(tmp_path: Path) -> tuple[str, str]:
    """A store holding one packed training set; returns (store URI, dataset id)."""
    from housegan.gan.data import prepare

    photos = appdata.write_photos(tmp_path / "photos", per_class=3)
    frame = pd.DataFrame(
        [{"uri": p.path.as_uri(), "city": p.city, "image_type": p.image_type} for p in photos]
    )
    frame.to_parquet(tmp_path / "manifest.parquet")
    store = (tmp_path / "store").as_uri()
    return store, prepare(str(tmp_path / "manifest.parquet"), store, 32).dataset_id


def test_a_training_image_is_its_own_nearest_real_photo(packed_store) -> None:
    store, dataset_id = packed_store
    embedder = novelty.build_embedder(EMBED)
    real = novelty.load_real_set(store, dataset_id, embedder)
    matches = novelty.nearest_real(embedder, real.images[[0, 5]], real, EvaluateSettings())
    assert [m.index for m in matches] == [0, 5]
    assert all(m.cosine == pytest.approx(1.0, abs=1e-3) for m in matches)
    city, image_type = real.sample.city[5], real.sample.image_type[5]
    assert (matches[1].city, matches[1].image_type) == (
        real.sample.cities[city],
        real.sample.image_types[image_type],
    )


def test_real_features_land_in_the_evaluation_cache_and_are_reused(packed_store) -> None:
    from housegan.evaluate.sampling import features_uri

    store, dataset_id = packed_store
    embedder = novelty.build_embedder(EMBED)
    first = novelty.load_real_set(store, dataset_id, embedder)
    cached = Path(features_uri(store, embedder.tag, dataset_id).removeprefix("file://"))
    assert cached.is_file()
    stamp = cached.stat().st_mtime_ns
    again = novelty.load_real_set(store, dataset_id, embedder)
    assert cached.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first.sample.features, again.sample.features)


def test_a_missing_training_set_is_a_nothing_there_yet(tmp_path: Path) -> None:
    with pytest.raises(problems.NothingThereYet, match="not in the store"):
        novelty.load_real_set((tmp_path / "s").as_uri(), "0123abcd", embedder=None)


def test_upscaling_keeps_pixels_with_nearest_and_blends_with_lanczos() -> None:
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    nearest = np.asarray(generation.upscale(image, 64, "nearest"))
    lanczos = np.asarray(generation.upscale(image, 64, "lanczos"))
    assert nearest.shape == lanczos.shape == (64, 64, 3)
    np.testing.assert_array_equal(nearest[::8, ::8], image)
    assert len(np.unique(lanczos.reshape(-1, 3), axis=0)) > 64


def test_png_bytes_are_the_same_for_the_same_pixels() -> None:
    image = np.full((4, 4, 3), 7, dtype=np.uint8)
    picture = generation.upscale(image, 16, "bilinear")
    assert generation.png_bytes(picture) == generation.png_bytes(picture.copy())


def test_registry_uris_are_parsed_and_folders_are_not() -> None:
    assert tracking.parse_registry_uri("models:/housegan-cgan@champion") == tracking.ModelRef(
        "housegan-cgan", alias="champion"
    )
    assert tracking.parse_registry_uri("models:/m/3") == tracking.ModelRef("m", version="3")
    assert tracking.parse_registry_uri("/tmp/model") is None
    assert tracking.parse_registry_uri("runs:/abc/generator") is None


# ------------------------------------------------------------------------------------- labels
@pytest.fixture
def curated_store(tmp_path: Path) -> tuple[str, pd.DataFrame]:
    store = (tmp_path / "store").as_uri()
    appdata.write_curated_store(tmp_path, store)
    return store, labelling.read_curated(labelling.latest_curated_uri(store))


def test_queue_skips_labelled_photos_and_puts_skipped_ones_last(curated_store) -> None:
    store, curated = curated_store
    order = curated.sort_values("type_margin")
    first, second = order.iloc[0], order.iloc[1]
    labelling.append_label(store, first.key, first.sha256, "exterior", "test")
    queue = labelling.label_queue(curated, labelling.read_label_table(store), 100)
    assert first.key not in set(queue["key"]) and queue.iloc[0]["key"] == second.key
    assert queue["type_margin"].is_monotonic_increasing
    later = labelling.label_queue(
        curated, labelling.read_label_table(store), 100, skipped=[second.sha256]
    )
    assert later.iloc[-1]["key"] == second.key and len(later) == len(curated) - 1


def test_retrained_margins_reorder_the_queue(curated_store) -> None:
    _, curated = curated_store
    retrained = curated[["sha256"]].assign(
        image_type="misc", type_confidence=0.5, type_margin=np.linspace(1, 0, len(curated))
    )
    queue = labelling.label_queue(
        curated, labelling.read_label_table("memory://none"), 3, retrained=retrained
    )
    assert queue["key"].tolist() == curated["key"].tolist()[::-1][:3]
    assert set(queue["suggested_label"]) == {"misc"}


def test_counts_use_the_latest_label_of_each_photo(curated_store) -> None:
    store, curated = curated_store
    photo = curated.iloc[0]
    labelling.append_label(store, photo.key, photo.sha256, "misc", "a")
    labelling.append_label(store, photo.key, photo.sha256, "interior", "b")
    counts = labelling.label_counts(labelling.read_label_table(store), curated)
    assert counts["interior"] == 1 and counts["misc"] == 0


def test_retrain_needs_a_clustering_run(tmp_path: Path) -> None:
    store = (tmp_path / "store").as_uri()
    empty = pd.DataFrame(columns=["key", "sha256"])
    with pytest.raises(problems.NothingThereYet, match="No clustering run"):
        labelling.retrain(store, empty, empty, Settings())


def test_each_image_type_has_its_own_key() -> None:
    keys = labelling.shortcut_keys()
    assert keys["exterior"] == "1" and len(set(keys.values())) == len(keys)


# --------------------------------------------------------------------------------------- runs
def _version(evaluation: dict, metrics: dict, version: str = "1") -> tracking.VersionSummary:
    return tracking.VersionSummary("m", version, (), "r", "0", "d", metrics, evaluation, None, None)


def test_comparison_lists_evaluation_first_and_the_change() -> None:
    champion = _version({"fd": 30.0, "kid": 0.02}, {"loss/g": 1.0, "lr/g": 1e-4}, "2")
    previous = _version({"fd": 40.0}, {"loss/g": 1.5})
    table = runs.compare_versions(champion, previous)
    assert table["metric"].tolist() == ["fd", "kid", "loss/g"]  # lr/g is not compared
    fd = table.iloc[0]
    assert (fd["champion"], fd["previous"], fd["change"]) == (30.0, 40.0, -10.0)
    assert pd.isna(table.iloc[1]["change"])


def test_runs_table_shows_the_funnel_of_curate_runs_and_links(tmp_path) -> None:
    curate = SimpleNamespace(
        run_id="c1",
        name="curate",
        stage="curate",
        status="FINISHED",
        start_time=0,
        end_time=120_000,
        experiment_id="3",
        metrics={"funnel.objects": 10.0, "funnel.valid": 9.0},
    )
    train = SimpleNamespace(
        run_id="t1",
        name="cgan",
        stage="train",
        status="RUNNING",
        start_time=0,
        end_time=None,
        experiment_id="3",
        metrics={"loss/g": 1.2},
    )
    table = runs.runs_table([curate, train], "http://127.0.0.1:5000")
    assert table.loc[0, "objects"] == 10 and table.loc[0, "minutes"] == 2.0
    assert pd.isna(table.loc[1, "objects"]) and table.loc[1, "loss/g"] == 1.2
    assert table.loc[1, "link"] == "http://127.0.0.1:5000/#/experiments/3/runs/t1"
    assert "training_set" not in table.columns  # no shown run has it


def test_ui_links_come_from_settings_then_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    settings = Settings(
        mlflow_tracking_uri="http://127.0.0.1:5000/", stack={"dir": tmp_path / "stack"}
    )
    assert runs.mlflow_ui_url(settings) == "http://127.0.0.1:5000"
    assert runs.prefect_ui_url(settings) == "http://127.0.0.1:4200"
    monkeypatch.delenv("PREFECT_API_URL")
    local = Settings(mlflow_tracking_uri="sqlite:///x.db", stack={"dir": tmp_path / "stack"})
    assert runs.mlflow_ui_url(local) is None and runs.prefect_ui_url(local) is None
    configured = Settings(app={"mlflow_ui_url": "https://mlflow.example/"})
    assert runs.mlflow_ui_url(configured) == "https://mlflow.example"


# ----------------------------------------------------------------------------------- problems
def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_dead_s3_endpoint_is_reported_at_once(tmp_path) -> None:
    settings = Settings(
        store_uri="s3://b/store", s3_endpoint_url=f"http://127.0.0.1:{_closed_port()}"
    )
    with pytest.raises(problems.StoreUnreachable, match="s3://b/store is unreachable"):
        problems.check_store(settings)
    problems.check_store(Settings(store_uri=(tmp_path / "s").as_uri()))  # local: no probe


def test_a_dead_tracking_server_is_reported_at_once() -> None:
    settings = Settings(mlflow_tracking_uri=f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(problems.TrackingUnreachable, match="unreachable"):
        problems.check_tracking(settings)


def test_library_errors_become_messages_and_bugs_do_not() -> None:
    import botocore.exceptions
    from mlflow.exceptions import MlflowException

    settings = Settings(store_uri="s3://b/store")
    missing = problems.explain(botocore.exceptions.NoCredentialsError(), settings)
    assert isinstance(missing, problems.StoreUnreachable) and "credentials" in missing.message
    gone = MlflowException("Registered model alias champion not found.")
    assert isinstance(problems.explain(gone, settings), problems.NothingThereYet)
    assert problems.explain(KeyError("bug"), settings) is None


def test_streamlit_command_is_headless_on_the_given_address() -> None:
    args = streamlit_args("127.0.0.1", 8765)
    assert args[1:4] == ["-m", "streamlit", "run"] and args[4].endswith("main.py")
    assert {"--server.headless=true", "--server.address=127.0.0.1", "--server.port=8765"} <= set(
        args
    )
    assert "--browser.gatherUsageStats=false" in args


def test_app_command_serves_the_given_model_on_the_given_port(monkeypatch) -> None:
    from housegan.cli import main

    called = {}

    def execve(path, args, env):
        called.update(path=path, args=args, env=env)

    monkeypatch.setattr("os.execve", execve)
    assert main(["app", "--model", "models:/m/2", "--port", "8777"]) == 0
    assert called["env"]["HOUSEGAN_APP__MODEL_URI"] == "models:/m/2"
    assert "--server.port=8777" in called["args"] and "--server.address=127.0.0.1" in called["args"]
