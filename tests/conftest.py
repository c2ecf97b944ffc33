from __future__ import annotations

from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)
    yield


def data_file(*parts: str) -> Path:
    p = DATA.joinpath(*parts)
    if not p.exists():
        raise FileNotFoundError(f"test data missing: {p} (the repository expects ../shared/data beside it)")
    return p


@pytest.fixture(scope="session")
def broker():
    """One embedded Kafka-protocol broker for the session (integration, e2e and deploy tests);
    tests keep apart by unique topic and group names."""
    from streamer.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b
