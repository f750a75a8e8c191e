"""One evaluation per output folder: `best --evaluate --out DIR` leaves the old evaluation whole or
the new one whole, whatever stops it (an error, Ctrl-C, SIGTERM, kill -9 between its renames)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweep.cli import main
from sweep.core import folders

ROOT = Path(__file__).resolve().parents[1]
EVALUATE = ["best", "--evaluate", "--seeds", "1", "--no-refit", "--holdout", "0", "--quiet", "--out", "b2"]


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) by its content's digest."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def siblings(target: Path) -> list[str]:
    """What a swap left beside ``target``."""
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


@pytest.fixture
def old(tmp_path) -> Path:
    """A folder holding an earlier evaluation's files."""
    target = tmp_path / "b2"
    (target / "masks").mkdir(parents=True)
    (target / "masks" / "a_mask.png").write_bytes(b"old mask")
    (target / "model.pt").write_bytes(b"old model")
    (target / "summary.json").write_text(json.dumps({"study": "segnet", "seeds": [0]}))
    return target


def _build(target: Path, fail_after_model: bool = False) -> None:
    with folders.building(target) as stage:
        (stage / "masks").mkdir()
        (stage / "masks" / "a_mask.png").write_bytes(b"new mask")
        (stage / "model.pt").write_bytes(b"new model")
        if fail_after_model:
            raise KeyboardInterrupt  # SIGTERM while writing: before, model.pt was new and summary.json old
        (stage / "summary.json").write_text(json.dumps({"study": "segnet", "seeds": [0, 1]}))
        folders.swap_in(stage, target)


def test_an_interrupted_build_leaves_the_old_folder_byte_for_byte(old):
    before = tree(old)
    with pytest.raises(KeyboardInterrupt):
        _build(old, fail_after_model=True)
    assert tree(old) == before and siblings(old) == []


def test_a_failure_between_the_renames_puts_the_old_folder_back(old, monkeypatch):
    before = tree(old)
    real = folders._rename

    def second_fails(src, dst):
        if Path(src).name.startswith(f".{old.name}.{folders.BUILDING}"):
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(folders, "_rename", second_fails)
    with pytest.raises(folders.UsageError, match="cannot replace"):
        _build(old)
    assert tree(old) == before and siblings(old) == []


def test_a_kill_between_the_renames_is_undone_by_the_next_write(old):
    """As kill -9 leaves it: the old folder renamed away, the new one complete beside it, DIR missing."""
    before = tree(old)
    pid = dead_pid()
    new = old.parent / f".{old.name}.{folders.BUILDING}-{pid}-0a1b2c3d"
    shutil.copytree(old, new)
    (new / "model.pt").write_bytes(b"new model")
    old.rename(old.parent / f".{old.name}.{folders.REPLACED}-{pid}-0a1b2c3d")
    folders.recover(old)
    assert tree(old) == before and siblings(old) == []
    _build(old)  # and a later write succeeds
    assert (old / "model.pt").read_bytes() == b"new model" and siblings(old) == []


def test_a_kill_after_the_swap_leaves_the_new_folder_and_its_leftover_goes(old):
    pid = dead_pid()
    stale = old.parent / f".{old.name}.{folders.REPLACED}-{pid}-0a1b2c3d"
    shutil.copytree(old, stale)
    before = tree(old)
    folders.recover(old)
    assert tree(old) == before and siblings(old) == []


def test_a_live_runs_folders_are_left_alone(old):
    building = old.parent / f".{old.name}.{folders.BUILDING}-{os.getpid()}-0a1b2c3d"
    building.mkdir()
    folders.recover(old)
    assert building.is_dir()



@pytest.mark.parametrize("files", [{"notes.txt": "mine"}, {"summary.json": "{}", "model.pt": "x"},
                                   {"summary.json": '{"study": "s", "seeds": [0]}', "masks/notes.txt": "mine"}])
def test_an_out_folder_that_is_not_an_evaluation_is_refused(study_copy, capsys, files):
    out = study_copy / "b2"
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = tree(out)
    assert main(EVALUATE) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out b2: holds ") and "which no evaluation wrote" in err and len(err.splitlines()) == 1
    assert tree(out) == before


def _evaluation(study_dir: Path):
    return optuna.load_study(study_name="segnet", storage=f"sqlite:///{study_dir / 'studies.db'}").user_attrs.get("evaluation")


@pytest.mark.slow
def test_an_interrupted_or_killed_evaluation_leaves_the_old_one_whole(study_copy, capsys, monkeypatch):
    from sweep.shipping import evaluate

    out = study_copy / "b2"
    assert main(EVALUATE) == 0
    before, recorded = tree(out), _evaluation(study_copy)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == str(out / "model.pt") and summary["masks"] == str(out / "masks")

    # SIGTERM after model.pt is written: before, b2/model.pt was new and summary.json old.
    save_bundle, retrain = evaluate.save_bundle, evaluate.retrain

    def then_sigterm(bundle, path):
        save_bundle(bundle, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "save_bundle", then_sigterm)
    capsys.readouterr()
    assert main([*EVALUATE, "--top", "1", "--seeds", "1"]) == 130
    assert "nothing was recorded, on the study or in --out b2" in capsys.readouterr().err
    assert tree(out) == before and siblings(out) == [] and _evaluation(study_copy) == recorded
    monkeypatch.setattr(evaluate, "save_bundle", save_bundle)

    # kill -9 between the two renames: b2 is gone for a moment, the old one beside it.
    script = ("import os, sys\nfrom sweep.core import folders\nfrom sweep.cli import main\nreal = folders._rename\n"
              "def rename(src, dst):\n    real(src, dst)\n    os._exit(137)\n"
              f"folders._rename = rename\nsys.exit(main({EVALUATE!r}))\n")
    killed = subprocess.run([sys.executable, "-c", script], cwd=study_copy, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert killed.returncode == 137, killed.stderr
    assert not out.exists() and len(siblings(out)) == 2
    assert _evaluation(study_copy) == recorded

    # The next evaluation puts the old one back before anything else (here it is then interrupted
    # as it starts to retrain), and a later one replaces it whole.
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "retrain", interrupted)
    assert main(EVALUATE) == 130
    assert tree(out) == before and siblings(out) == []
    monkeypatch.setattr(evaluate, "retrain", retrain)
    assert main(EVALUATE) == 0
    assert siblings(out) == [] and sorted(tree(out)) == sorted(before)
    summary = json.loads((out / "summary.json").read_text())
    assert _evaluation(study_copy)["command"] == summary["command"]
    assert "--no-refit --holdout 0.0" in summary["command"]
