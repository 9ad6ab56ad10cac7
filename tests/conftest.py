"""Fixtures shared by the end-to-end tests."""
from pathlib import Path

import pytest


@pytest.fixture
def shared() -> Path:
    from services.stagekit.testing import shared_dir
    path = shared_dir()
    if not (path / "footage").is_dir():
        pytest.skip("../shared/footage is not available")
    return path
