"""The Streamlit app's pages, driven by Streamlit's AppTest against a tiny generator trained
here and registered in a SQLite MLflow, and a store with a curated manifest."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from housegan import labels, tracking
from housegan.app import PAGES_DIR, labelling
from housegan.config import get_settings
from housegan.testing import appdata

TIMEOUT_S = 120  # the first run builds VGG16 and embeds the training set


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> appdata.TinyModel:
    return appdata.train_tiny_model(tmp_path_factory.mktemp("app-model"))


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, tiny: appdata.TinyModel) -> appdata.TinyModel:
    """The app's settings, as `housegan app` passes them: HOUSEGAN_* variables."""
    monkeypatch.setenv("HOUSEGAN_MLFLOW_TRACKING_URI", tiny.tracking_uri)
    monkeypatch.setenv("HOUSEGAN_MLFLOW_EXPERIMENT", tiny.experiment)
    monkeypatch.setenv("HOUSEGAN_STORE_URI", tiny.store_uri)
    monkeypatch.setenv("HOUSEGAN_EMBED__INPUT_SIZE", "32")  # VGG16 at 32 px: fast on a CPU
    get_settings.cache_clear()
    return tiny


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """The bytes behind every media URL the app hands the browser."""
    files: dict[str, bytes] = {}
    add = MediaFileManager.add

    def recording(
        self, path_or_data, mimetype, coordinates, file_name=None, is_for_static_download=False
    ):
        url = add(self, path_or_data, mimetype, coordinates, file_name, is_for_static_download)
        files[url] = path_or_data
        return url

    monkeypatch.setattr(MediaFileManager, "add", recording)
    return files


def page(name: str) -> AppTest:
    return AppTest.from_file(str(PAGES_DIR / f"{name}.py"), default_timeout=TIMEOUT_S)


def no_traceback(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def synthetic_images(at: AppTest, served: dict[str, bytes]) -> list[bytes]:
    return [
        served[image.value[0]]
        for image in at.image
        if image.captions and image.captions[0].startswith("synthetic")
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------ generate
def generate(seed: int, served: dict[str, bytes], n: int = 3) -> tuple[AppTest, list[bytes]]:
    at = page("generate").run()
    at.number_input(key="seed").set_value(seed)
    at.slider(key="n").set_value(n)
    at.run()
    no_traceback(at)
    return at, synthetic_images(at, served)


def test_same_seed_gives_identical_image_bytes(app_env, served) -> None:
    _, first = generate(7, served)
    _, second = generate(7, served)
    assert len(first) == 3
    assert first == second
    assert Image.open(io.BytesIO(first[0])).size == (256, 256)  # upscaled from 32 px


def test_another_seed_gives_other_images(app_env, served) -> None:
    _, seven = generate(7, served)
    _, eight = generate(8, served)
    assert not set(seven) & set(eight)


def test_every_city_and_type_of_the_vocabulary_renders(app_env, served) -> None:
    at = page("generate").run()
    cities = at.selectbox(key="city").options
    types = at.selectbox(key="image_type").options
    assert cities == ["austin", "boston"] and types == ["exterior", "landscape"]
    seen = set()
    for city in cities:
        for image_type in types:
            at.selectbox(key="city").set_value(city)
            at.selectbox(key="image_type").set_value(image_type)
            at.run()
            no_traceback(at)
            images = synthetic_images(at, served)
            assert len(images) == 4  # the default request
            seen.add(images[0])
    assert len(seen) == 4, "each (city, type) draws its own images"


def test_new_seed_button_changes_the_seed(app_env, served) -> None:
    at = page("generate").run()
    before = at.number_input(key="seed").value
    at.button(key="new_seed").click().run()
    no_traceback(at)
    assert at.number_input(key="seed").value != before  # 1 in a million to collide


def test_each_image_shows_its_nearest_real_photo_and_cosine(app_env, served) -> None:
    at, images = generate(3, served, n=2)
    nearest = [i.captions[0] for i in at.image if i.captions[0].startswith("nearest real")]
    assert len(nearest) == len(images) == 2
    for caption in nearest:
        cosine = float(caption.split("cosine ")[1].split()[0])
        assert -1.0 <= cosine <= 1.0


def test_upscaling_filter_changes_the_pixels_not_the_size(app_env, served) -> None:
    at, nearest = generate(5, served, n=1)
    at.radio(key="resampling").set_value("lanczos")
    at.run()
    lanczos = synthetic_images(at, served)
    assert nearest != lanczos
    sizes = {Image.open(io.BytesIO(b)).size for b in (*nearest, *lanczos)}
    assert sizes == {(256, 256)}


def test_download_is_a_png_of_the_shown_images(app_env, served) -> None:
    at, _ = generate(7, served, n=2)
    [button] = at.get("download_button")
    assert button.proto.label == "Download PNG"
    data = served[button.proto.url]
    assert Image.open(io.BytesIO(data)).format == "PNG"


def test_page_names_the_model_version_training_set_and_synthetic_notice(app_env) -> None:
    at = page("generate").run()
    no_traceback(at)
    assert any("synthetic" in info.value for info in at.info)
    values = at.table[0].value["value"].to_dict()
    assert values["version"] == app_env.version
    assert values["training set"] == app_env.dataset_id
    assert values["training run"] == app_env.run_id
    metrics = at.dataframe[0].value
    assert "loss/g" in set(metrics["metric"])
    assert any("No evaluation run" in caption.value for caption in at.caption)


@pytest.fixture
def evaluation_run(app_env) -> Iterator[dict[str, float]]:
    """An evaluation nested under the champion's training run (as housegan.evaluate logs it)."""
    import mlflow

    metrics = {"copy_rate": 0.0, "copy_threshold": 0.999, "fd": 12.5, "kid": 0.01}
    mlflow.set_tracking_uri(app_env.tracking_uri)
    experiment_id = mlflow.get_run(app_env.run_id).info.experiment_id
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name="evaluate",
        parent_run_id=app_env.run_id,
        tags={"stage": "evaluate"},
    ) as run:
        mlflow.log_metrics(metrics)
    yield metrics
    mlflow.MlflowClient(app_env.tracking_uri).delete_run(run.info.run_id)


def test_page_shows_the_evaluation_and_judges_each_image_by_its_copy_threshold(
    app_env, evaluation_run, served
) -> None:
    at, _ = generate(7, served, n=2)
    shown = {m.label: m.value for m in at.metric}
    assert shown["copy rate"] == "0" and shown["FD"] == "12.5"
    nearest = [i.captions[0] for i in at.image if i.captions[0].startswith("nearest real")]
    assert all("copy threshold 0.999, below: new" in caption for caption in nearest)


def test_missing_champion_shows_a_message_not_a_traceback(app_env, monkeypatch) -> None:
    monkeypatch.setenv("HOUSEGAN_APP__MODEL_URI", "models:/no-such-model@champion")
    get_settings.cache_clear()
    at = page("generate").run()
    no_traceback(at)
    assert any(
        "No model is registered as models:/no-such-model@champion" in i.value for i in at.info
    )
    assert not at.image


def test_missing_model_folder_shows_a_message(app_env, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HOUSEGAN_APP__MODEL_URI", str(tmp_path / "no-model"))
    get_settings.cache_clear()
    at = page("generate").run()
    no_traceback(at)
    assert any("No model at" in info.value for info in at.info)


def test_model_folder_renders_too(app_env, monkeypatch, served) -> None:
    monkeypatch.setenv("HOUSEGAN_APP__MODEL_URI", str(app_env.out_dir))
    get_settings.cache_clear()
    at = page("generate").run()
    no_traceback(at)
    assert len(synthetic_images(at, served)) == 4
    assert at.table[0].value["value"]["training set"] == app_env.dataset_id


def test_unreachable_mlflow_shows_an_error(app_env, monkeypatch) -> None:
    monkeypatch.setenv("HOUSEGAN_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    for name in ("generate", "runs"):
        at = page(name).run()
        no_traceback(at)
        assert any("unreachable" in error.value for error in at.error), name


# --------------------------------------------------------------------------------------- label
@pytest.fixture
def label_store(app_env, monkeypatch, tmp_path: Path) -> str:
    store = (tmp_path / "label-store").as_uri()
    appdata.write_curated_store(tmp_path, store)
    monkeypatch.setenv("HOUSEGAN_STORE_URI", store)
    get_settings.cache_clear()
    return store


def shown_key(at: AppTest) -> str:
    [photo] = at.image
    return photo.captions[0]


def label_rows(store: str):
    return labelling.read_label_table(store)


def test_each_label_click_writes_one_row_that_survives_a_rerun(label_store) -> None:
    at = page("label").run()
    no_traceback(at)
    first = shown_key(at)
    at.button(key="label-landscape").click().run()
    no_traceback(at)
    table = label_rows(label_store)
    assert len(table) == 1
    assert (table.loc[0, "key"], table.loc[0, "label"]) == (first, "landscape")
    assert table.loc[0, "labeller"] == "app"
    counts = {m.label: m.value for m in at.metric}
    assert counts["landscape"] == "1" and counts["exterior"] == "0"
    assert shown_key(at) != first, "a labelled photo leaves the queue"

    at.run()  # a rerun (or a reload) writes nothing more and still counts the label
    no_traceback(at)
    assert len(label_rows(label_store)) == 1
    assert {m.label: m.value for m in at.metric}["landscape"] == "1"
    second = shown_key(at)
    at.button(key="label-floorplan").click().run()
    table = label_rows(label_store)
    assert len(table) == 2 and table["key"].tolist()[-1] == second


def test_queue_shows_the_least_certain_photo_first(label_store) -> None:
    curated = labelling.read_curated(labelling.latest_curated_uri(label_store))
    least_sure = curated.sort_values("type_margin").iloc[0]["key"]
    at = page("label").run()
    assert shown_key(at) == least_sure


def test_city_and_cluster_filters_narrow_the_queue(label_store) -> None:
    at = page("label").run()
    at.multiselect(key="cities").set_value(["boston"])
    at.multiselect(key="clusters").set_value([2])
    at.run()
    no_traceback(at)
    key = shown_key(at)
    assert key.startswith("boston/") and key.endswith("floorplan.png")


def test_every_photo_labelled_shows_an_empty_queue_message(label_store) -> None:
    curated = labelling.read_curated(labelling.latest_curated_uri(label_store))
    for row in curated.itertuples():
        labelling.append_label(label_store, row.key, row.sha256, row.image_type, "test")
    at = page("label").run()
    no_traceback(at)
    assert any("Nothing left to label" in info.value for info in at.info)
    assert not at.image


def test_retrain_shows_the_held_out_accuracy(label_store) -> None:
    curated = labelling.read_curated(labelling.latest_curated_uri(label_store))
    for row in curated.groupby("image_type").head(3).itertuples():
        labelling.append_label(label_store, row.key, row.sha256, row.image_type, "test")
    at = page("label").run()
    at.button(key="retrain").click().run()
    no_traceback(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["labels used"] == "9"
    assert metrics["held-out accuracy"] == "1.000"  # the fixture's features separate the types


def test_label_page_without_curation_says_so(app_env, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HOUSEGAN_STORE_URI", (tmp_path / "empty-store").as_uri())
    get_settings.cache_clear()
    at = page("label").run()
    no_traceback(at)
    assert any("No curated manifest" in info.value for info in at.info)


def test_unreachable_s3_store_shows_an_error(app_env, monkeypatch) -> None:
    monkeypatch.setenv("HOUSEGAN_STORE_URI", "s3://housegan/store")
    monkeypatch.setenv("HOUSEGAN_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    at = page("label").run()
    no_traceback(at)
    assert any("store s3://housegan/store is unreachable" in e.value for e in at.error)


# ---------------------------------------------------------------------------------------- runs
@pytest.fixture
def curate_run(app_env) -> Iterator[str]:
    """A curate run as curation logs it: funnel metrics and the funnel table."""
    import pandas as pd

    from housegan.curate import STAGES

    funnel = {stage: 100 - 10 * i for i, stage in enumerate(STAGES)}
    with tracking.start_run(
        app_env.tracking_uri, app_env.experiment, "curate", tags={"housegan.stage": "curate"}
    ) as run:
        tracking.log_metrics({f"funnel.{k}": v for k, v in funnel.items()})
        table = pd.DataFrame([{"city": "ALL", "image_type": "ALL", **funnel}])
        tracking.log_table(table, "funnel.json")
    yield run.info.run_id


def test_runs_page_shows_runs_funnel_and_champion(app_env, curate_run) -> None:
    at = page("runs").run()
    no_traceback(at)
    runs = at.dataframe[0].value
    assert {"curate", "train"} <= set(runs["stage"])
    latest_curate = runs[runs["stage"] == "curate"].iloc[0]
    assert latest_curate["objects"] == 100 and latest_curate["training_set"] == 40
    assert any(f"version {app_env.version}" in m.value for m in at.markdown)
    assert any("No previous model" in c.value for c in at.caption)
    comparison = at.dataframe[-1].value
    assert "loss/g" in set(comparison["metric"])


def test_runs_page_compares_champion_with_previous(app_env, curate_run) -> None:
    tracking.set_alias(appdata.MODEL_NAME, app_env.version, "previous")
    try:
        at = page("runs").run()
        no_traceback(at)
        comparison = at.dataframe[-1].value
        row = comparison[comparison["metric"] == "loss/g"].iloc[0]
        assert row["champion"] == row["previous"] and row["change"] == 0
    finally:
        from mlflow import MlflowClient

        MlflowClient(app_env.tracking_uri).delete_registered_model_alias(
            appdata.MODEL_NAME, "previous"
        )


def test_label_part_is_one_immutable_file_per_click(label_store) -> None:
    at = page("label").run()
    at.button(key="label-exterior").click().run()
    at.button(key="label-exterior").click().run()
    assert len(labels.label_parts(labels.labels_uri(label_store)).list_parts()) == 2
    assert np.array_equal(label_rows(label_store)["label"].to_numpy(), ["exterior", "exterior"])
