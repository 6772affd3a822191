import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real WIDER FACE material beside the repo; tests skip where it is absent."""
    if not (SHARED_DATA / "widerface").is_dir():
        pytest.skip(f"real WIDER FACE test data not found at {SHARED_DATA} (present only on dev/CI machines)")
    return SHARED_DATA
