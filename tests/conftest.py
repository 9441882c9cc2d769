"""Shared fixtures: every test runs offline and from the repository root."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tfcovr.data.fetch import LABELS_HINT, labels_dir  # noqa: E402  (after the offline switches)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def root() -> Path:
    "The repository root."
    return ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    "The real FineGym / FineDiving label files (never copied into the repository), as `tfcovr.data.fetch.labels_dir` finds them."
    try: folder = labels_dir(ROOT)
    except FileNotFoundError as e: pytest.fail(str(e), pytrace=False)  # TFCOVR_LABELS names a folder that lacks files
    if folder is None: pytest.skip(LABELS_HINT)
    return folder
