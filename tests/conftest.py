"""Shared fixtures. Tests that need ``../shared`` skip with a reason when it is absent (a user's own clone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the project; skips the test when it is not there."""
    if not (SHARED / "README.md").is_file():
        pytest.skip(f"needs ../shared beside the project ({SHARED} not found)")
    return SHARED


@pytest.fixture(scope="session")
def pet_images(shared_dir: Path) -> Path:
    """40 real photos (30 dogs of 16 dogImages breeds, 10 non-dogs)."""
    return shared_dir / "data" / "pet_images"


@pytest.fixture(scope="session")
def seed_photos(shared_dir: Path) -> Path:
    """The seven photos the seed notebook sent to its endpoint."""
    return shared_dir / "seed" / "test-photos-of-dogs"
