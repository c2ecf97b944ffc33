from __future__ import annotations

import shutil
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def tool(name: str) -> str:
    """A binary of Debian's `prometheus` package (installed by `make install`)."""
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found: `make install` installs Debian's prometheus package")
    return path
