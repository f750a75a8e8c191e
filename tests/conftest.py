from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CMRI = ROOT.parent / "shared" / "data" / "cmri"

@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder, as a new user would (studies.db appears there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def cmri_path():
    if not CMRI.is_dir():
        pytest.skip(f"real data not found at {CMRI}")
    return CMRI

