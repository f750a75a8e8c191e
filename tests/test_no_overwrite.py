"""No output replaces an input or the study; patients stay in one split; model files and flags are
checked in one line (docs/RELIABILITY.md, "Faults found by a tester", second round)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from data import DataError, load_dataset, write_acdc_phantom, write_nnunet_phantom
from data.files import output_file
from model import SegNet, SegNetConfig
from sweep.cli import main
from sweep.nn.model_file import ModelBundle, current_versions, save_bundle
from tests.helpers import one_error_line

CONFIG = SegNetConfig(depth=2, base_width=4, convs_per_stage=(1, 1))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}




def volume_bundle(prep: dict | None = None) -> ModelBundle:
    torch.manual_seed(0)
    state = SegNet.from_config(CONFIG).state_dict()
    prep = prep or {"kind": "volumes", "target_spacing_mm": 1.5, "slice_size": 64}
    return ModelBundle(members=[[state]], model_config=CONFIG.to_dict(), tta=False, largest_component=False,
                       preprocessing=prep, params={}, data_fingerprint="x", study="segnet", trial=0,
                       versions=current_versions())


# 1. The study can be overwritten by an output.

@pytest.mark.parametrize("argv", [
    ["export", "--storage", "sqlite:///ex.db", "--csv", "ex.db"],
    ["report", "--storage", "sqlite:///ex.db", "--out", "ex.db"],
    ["export", "--storage", "sqlite:///ex.db", "--csv", "./sub/../ex.db"],
    ["report", "--storage", "sqlite:///ex.db", "--out", "link.db"],  # a symlink to the study is the study
])
def test_no_output_replaces_the_study(study_copy, capsys, argv):
    os.replace("studies.db", "ex.db")
    (study_copy / "sub").mkdir()
    os.symlink("ex.db", "link.db")
    before = digest(study_copy / "ex.db")
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert "study's database" in line and "wrote" not in capsys.readouterr().out
    assert digest(study_copy / "ex.db") == before
    assert main(["status", "--storage", "sqlite:///ex.db"]) == 0


def test_export_refuses_a_cases_file_that_is_the_study(study_copy, capsys):
    """``--csv x.csv`` also writes ``x_cases.csv``: that name is checked too."""
    os.replace("studies.db", "x_cases.csv")
    assert main(["export", "--storage", "sqlite:///x_cases.csv", "--csv", "x.csv"]) == 2
    assert "x_cases.csv" in one_error_line(capsys)
    assert not Path("x.csv").exists()


@pytest.mark.slow
def test_best_evaluate_refuses_an_out_inside_its_data(tmp_path, monkeypatch, capsys):
    """``best --evaluate --out`` inside the data folder would mix results into the inputs."""
    root = write_acdc_phantom(tmp_path / "acdc", 4, seed=1, n_test=1)
    before = tree_digest(root)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--data", str(root), "--trials", "1", "--epochs", "1", "--quiet", "--enqueue", "small"]) == 0
    assert main(["best", "--evaluate", "--seeds", "1", "--out", str(root / "testing"), "--quiet"]) == 2
    assert "inside the data folder" in one_error_line(capsys)
    assert tree_digest(root) == before


# 2. predict overwrites its inputs.

def test_predict_into_its_own_patient_folder_is_refused(tmp_path, capsys):
    root = write_acdc_phantom(tmp_path / "acdc", 1, seed=2, n_test=0)
    patient = root / "training" / "patient001"
    model = save_bundle(volume_bundle(), tmp_path / "model.pt")
    before = tree_digest(patient)
    assert main(["predict", "--model", str(model), str(patient), "--out", str(patient), "--quiet", "--device", "cpu"]) == 2
    line = one_error_line(capsys)
    assert "an input of this command" in line
    assert tree_digest(patient) == before


def test_predict_skips_labels_and_says_so(tmp_path, capsys):
    """Only the frames are segmented: ``_gt`` labels and the cine are counted, not read as images."""
    root = write_acdc_phantom(tmp_path / "acdc", 1, seed=2, n_test=0)
    patient = root / "training" / "patient001"
    shutil.copy(next(patient.glob("*_frame01.nii.gz")), patient / "patient001_4d.nii.gz")
    model = save_bundle(volume_bundle(), tmp_path / "model.pt")
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model), str(patient), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    frames = sorted(p.name for p in patient.glob("patient001_frame??.nii.gz"))
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == frames
    assert "skipped 3 label, cine or overlay file(s)" in printed  # two _gt and the _4d


def test_predict_refuses_a_folder_of_labels_only(tmp_path, capsys):
    root = write_nnunet_phantom(tmp_path / "nn", 2, seed=1, n_test=0)
    model = save_bundle(volume_bundle(), tmp_path / "model.pt")
    assert main(["predict", "--model", str(model), str(root / "labelsTr"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "only label files" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_predict_export_cannot_replace_the_model(tmp_path, capsys):
    model = save_bundle(volume_bundle(), tmp_path / "model.pt")
    before = digest(model)
    assert main(["predict", "--model", str(model), "--export", "torchscript", str(model)]) == 2
    assert "an input of this command" in one_error_line(capsys)
    assert digest(model) == before


# 3. One patient ID in training/ and testing/; two volumes with one name.

def test_one_patient_in_training_and_testing_is_refused(tmp_path):
    root = write_acdc_phantom(tmp_path / "acdc", 3, seed=1, n_test=1)
    shutil.copytree(root / "training" / "patient002", root / "testing" / "patient002")
    with pytest.raises(DataError) as err:
        load_dataset(str(root))
    text = str(err.value)
    assert "patient002" in text and "testing" in text and "training" in text and "\n" not in text


def test_one_patient_in_both_splits_is_one_line_at_the_cli(tmp_path, monkeypatch, capsys):
    root = write_acdc_phantom(tmp_path / "acdc", 3, seed=1, n_test=1)
    shutil.copytree(root / "training" / "patient001", root / "testing" / "patient001")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--data", str(root), "--trials", "1", "--epochs", "1", "--quiet"]) == 2
    assert "a patient must be in one split only" in one_error_line(capsys)
    assert not (tmp_path / "studies.db").exists()


def test_nnunet_case_and_patient_identity(tmp_path):
    """nnU-Net: one case name in imagesTr and imagesTs, or (with --groups) one patient in both."""
    root = write_nnunet_phantom(tmp_path / "nn", 4, seed=1, n_test=1)
    test_image = next((root / "imagesTs").glob("*_0000.nii.gz"))
    train_image = sorted((root / "imagesTr").glob("*_0000.nii.gz"))[0]
    shutil.copy(train_image, root / "imagesTs" / train_image.name)
    with pytest.raises(DataError, match="is in the test part and also in train/val"):
        load_dataset(str(root))
    (root / "imagesTs" / train_image.name).unlink()
    # Same patient (by --groups) in both parts, different case names.
    case = train_image.name[: -len("_0000.nii.gz")]
    shutil.copy(train_image, root / "imagesTs" / f"{case}b_0000.nii.gz")
    test_image.unlink()
    with pytest.raises(DataError, match="one split only"):
        load_dataset(str(root), groups=r"^(.*?)b?$")


# 13, 14, 15: model files.

def test_invalid_preprocessing_in_a_model_file_is_one_line(tmp_path, capsys):
    model = save_bundle(volume_bundle({"kind": "volumes", "target_spacing_mm": 0, "slice_size": 64}), tmp_path / "m.pt")
    volume = next(write_acdc_phantom(tmp_path / "a", 1, n_test=0).rglob("*_frame01.nii.gz"))
    assert main(["predict", "--model", str(model), str(volume), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "target_spacing_mm 0" in one_error_line(capsys)


def test_a_text_file_as_model_names_no_torch_internals(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("experiment notes: lr 1e-3\n")
    assert main(["predict", "--model", str(notes), "--export", "onnx", str(tmp_path / "x.onnx")]) == 2
    line = one_error_line(capsys)
    assert line.endswith("not a model file of segnet-sweep (not a PyTorch file)"), line


def test_outputs_get_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_bundle(volume_bundle(), tmp_path / "model.pt")
        with output_file(tmp_path / "summary.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(RuntimeError), output_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_a_one_pixel_png_is_segmented_without_a_warning(tmp_path, capsys):
    import warnings

    from PIL import Image

    state = SegNet.from_config(CONFIG).state_dict()
    bundle = ModelBundle(members=[[state]], model_config=CONFIG.to_dict(), tta=True, largest_component=True,
                         preprocessing={"kind": "slices", "image_size": [96, 96]}, params={}, data_fingerprint="x",
                         study="segnet", trial=0, versions=current_versions())
    model = save_bundle(bundle, tmp_path / "model.pt")
    Image.fromarray(np.array([[7]], np.uint8)).save(tmp_path / "one.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["predict", "--model", str(model), str(tmp_path / "one.png"), "--out", str(tmp_path / "o"),
                     "--quiet", "--device", "cpu"]) == 0
    assert "Warning" not in capsys.readouterr().err
    assert np.asarray(Image.open(tmp_path / "o" / "one_mask.png")).shape == (1, 1)
