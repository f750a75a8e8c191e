from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CMRI = ROOT.parent / "shared" / "data" / "cmri"

# A small, fast configuration for end-to-end tests that must not depend on what the sampler draws.
SMALL_PARAMS = {
    "lr": 3e-3, "weight_decay": 1e-5, "depth": 3, "base_width": 8, "convs_shallow": 1, "convs_deep": 1,
    "kernel_size": 3, "batch_size": 16, "dice_weight": 0.5, "class_weight_power": 0.3, "dropout": 0.0,
    "schedule": "cosine", "aug_rotate": 5.0, "aug_scale": 0.05, "aug_gamma": 0.1,
}


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

