import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MS_PERCEPTION_SHARED", REPO.parent / "shared"))
KAIST_FIXTURE = SHARED / "fixtures" / "kaist-eval"


@pytest.fixture(scope="session")
def kaist_fixture():
    if not (KAIST_FIXTURE / "gaff_detections.txt").exists():
        if os.environ.get("CI"):  # CI always has ../shared beside the checkout: never skip there
            pytest.fail(f"shared KAIST fixture not found at {KAIST_FIXTURE}")
        pytest.skip(f"shared KAIST fixture not found at {KAIST_FIXTURE} (set MS_PERCEPTION_SHARED)")
    return KAIST_FIXTURE
