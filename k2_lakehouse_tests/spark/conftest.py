"""One Spark session (local[2]) for every Spark test: starting one costs seconds, so it is shared."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from k2_lakehouse.core.settings import Settings


@pytest.fixture(scope="session")
def spark(shared_services: Settings) -> Iterator[object]:
    from k2_lakehouse.core import spark as k2_spark

    session = k2_spark.session(shared_services)
    yield session
    session.stop()
