"""Unit tests start no server: a test here that asks for one belongs in tests/integration/."""

from __future__ import annotations

from pathlib import Path

import pytest

UNIT_DIR = Path(__file__).parent

SERVER_FIXTURES = frozenset({"s3_server", "bucket", "settings", "prefect_harness"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if UNIT_DIR not in item.path.parents:
            continue  # the hook sees the whole session's items
        wanted = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if wanted or item.get_closest_marker("integration"):
            raise pytest.UsageError(
                f"{item.nodeid} needs a server ({sorted(wanted) or 'integration'}): "
                "move it to tests/integration/"
            )
