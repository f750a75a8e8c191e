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


@pytest.fixture(scope="session")
def one_trial_study(tmp_path_factory):
    """A real study of one small trial (studies.db and artifacts); tests copy it or assert it unchanged."""
    import json

    from sweep.cli import main
    from sweep.presets import preset

    folder = tmp_path_factory.mktemp("one-trial-study")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        assert main(["run", "--trials", "1", "--epochs", "1", "--quiet", "--enqueue", json.dumps(preset("small"))]) == 0
    return folder

