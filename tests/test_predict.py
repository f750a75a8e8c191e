"""The saved model (model_file.py) and ``predict`` (predict.py): round trip, exact ensemble, inputs, exports."""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import DataError, read_mask
from model import SegNet, SegNetConfig
from sweep.core.errors import UsageError
from sweep.nn.model_file import (
    FORMAT,
    FORMAT_VERSION,
    ModelBundle,
    Segmenter,
    current_versions,
    ensemble_probs,
    load_bundle,
    save_bundle,
)
from sweep.nn.postprocess import apply_postprocessing, predict_probs
from sweep.cli import _add_predict as add_predict_parser
from sweep.nn.model_export import EXPORT_TOLERANCE, ExportMismatchError, export_model
from sweep.shipping.predict import run_predict
from sweep.training.train import load_model

CONFIG = SegNetConfig(depth=2, base_width=4, convs_per_stage=(1, 1))
SIZE = (32, 32)


def _state(seed: int) -> dict:
    torch.manual_seed(seed)
    model = SegNet.from_config(CONFIG)
    # Running statistics away from (0, 1), so that a model that skipped BatchNorm would differ.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.state_dict()


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    """Two seeds x one fold of a tiny SegNet, with TTA and largest-component cleaning on."""
    return ModelBundle(
        members=[[_state(0)], [_state(1)]], model_config=CONFIG.to_dict(), tta=True, largest_component=True,
        preprocessing={"kind": "slices", "image_size": SIZE, "intensity": "[0,1] then per-slice z-score"},
        class_names=["background", "RV", "myocardium", "LV"], params={"lr": 1e-3, "depth": 2},
        data_fingerprint="abc123", study="segnet", trial=7, versions=current_versions(),
    )


@pytest.fixture(scope="module")
def model_path(bundle, tmp_path_factory) -> Path:
    return save_bundle(bundle, tmp_path_factory.mktemp("model") / "model.pt")


def _images(n: int, h: int = SIZE[0], w: int = SIZE[1], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, h, w), dtype=np.float32)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_predict_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["predict", *argv])


def _write_png(path: Path, image: np.ndarray, mode: str = "L") -> None:
    grey = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(grey).convert(mode).save(path)


def _one_line(err: pytest.ExceptionInfo, *names: str) -> None:
    text = str(err.value)
    assert "\n" not in text and text
    for name in names:
        assert name in text


# --- the model file ---------------------------------------------------------------------------


def test_round_trip(bundle, model_path):
    raw = torch.load(model_path, weights_only=True)  # no pickled classes: loads without trusting the file
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    assert raw["model_config"]["convs_per_stage"] == [1, 1]  # tuples stored as lists
    loaded = load_bundle(model_path)
    assert [len(s) for s in loaded.members] == [1, 1]
    for seed_a, seed_b in zip(bundle.members, loaded.members):
        for a, b in zip(seed_a, seed_b):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config == CONFIG
    assert (loaded.tta, loaded.largest_component, loaded.trial, loaded.study) == (True, True, 7, "segnet")
    assert loaded.preprocessing["image_size"] == list(SIZE)
    assert loaded.class_names == bundle.class_names and loaded.params == bundle.params
    assert type(loaded.versions["torch"]) is str


def test_save_refuses_what_weights_only_cannot_load(bundle, tmp_path):
    bad = ModelBundle(**{**vars(bundle), "preprocessing": {"folder": Path("x")}})
    with pytest.raises(TypeError, match="preprocessing.folder"):
        save_bundle(bad, tmp_path / "bad.pt")
    assert not list(tmp_path.iterdir())  # no half-written file left behind


def _newer(bundle, path):
    save_bundle(bundle, path)
    record = torch.load(path, weights_only=True)
    torch.save({**record, "format_version": FORMAT_VERSION + 1}, path)


@pytest.mark.parametrize("make, reason", [
    (lambda b, p: None, "not found"),
    (lambda b, p: p.mkdir(), "folder"),
    (lambda b, p: p.write_text("hello"), "not a model file"),
    (lambda b, p: torch.save({"state_dict": {}}, p), "not a model file"),
    (lambda b, p: torch.save(SegNet.from_config(CONFIG), p), "not a model file"),  # a pickled module
    (_newer, "newer"),
], ids=["missing", "folder", "text", "other-torch-file", "pickled-class", "newer-version"])
def test_bad_model_file(bundle, tmp_path, make, reason):
    path = tmp_path / "model.pt"
    make(bundle, path)
    with pytest.raises(UsageError) as err:
        load_bundle(path)
    _one_line(err, str(path), reason)


# --- the ensemble ------------------------------------------------------------------------------


def test_segmenter_is_best_evaluate_arithmetic(bundle):
    """Bit for bit: best --evaluate's loop over the whole set, Segmenter's 64-slice passes, ensemble_probs."""
    seg = Segmenter(bundle, device="cpu")
    images = _images(70)  # more than one 64-slice pass
    x = torch.from_numpy(images)[:, None]
    cpu = torch.device("cpu")
    runs = []
    for states in bundle.members:  # as sweep/shipping/evaluate.py accumulates a seed's test probabilities
        models = [load_model(CONFIG, s, cpu) for s in states]
        total = torch.zeros((len(images), 4, *SIZE))
        for model in models:
            total += predict_probs(model, x, seg.bf16, True).cpu() / len(models)
        runs.append(total)
    expected = torch.stack(runs).mean(0)
    direct = ensemble_probs([[load_model(CONFIG, s, cpu) for s in states] for states in bundle.members], x, seg.bf16, True)
    probs = seg.probabilities(images)
    assert torch.equal(direct, expected) and torch.equal(probs, expected)
    assert np.array_equal(seg.predict(images), apply_postprocessing(expected, {"largest_component": True}))


@pytest.mark.parametrize("shape", [(37, 50), (3, 3), (96, 33)])
def test_any_size_comes_back_the_same_size(bundle, shape):
    seg = Segmenter(bundle, device="cpu")
    masks = seg.predict(_images(1, *shape)[0])
    assert masks.shape == (1, *shape) and masks.dtype == np.uint8 and masks.max() <= 3
    probs = seg.probabilities(_images(2, *shape))
    assert probs.shape == (2, 4, *shape) and torch.isfinite(probs).all()
    assert torch.allclose(probs.sum(1), torch.ones(2, *shape), atol=1e-4)


def test_uint8_images_are_scaled(bundle):
    seg = Segmenter(bundle, device="cpu")
    grey = (np.random.default_rng(1).random(SIZE) * 255).astype(np.uint8)
    assert torch.equal(seg.probabilities(grey), seg.probabilities(grey.astype(np.float32) / np.float32(255)))


# --- predict -------------------------------------------------------------------------------------


@pytest.fixture
def png_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(_images(3, seed=3)):
        _write_png(folder / f"slice{i}.png", image)
    _write_png(folder / "odd.png", _images(1, 37, 50)[0])
    _write_png(folder / ".hidden.png", _images(1)[0])
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_folder(model_path, png_folder, tmp_path):
    out = tmp_path / "out"
    summary = run_predict(_args("--model", str(model_path), str(png_folder), "--out", str(out), "--overlay",
                                "--device", "cpu", "--quiet"))
    assert (summary["images"], summary["volumes"]) == (4, 0)
    written = sorted(f"{n}_{k}.png" for n in ("slice0", "slice1", "slice2", "odd") for k in ("mask", "overlay"))
    assert sorted(p.name for p in out.iterdir()) == sorted([".segnet-outputs.json", *written])
    assert sorted(json.loads((out / ".segnet-outputs.json").read_text())["files"]) == written  # what a rerun may replace
    assert read_mask(out / "odd_mask.png").shape == (37, 50)
    assert read_mask(out / "slice0_mask.png").shape == SIZE
    assert Image.open(out / "slice0_overlay.png").format == "PNG"
    assert any("not 32 x 32" in note for note in summary["notes"])  # the 37 x 50 slice, segmented anyway


def test_predict_mask_is_segmenter_mask(bundle, model_path, png_folder, tmp_path):
    out = tmp_path / "out"
    run_predict(_args("--model", str(model_path), str(png_folder / "slice1.png"), "--out", str(out), "--device", "cpu", "--quiet"))
    from data import read_image

    # The README's Python example: load, read, predict.
    expected = Segmenter.load(model_path, device="cpu").predict(read_image(png_folder / "slice1.png"))[0]
    assert np.array_equal(read_mask(out / "slice1_mask.png"), expected)


def test_predict_bad_inputs(model_path, png_folder, tmp_path):
    def predict(*argv):
        return run_predict(_args("--model", str(model_path), *argv, "--device", "cpu", "--quiet"))

    with pytest.raises(UsageError) as err:
        predict(str(tmp_path / "nowhere.png"), "--out", str(tmp_path / "o1"))
    _one_line(err, "nowhere.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_text("x")
    (empty / "readme.txt").write_text("x")
    with pytest.raises(UsageError) as err:
        predict(str(empty), "--out", str(tmp_path / "o2"))
    _one_line(err, str(empty))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(UsageError) as err:
        predict(str(png_folder), "--out", str(blocker / "sub"))
    _one_line(err, "--out")
    with pytest.raises(UsageError) as err:
        predict(str(png_folder), "--out", str(tmp_path / "o3"), "--export", "pickle", str(tmp_path / "m.bin"))
    _one_line(err, "--export pickle")
    with pytest.raises(UsageError) as err:
        predict()
    _one_line(err, "INPUT")


def test_colour_image_fails_before_anything_is_written(model_path, png_folder, tmp_path):
    Image.fromarray(np.dstack([np.zeros((8, 8), np.uint8), np.full((8, 8), 200, np.uint8), np.zeros((8, 8), np.uint8)])).save(
        png_folder / "zz_colour.png")
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        run_predict(_args("--model", str(model_path), str(png_folder), "--out", str(out), "--device", "cpu", "--quiet"))
    _one_line(err, "zz_colour.png", "greyscale")
    assert not list(out.glob("*.png"))


def test_same_name_twice_is_refused(model_path, png_folder, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    _write_png(other / "slice0.png", _images(1)[0])
    with pytest.raises(UsageError) as err:
        run_predict(_args("--model", str(model_path), str(png_folder), str(other), "--out", str(tmp_path / "o"), "--quiet"))
    _one_line(err, "slice0_mask.png")


def test_bad_model_through_predict(png_folder, tmp_path):
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"\x89PNG not a model")
    with pytest.raises(UsageError) as err:
        run_predict(_args("--model", str(fake), str(png_folder), "--quiet"))
    _one_line(err, str(fake))


def test_nifti_inputs_go_through_data_volumes(bundle, tmp_path, monkeypatch):
    """The NIfTI branch's own logic, against a stand-in for data.volumes (its contract, not its code):
    a volume-trained model's recorded spacing and slice size reach preprocess_volume."""
    calls = {"written": [], "options": []}

    def preprocess_volume(image_path, label_path=None, **options):
        calls["options"].append(options)
        return _images(5, 40, 36), None, {"source": str(image_path)}

    def assemble(volume, slice_masks):
        calls["masks"] = slice_masks
        return slice_masks.transpose(1, 2, 0)

    def write_labels_nifti(path, labels, volume):
        calls["written"].append(Path(path).name)
        Path(path).write_bytes(b"nifti")

    fake = types.ModuleType("data.volumes")
    fake.preprocess_volume, fake.assemble, fake.write_labels_nifti = preprocess_volume, assemble, write_labels_nifti
    fake.case_id = lambda path: Path(path).name.split(".nii")[0].removesuffix("_0000")
    fake.preprocessing = lambda: {"kind": "volumes", "version": 1, "target_spacing_mm": 1.5625, "slice_size": 192,
                                  "clip_percentiles": [0.5, 99.5]}
    monkeypatch.setitem(sys.modules, "data.volumes", fake)
    recorded = {"kind": "volumes", "version": 1, "target_spacing_mm": 1.25, "slice_size": 40, "clip_percentiles": [1, 99]}
    model = save_bundle(ModelBundle(**{**vars(bundle), "preprocessing": recorded}), tmp_path / "model.pt")
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    import nibabel as nib

    for name in ("case_007_0000.nii.gz", "patient101_frame01.nii"):  # real headers: predict checks them first
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), folder / name)
    summary = run_predict(_args("--model", str(model), str(folder), "--out", str(tmp_path / "o"), "--overlay", "--quiet"))
    assert summary["volumes"] == 2
    assert len(calls["written"]) == 2  # each under a temporary name, then renamed
    assert sorted(p.name for p in (tmp_path / "o").glob("*.nii.gz")) == ["case_007.nii.gz", "patient101_frame01.nii.gz"]
    assert calls["options"] == [{"target_spacing": 1.25, "size": 40}] * 2
    assert calls["masks"].shape == (5, 40, 36) and calls["masks"].dtype == np.uint8
    assert (tmp_path / "o" / "case_007_overlay.png").is_file()
    assert any("clip_percentiles" in note for note in summary["notes"])


@pytest.mark.parametrize("trained_on", ["slices", "volumes"])
def test_nifti_round_trip_with_real_volumes(bundle, model_path, tmp_path, trained_on):
    """Labels on the source's grid (shape and affine), with data.volumes as it is."""
    volumes = pytest.importorskip("data.volumes")
    nib = pytest.importorskip("nibabel")
    if trained_on == "volumes":  # small slices keep the test fast; the recorded size must reach preprocess_volume
        prep = {**volumes.preprocessing(), "slice_size": 48}
        model_path = save_bundle(ModelBundle(**{**vars(bundle), "preprocessing": prep}), tmp_path / "volume_model.pt")
    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    data = np.random.default_rng(0).random((40, 44, 3)).astype(np.float32) * 400
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "case_001_0000.nii.gz")
    summary = run_predict(_args("--model", str(model_path), str(tmp_path / "case_001_0000.nii.gz"),
                                "--out", str(tmp_path / "o"), "--quiet"))
    assert summary["notes"] == ([] if trained_on == "volumes" else [summary["notes"][0]])
    labels = nib.load(tmp_path / "o" / "case_001.nii.gz")
    assert labels.shape == data.shape and np.allclose(labels.affine, affine)
    assert set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2, 3}


# --- exports -------------------------------------------------------------------------------------


def _float32_reference(bundle, x: torch.Tensor) -> torch.Tensor:
    return ensemble_probs(Segmenter(bundle, device="cpu", bf16=False).models, x, bf16=False, tta=False)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load, deprecated in torch 2.13
def test_torchscript_export(bundle, tmp_path):
    path = tmp_path / "model.ts"
    result = export_model(bundle, "torchscript", path, example_shape=(1, 1, *SIZE))
    assert result["max_abs_diff"] <= EXPORT_TOLERANCE
    loaded = torch.jit.load(str(path))
    for shape in [(3, 1, *SIZE), (1, 1, 37, 50)]:  # any batch, any size
        x = torch.rand(shape)
        with torch.no_grad():
            assert (loaded(x) - _float32_reference(bundle, x)).abs().max() <= EXPORT_TOLERANCE


def test_export_mismatch_removes_the_file(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr("sweep.nn.model_export.EXPORT_TOLERANCE", -1.0)  # any difference, even 0, now fails
    path = tmp_path / "model.ts"
    with pytest.raises(ExportMismatchError):
        export_model(bundle, "torchscript", path)
    assert not path.exists()


def test_onnx_export(bundle, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "model.onnx"
    result = export_model(bundle, "onnx", path, example_shape=(1, 1, *SIZE))
    assert result["max_abs_diff"] <= EXPORT_TOLERANCE
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 1, *SIZE), (2, 1, 37, 50)]:
        x = torch.rand(shape)
        probs = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        assert (probs - _float32_reference(bundle, x)).abs().max() <= EXPORT_TOLERANCE
