"""No output replaces what the study, its data, its artifacts or the user own; a refusal leaves no
file behind (docs/RELIABILITY.md, "Nothing a user owns overwritten (second round)")."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from data import load_dataset, write_acdc_phantom, write_nnunet_phantom
from data.files import output_file
from helpers import write_coursework
from model import SegNet, SegNetConfig
from sweep.cli import main
from sweep.nn.model_file import ModelBundle, current_versions, save_bundle

CONFIG = SegNetConfig(depth=2, base_width=4, convs_per_stage=(1, 1))
MANIFEST = ".segnet-outputs.json"


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder``, with each file's content."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "wrote" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def bundle(prep: dict) -> ModelBundle:
    torch.manual_seed(0)
    return ModelBundle(members=[[SegNet.from_config(CONFIG).state_dict()]], model_config=CONFIG.to_dict(), tta=False,
                       largest_component=False, preprocessing=prep, params={}, data_fingerprint="x",
                       study="segnet", trial=0, versions=current_versions())


@pytest.fixture(scope="module")
def slice_model(tmp_path_factory) -> Path:
    return save_bundle(bundle({"kind": "slices", "image_size": [16, 16]}), tmp_path_factory.mktemp("m") / "model.pt")


@pytest.fixture(scope="module")
def volume_model(tmp_path_factory) -> Path:
    prep = {"kind": "volumes", "target_spacing_mm": 1.5, "slice_size": 64}
    return save_bundle(bundle(prep), tmp_path_factory.mktemp("m") / "model.pt")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A study of one trial run on a coursework folder, with its artifacts and a cache of its own.

    Every test here is refused or writes outside it, and asserts that it is unchanged.
    """
    from sweep.search.presets import preset

    folder = tmp_path_factory.mktemp("made-on-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("SEGNET_CACHE_DIR", str(folder / "cache"))
        data = write_coursework(folder / "cw")
        assert main(["run", "--data", str(data), "--trials", "1", "--epochs", "1", "--quiet",
                     "--enqueue", json.dumps(preset("small"))]) == 0
    (folder / "cache").mkdir(exist_ok=True)
    (folder / "cache" / "notes.json").write_text('{"mine": true}')
    return folder


@pytest.fixture
def study(made, monkeypatch, capsys):
    """In the study's folder; afterwards nothing of it (database, data, artifacts, cache) has changed."""
    monkeypatch.chdir(made)
    monkeypatch.setenv("SEGNET_CACHE_DIR", str(made / "cache"))
    before = tree_digest(made)
    capsys.readouterr()
    yield made
    assert tree_digest(made) == before
    assert main(["status"]) == 0  # and the study still opens


# --- items 1, 2, 3: outputs inside the data folder, the artifact store or the cache -----------------

@pytest.mark.parametrize("argv, where", [
    (["report", "--out", "cw/train/image/train00.png"], "inside the data folder the study was made on"),
    (["export", "--csv", "cw/train/mask/train00_mask.png"], "inside the data folder the study was made on"),
    (["report", "--out", "cw/new-report.html"], "inside the data folder the study was made on"),
    (["export", "--csv", "cw/test/trials.csv"], "inside the data folder the study was made on"),
    (["report", "--out", "cache/notes.json"], "inside this machine's cache folder"),
    (["export", "--csv", "cache/trials.csv"], "inside this machine's cache folder"),
    (["report", "--out", "artifacts/r.html"], "inside the study's artifact store"),
])
def test_report_and_export_keep_out_of_the_data_the_store_and_the_cache(study, capsys, argv, where):
    assert main(argv) == 2
    assert where in one_error_line(capsys)


def test_report_cannot_replace_a_stored_artifact(study, capsys):
    """``report --out artifacts/<id>``: the model's only copy where no machine has cached it."""
    artifact = next(p for p in (study / "artifacts").rglob("*") if p.is_file())
    assert main(["report", "--out", str(artifact.relative_to(study))]) == 2
    assert "inside the study's artifact store" in one_error_line(capsys)


def test_a_symlink_into_the_data_folder_is_the_data_folder(study, tmp_path, capsys):
    link = tmp_path / "looks-elsewhere"
    os.symlink(study / "cw" / "train" / "mask", link)
    assert main(["export", "--csv", str(link / "train01_mask.png")]) == 2
    assert "inside the data folder the study was made on" in one_error_line(capsys)


def test_predict_with_the_study_keeps_out_of_its_data_and_store(study, slice_model, capsys):
    """``predict --model``, beside the study, knows the study's folders too."""
    for out in ("cw/test/pred", "artifacts/pred", "cache/pred"):
        assert main(["predict", "--model", str(slice_model), "cw/test/image", "--out", out, "--quiet"]) == 2
        assert "is inside" in one_error_line(capsys)


def test_best_evaluate_keeps_out_of_the_store_and_a_given_data_folder(study, tmp_path, capsys):
    assert main(["best", "--evaluate", "--seeds", "1", "--out", "artifacts/best", "--quiet"]) == 2
    assert "inside the study's artifact store" in one_error_line(capsys)
    copy = shutil.copytree(study / "cw", tmp_path / "cw")
    assert main(["best", "--evaluate", "--seeds", "1", "--data", str(copy), "--out", str(copy / "best"), "--quiet"]) == 2
    assert "inside the data folder (--data)" in one_error_line(capsys)
    assert not (copy / "best").exists()


# --- item 5: a name SQLite keeps for itself ---------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["predict", "--out", "studies.db-journal"],
    ["predict", "--out", "studies.db-wal"],
    ["report", "--out", "studies.db-journal/r.html"],
    ["report", "--out", "studies.db-shm.html"],
    ["export", "--csv", "studies.db-wal"],
])
def test_no_output_takes_a_journal_name_of_the_study(study, slice_model, capsys, argv):
    if argv[0] == "predict":
        argv = [*argv[:1], "--model", str(slice_model), "cw/test/image", "--quiet", *argv[1:]]
    assert main(argv) == 2
    assert "SQLite would read it as its journal" in one_error_line(capsys)
    assert not list(study.glob("studies.db-*"))


# --- item 2: predicted masks never take the name of a file predict did not write --------------------

def test_predict_into_the_ground_truth_folder_is_refused(tmp_path, slice_model, capsys):
    data = write_coursework(tmp_path / "cw")
    before = tree_digest(data)
    out = data / "val" / "mask"
    assert main(["predict", "--model", str(slice_model), str(data / "val" / "image"), "--out", str(out), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "val00_mask.png exists and was not written by predict" in line
    assert tree_digest(data) == before  # no mask replaced, no manifest left


def test_predict_into_nnunet_test_labels_is_refused(tmp_path, volume_model, capsys):
    root = write_nnunet_phantom(tmp_path / "nn", 2, seed=1, n_test=1)
    before = tree_digest(root)
    assert main(["predict", "--model", str(volume_model), str(root / "imagesTs"), "--out", str(root / "labelsTs"),
                 "--quiet", "--device", "cpu"]) == 2
    assert "was not written by predict" in one_error_line(capsys)
    assert tree_digest(root) == before


def test_predict_reruns_into_its_own_folder_and_keeps_what_it_did_not_write(tmp_path, slice_model, capsys):
    data = write_coursework(tmp_path / "cw")
    out = tmp_path / "pred"
    argv = ["predict", "--model", str(slice_model), str(data / "test" / "image"), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    listed = json.loads((out / MANIFEST).read_text())["files"]
    assert sorted(listed) == ["test00_mask.png", "test01_mask.png", "test02_mask.png"] and all(listed.values())
    (out / "notes.txt").write_text("my notes")
    assert main(argv) == 0  # its own masks are replaced
    assert (out / "notes.txt").read_text() == "my notes"
    # A mask corrected by hand is no longer predict's: a rerun keeps it and says so.
    (out / "test01_mask.png").write_bytes((data / "train" / "mask" / "train00_mask.png").read_bytes())
    before = tree_digest(out)
    capsys.readouterr()
    assert main(argv) == 2
    assert "test01_mask.png exists and was changed since written by predict" in one_error_line(capsys)
    assert tree_digest(out) == before
    # A run killed outright leaves its names listed without a digest: the next run may replace them.
    (out / "test01_mask.png").unlink()
    listed = json.loads((out / MANIFEST).read_text())
    listed["files"]["test01_mask.png"] = None
    (out / MANIFEST).write_text(json.dumps(listed))
    (out / "test01_mask.png").write_bytes(b"half of a mask")
    assert main(argv) == 0


def test_a_manifest_predict_did_not_write_is_not_taken_for_one(tmp_path, slice_model, capsys):
    data = write_coursework(tmp_path / "cw")
    out = tmp_path / "pred"
    out.mkdir()
    (out / MANIFEST).write_text('{"files": {"test00_mask.png": null}}')  # not predict's format
    (out / "test00_mask.png").write_text("mine")
    before = tree_digest(out)
    assert main(["predict", "--model", str(slice_model), str(data / "test" / "image"), "--out", str(out), "--quiet"]) == 2
    assert "is not a list of predict's outputs" in one_error_line(capsys)
    assert tree_digest(out) == before


# --- item 4: the cache touches only what it wrote ---------------------------------------------------

def test_cache_pruning_never_removes_the_users_files(tmp_path, monkeypatch):
    from data import cache

    folder = tmp_path / "cache"
    folder.mkdir()
    monkeypatch.setenv(cache.CACHE_ENV, str(folder))
    monkeypatch.setenv(cache.CACHE_MAX_ENV, "0.00001")  # 10 kB: every save prunes all but its own entry
    old = time.time() - 3 * 86400
    user = {"notes.json": b'{"notes": "mine"}', "dataset.json": b'{"name": "my dataset"}', "weights.npz": b"mine too",
            ".scratch.npz.1.tmp": b"a hidden file of mine"}
    for name, content in user.items():
        (folder / name).write_bytes(content)
        os.utime(folder / name, (old, old))
    a = write_acdc_phantom(tmp_path / "a", 2, n_test=1, size_range=(40, 48))
    b = write_acdc_phantom(tmp_path / "b", 2, seed=3, n_test=1, size_range=(40, 48))
    load_dataset(str(a))
    # An entry of the former layout (in the cache folder itself): never read, never removed.
    entries = next(p for p in folder.rglob("*.npz") if len(p.stem) == 32).parent  # (where this version keeps them)
    for entry in entries.iterdir() if entries != folder else ():
        user[entry.name] = entry.read_bytes()
        (folder / entry.name).write_bytes(user[entry.name])
        os.utime(folder / entry.name, (old, old))
    load_dataset(str(b))  # a second dataset: the first entry is pruned
    load_dataset(str(a))
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == user
    assert len(list(entries.glob("*.json"))) == 1  # the limit still holds for the cache's own entries


# --- item 19: a refusal or a failure leaves no file behind ------------------------------------------

def test_run_space_local_without_enqueue_leaves_no_database(in_tmp, capsys):
    assert main(["run", "--space", "local", "--trials", "1", "--epochs", "1", "--quiet"]) == 2
    assert "--enqueue" in one_error_line(capsys)
    assert list(in_tmp.iterdir()) == []


def test_predict_failures_leave_no_output_folder(tmp_path, capsys):
    frame = next(write_acdc_phantom(tmp_path / "a", 1, n_test=0).rglob("*_frame01.nii.gz"))
    cine = tmp_path / "cine.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.float32), np.eye(4)), cine)
    bad_spacing = save_bundle(bundle({"kind": "volumes", "target_spacing_mm": 0, "slice_size": 64}), tmp_path / "bad.pt")
    good = save_bundle(bundle({"kind": "volumes", "target_spacing_mm": 1.5, "slice_size": 64}), tmp_path / "good.pt")
    for model, volume in ((bad_spacing, frame), (good, cine)):
        out = tmp_path / "new" / "nested" / "out"
        assert main(["predict", "--model", str(model), str(volume), "--out", str(out), "--quiet", "--device", "cpu"]) == 2
        one_error_line(capsys)
        assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    for volumes in ([cine], [frame, cine]):  # a cine after a good frame: refused before the frame's output
        assert main(["predict", "--model", str(good), *map(str, volumes), "--out", str(existing), "--quiet",
                     "--device", "cpu"]) == 2
        assert "4-D NIfTI" in one_error_line(capsys)
        assert list(existing.iterdir()) == []


def test_a_killed_writes_temporary_file_is_removed_by_the_next_write(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    dead = folder / ".partial-k1ll3d_x-report.html"  # what output_file names it; no writer holds it
    dead.write_text("half a report")
    mine = [folder / ".partial-notes", folder / ".partial-abc-report.html", folder / "x.partial-abcdefgh-y"]
    for path in mine:
        path.write_text("not output_file's")
    with output_file(folder / "b.txt") as live:  # a writer at work: the next write leaves its file alone
        live.write_text("in progress")
        with output_file(folder / "a.txt") as tmp:
            tmp.write_text("a")
        assert live.exists()
    assert not dead.exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(["a.txt", "b.txt", *(p.name for p in mine)])


def test_a_killed_reports_temporary_file_goes_with_the_next_report(study, tmp_path, capsys):
    dead = tmp_path / ".partial-abcdefgh-report.html"
    dead.write_text("<html>half")
    assert main(["report", "--out", str(tmp_path / "report.html")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
