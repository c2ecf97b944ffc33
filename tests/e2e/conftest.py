from __future__ import annotations

import pytest

from streamer.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker():
    with EmbeddedBroker() as b:
        yield b
