"""The Streamlit app: generate images of a city, check they are new, label photos, see runs.

The pages (``pages/*.py``) are thin: every decision lives in the plain, typed helpers beside
them (``generation``, ``novelty``, ``labelling``, ``runs``, ``problems``), which tests call
directly; ``ui`` holds the few Streamlit-specific pieces (caching, error display).
``streamlit run`` takes ``main.py``; ``streamlit_args`` builds that command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

MAIN_SCRIPT = Path(__file__).with_name("main.py")
PAGES_DIR = Path(__file__).with_name("pages")


def streamlit_args(host: str, port: int) -> list[str]:
    """``python -m streamlit run main.py`` headless on ``host:port``, no usage statistics (there
    is no network), no file watcher (a served app does not hot-reload)."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(MAIN_SCRIPT),
        "--server.headless=true",
        f"--server.address={host}",
        f"--server.port={port}",
        "--server.fileWatcherType=none",
        "--browser.gatherUsageStats=false",
        "--client.toolbarMode=viewer",
        "--global.developmentMode=false",
    ]
