"""Failures found while running the tool on a busy machine (issue 37): export without inputs, a disk
that fills while masks are written, a NIfTI whose voxel size resamples it to a grid beyond memory."""

from __future__ import annotations

import errno
import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from data.files import PARTIAL_PREFIX
from model import SegNet, SegNetConfig
from sweep.cli import main
from sweep.core.outputs import MANIFEST
from sweep.nn.model_file import ModelBundle, current_versions, save_bundle

CONFIG = SegNetConfig(depth=2, base_width=4, convs_per_stage=(1, 1))


def _bundle(kind: str = "slices") -> ModelBundle:
    torch.manual_seed(0)
    prep = ({"kind": "slices", "image_size": [32, 32]} if kind == "slices"
            else {"kind": "volumes", "target_spacing_mm": 1.5625, "slice_size": 32})
    return ModelBundle(members=[[SegNet.from_config(CONFIG).state_dict()]], model_config=CONFIG.to_dict(), tta=False,
                       largest_component=False, preprocessing=prep, class_names=["background", "RV", "myocardium", "LV"],
                       params={}, data_fingerprint="x", study="segnet", trial=0, versions=current_versions())


@pytest.fixture
def model_pt(tmp_path) -> Path:
    return save_bundle(_bundle(), tmp_path / "model.pt")


def _one_line(capsys) -> str:
    """The one ``error:`` line on stderr (after a progress bar, if one was shown), no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("retrain best")]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# --- predict --export without inputs ------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load, deprecated in torch 2.13
def test_export_without_inputs_writes_the_torchscript_model(model_pt, tmp_path, capsys):
    target = tmp_path / "m.pt"
    assert main(["predict", "--model", str(model_pt), "--export", "torchscript", str(target)]) == 0
    assert "exported torchscript" in capsys.readouterr().out
    loaded = torch.jit.load(str(target))
    assert loaded(torch.rand(1, 1, 32, 32)).shape == (1, 4, 32, 32)
    assert not (tmp_path / "predictions").exists()  # no inputs: no output folder either


def test_export_without_inputs_writes_the_onnx_model(model_pt, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    target = tmp_path / "m.onnx"
    assert main(["predict", "--model", str(model_pt), "--export", "onnx", str(target)]) == 0
    assert "exported onnx" in capsys.readouterr().out
    assert target.stat().st_size > 0


# --- a full disk while masks are written ------------------------------------------------------


def _fill_disk_after(monkeypatch, saves: int) -> list[Path]:
    """PNG saves fail as on a full disk from the (saves+1)-th on, after writing part of the file."""
    real = Image.Image.save
    done: list[Path] = []

    def save(self, fp, *args, **kwargs):
        if len(done) >= saves:
            Path(fp).write_bytes(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        done.append(Path(fp))
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    return done


def _pngs(folder: Path, n: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(folder / f"s{i}.png")
    return folder


def _no_partial_file(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.startswith(PARTIAL_PREFIX)]


def test_a_full_disk_while_predict_writes_masks_is_one_line(model_pt, tmp_path, monkeypatch, capsys):
    images = _pngs(tmp_path / "in", 4)
    _fill_disk_after(monkeypatch, saves=2)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_pt), str(images), "--out", str(out), "--quiet"]) == 1
    line = _one_line(capsys)
    assert "No space left on device" in line and str(out) in line and "free some space" in line
    _no_partial_file(out)
    written = sorted(p.name for p in out.iterdir() if p.name != MANIFEST)
    assert written == ["s0_mask.png", "s1_mask.png"]  # whole files; the third is absent, not half written
    for name in written:
        assert np.asarray(Image.open(out / name)).shape == (32, 32)


@pytest.mark.slow
def test_a_full_disk_while_best_evaluate_writes_masks_is_one_line_and_records_nothing(one_trial_study, tmp_path,
                                                                                     monkeypatch, capsys):
    for path in one_trial_study.glob("studies.db*"):
        shutil.copy(path, tmp_path / path.name)
    shutil.copytree(one_trial_study / "artifacts", tmp_path / "artifacts")
    monkeypatch.chdir(tmp_path)
    before = hashlib.sha256((tmp_path / "studies.db").read_bytes()).hexdigest()
    _fill_disk_after(monkeypatch, saves=3)
    capsys.readouterr()
    assert main(["best", "--evaluate", "--seeds", "1", "--out", "ev"]) == 1
    line = _one_line(capsys)
    assert "No space left on device" in line
    _no_partial_file(tmp_path / "ev")
    assert not (tmp_path / "ev" / "model.pt").exists() and not (tmp_path / "ev" / "summary.json").exists()
    assert hashlib.sha256((tmp_path / "studies.db").read_bytes()).hexdigest() == before  # nothing recorded


# --- a voxel size that resamples to a grid beyond memory -------------------------------------------


@pytest.mark.parametrize("zooms", [(1000.0, 1000.0, 10.0), (300.0, 300.0, 10.0)])
def test_a_volume_resampled_beyond_memory_is_refused_in_one_line(tmp_path, monkeypatch, capsys, zooms):
    model = save_bundle(_bundle("volumes"), tmp_path / "model.pt")
    img = nib.Nifti1Image(np.random.default_rng(0).random((64, 64, 4)).astype(np.float32), np.eye(4))
    img.header.set_zooms(zooms)
    path = tmp_path / "case.nii.gz"
    nib.save(img, path)
    from scipy import ndimage

    def never(*args, **kwargs):
        raise AssertionError("resampled after all")

    monkeypatch.setattr(ndimage, "affine_transform", never)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), str(path), "--out", str(out), "--quiet"]) == 2
    line = _one_line(capsys)
    assert str(path) in line and "pixdim" in line and "GiB" in line
    assert not out.exists() or not any(out.iterdir())
