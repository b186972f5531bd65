"""The app in a real browser: `streamlit run` on a loopback port (started as `stack up` starts
it, stopped by PID), headless Chromium from Debian driven by Playwright. Each test keeps a
screenshot under .housegan/test-artifacts/ and prints its path."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from housegan import stack
from housegan.app import labelling
from housegan.testing import appdata

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / ".housegan" / "test-artifacts"
WAIT_MS = 120_000  # the first page view builds VGG16 and embeds the training set


@dataclass(frozen=True)
class RunningApp:
    url: str
    store_uri: str
    model: appdata.TinyModel


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing: `apt-get install -y chromium chromium-driver` (.ci/run "
            "installs it as root)"
        )
    pytest.importorskip("playwright", reason="playwright is in the dev extras")
    root = tmp_path_factory.mktemp("browser-app")
    model = appdata.log_history(appdata.train_tiny_model(root))
    appdata.write_curated_store(root, model.store_uri)
    env = {
        "HOUSEGAN_MLFLOW_TRACKING_URI": model.tracking_uri,
        "HOUSEGAN_MLFLOW_EXPERIMENT": model.experiment,
        "HOUSEGAN_STORE_URI": model.store_uri,
        "HOUSEGAN_EMBED__INPUT_SIZE": "32",
        "HOUSEGAN_STACK__DIR": str(root / "no-stack"),
    }
    service = stack.start_app(
        root / "app", host="127.0.0.1", port=stack.free_port(), env=env, cwd=root
    )
    try:
        yield RunningApp(service.endpoint, model.store_uri, model)
    finally:
        stack.stop_pid(service.pid)
        assert not stack.pid_alive(service.pid)


@pytest.fixture(scope="module")
def browser(app: RunningApp) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 2000})
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    yield tab
    context.close()


def keep_screenshot(tab, name: str) -> Path:
    """A full-page screenshot under the artifacts folder; fails if it is blank."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"app-{name}.png"
    data = tab.screenshot(full_page=True)
    path.write_bytes(data)
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32)
    print(f"screenshot: {path} ({pixels.shape[1]}x{pixels.shape[0]}, std {pixels.std():.1f})")
    assert pixels.std() > 10.0, f"{path} looks blank"
    return path


def settle(tab) -> None:
    """Wait until Streamlit has finished the current run (its status widget is gone)."""
    tab.wait_for_load_state("networkidle")
    tab.locator('[data-testid="stStatusWidget"]').wait_for(state="detached")


def test_generate_page_draws_images_in_a_real_browser(app: RunningApp, page) -> None:
    page.goto(app.url)
    page.get_by_text("synthetic · seed 0 · #0").wait_for()
    page.get_by_role("button", name="New seed").click()
    caption = page.get_by_text(re.compile(r"synthetic · seed [1-9]\d* · #0"))
    caption.wait_for()
    settle(page)
    seed = int(caption.inner_text().split("seed ")[1].split()[0])
    assert page.get_by_label("Seed", exact=True).input_value() == str(seed)
    images = page.locator('[data-testid="stImage"] img')
    assert images.count() == 8  # 4 generated, 4 nearest real photos
    first = np.asarray(Image.open(io.BytesIO(images.first.screenshot())), dtype=np.float32)
    assert first.std() > 5.0, "the generated image is flat"
    assert page.get_by_text("nearest real: cosine").count() == 4
    keep_screenshot(page, "generate")


def test_label_page_takes_a_label_by_key_in_a_real_browser(app: RunningApp, page) -> None:
    page.goto(f"{app.url}/label")
    page.get_by_role("button", name=re.compile("landscape")).wait_for()
    settle(page)
    shown = page.locator('[data-testid="stImage"]').inner_text().strip()
    keep_screenshot(page, "label")
    page.locator("body").press("2")  # the landscape key
    page.get_by_text(f"Labelled {shown} as landscape.").wait_for()
    settle(page)
    table = labelling.read_label_table(app.store_uri)
    assert table[["key", "label"]].values.tolist() == [[shown, "landscape"]]


def test_runs_page_shows_the_champion_in_a_real_browser(app: RunningApp, page) -> None:
    page.goto(f"{app.url}/runs")
    page.get_by_text(f"version {app.model.version}").first.wait_for()
    settle(page)
    assert page.get_by_text("Latest runs in 'housegan'").count() == 1
    keep_screenshot(page, "runs")
