"""End to end on synthetic NIfTI volumes: a tiny sweep, `best --evaluate` per patient, `predict`."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import optuna
import pytest

from data import write_acdc_phantom, write_nnunet_phantom
from sweep.cli import main


@pytest.fixture
def volumes_env(in_tmp, monkeypatch):
    monkeypatch.setenv("SEGNET_CACHE_DIR", str(in_tmp / "cache"))
    return in_tmp


def _run_and_evaluate(data: str, capsys, *extra) -> dict:
    assert main(["run", "--data", data, "--trials", "1", "--epochs", "2", "--quiet", "--enqueue", "small", *extra]) == 0
    capsys.readouterr()
    assert main(["best", "--evaluate", "--seeds", "1", "--quiet", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _assert_same_geometry(mask_path, source_path):
    mask, source = nib.load(mask_path), nib.load(source_path)
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2, 3}


@pytest.mark.slow
def test_acdc_sweep_evaluates_each_patient_at_ed_and_es(volumes_env, capsys):
    root = write_acdc_phantom(volumes_env / "acdc", 6, seed=3, n_test=2)
    result = _run_and_evaluate(str(root), capsys)

    study = optuna.load_study(study_name="segnet", storage="sqlite:///studies.db")
    split = study.user_attrs["split_patients"]
    assert not set(split["train"]) & set(split["val"]) and not set(split["train"]) & set(split["test"])
    assert split["test"] == sorted(p.name for p in (root / "testing").iterdir())

    volumes = result["volumes"]
    assert volumes["n_volumes"] == 4 and len(volumes["cases"]) == 4
    assert {c["phase"] for c in volumes["cases"]} == {"ED", "ES"}
    assert set(volumes["summary"]) == {"ED", "ES", "all"}
    for case in volumes["cases"]:
        assert 0 <= case["dice_lv"] <= 1 and case["hd95_lv"] >= 0 and case["assd_myo"] >= 0
        patient = case["patient"]
        _assert_same_geometry(volumes_env / "best" / "masks" / f"{case['case']}.nii.gz",
                              root / "testing" / patient / f"{case['case']}.nii.gz")
    assert volumes["clinical_patients"] == 2
    assert set(volumes["clinical"]) == {"lv_edv", "lv_esv", "lv_ef", "rv_edv", "rv_esv", "rv_ef", "myo_mass"}
    assert all(set(v) == {"r", "bias"} for v in volumes["clinical"].values())
    assert result["test"]["n_images"] > 0  # the pooled slice Dice of today's JSON is kept

    # predict on the test volumes gives exactly the masks best --evaluate wrote
    case = volumes["cases"][0]
    source = root / "testing" / case["patient"] / f"{case['case']}.nii.gz"
    assert main(["predict", "--model", "best/model.pt", str(source), "--out", "pred", "--quiet"]) == 0
    ours = np.asarray(nib.load(volumes_env / "pred" / f"{case['case']}.nii.gz").dataobj)
    theirs = np.asarray(nib.load(volumes_env / "best" / "masks" / f"{case['case']}.nii.gz").dataobj)
    assert np.array_equal(ours, theirs)

    assert main(["status"]) == 0
    assert "ED " in capsys.readouterr().out
    assert main(["export", "--csv", "trials.csv"]) == 0
    assert (volumes_env / "trials_cases.csv").read_text().count("\n") == 5  # header + 4 volumes


@pytest.mark.slow
def test_nnunet_sweep_groups_cases_by_patient(volumes_env, capsys):
    root = write_nnunet_phantom(volumes_env / "nnunet", 6, seed=4, n_test=2)
    result = _run_and_evaluate(str(root), capsys, "--groups", r"(patient\d+)", "--cv", "2")
    study = optuna.load_study(study_name="segnet", storage="sqlite:///studies.db")
    folds = study.user_attrs["cv_folds"]
    patients = [{name.split("_")[0] for name in fold} for fold in folds]
    assert not patients[0] & patients[1]  # no patient in two folds
    assert len(result["volumes"]["cases"]) == len(list((root / "imagesTs").glob("*.nii.gz")))
    assert "clinical" not in result["volumes"]  # nnU-Net cases carry no ED/ES phase
    for case in result["volumes"]["cases"]:
        _assert_same_geometry(volumes_env / "best" / "masks" / f"{case['case']}.nii.gz",
                              root / "imagesTs" / f"{case['case']}_0000.nii.gz")


def test_without_groups_the_tool_says_cases_are_split_one_by_one(volumes_env):
    from data import load_dataset
    from sweep.search.options import RunOptions
    from sweep.training.run import grouping_note

    root = write_nnunet_phantom(volumes_env / "nnunet", 4, seed=5, n_test=1)
    assert "--groups" in grouping_note(load_dataset(str(root)), RunOptions(data=str(root)))
    grouped = load_dataset(str(root), groups=r"(patient\d+)")
    assert grouping_note(grouped, RunOptions(data=str(root), groups=r"(patient\d+)")) is None
    assert grouping_note(load_dataset("phantom"), RunOptions()) is None


def test_best_prints_a_clinical_index_that_no_patient_has():
    """A poor model on one test patient predicts no LV at ED: its EF, and so its bias, is None
    (as summary.json records it), which the printed result shows as a dash, not a traceback."""
    from sweep.cli import _format_best

    clinical = {"lv_edv": {"r": None, "bias": -204.68}, "lv_ef": {"r": None, "bias": None}}
    result = {"study": "s", "trial": 0, "val_dice_fg": 0.1, "params": {}, "seeds": [0], "test": None,
              "postprocess": {"tta": False, "largest_component": True},
              "volumes": {"summary": {}, "clinical": clinical}, "masks": "best/masks", "model": "best/model.pt"}
    lines = _format_best(result).splitlines()
    assert "  clinical  lv_ef: r –, bias –" in lines and "  clinical  lv_edv: r –, bias -204.68" in lines
