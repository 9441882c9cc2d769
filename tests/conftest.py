"""Shared fixtures: every test runs offline and from the repository root."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TFCOVR_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture
def root() -> Path:
    "The repository root."
    return ROOT


@pytest.fixture
def shared_data() -> Path:
    "The real FineGym / FineDiving label files (never copied into the repository)."
    if not SHARED_DATA.exists(): pytest.fail(f"real label files expected at {SHARED_DATA} (or set TFCOVR_SHARED_DATA)")
    return SHARED_DATA
