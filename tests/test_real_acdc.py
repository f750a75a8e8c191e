"""Real hearts: a few of the real ACDC patients in ../shared/data/acdc, end to end.

The data is read where it lies (a release-shaped folder of links to its patient folders is built
in a temporary folder); nothing is copied into the repository. Skipped where the data is absent.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from data import assemble, load_dataset, read_truth, volume_spacing
from sweep.cli import main
from sweep.nn.volume_metrics import case_metrics
from tests.conftest import ROOT

ACDC = ROOT.parent / "shared" / "data" / "acdc"
# One patient of each group in training/ (patient005's volumes are 256 x 216, the others' 216 x 256 or
# similar); in testing/, the largest grid of the release (patient057, 428 x 512) and one more.
TRAINING = ("patient001", "patient005", "patient021", "patient041", "patient062", "patient082")
TESTING = ("patient057", "patient083")


@pytest.fixture(scope="module")
def real_acdc(tmp_path_factory):
    """An ACDC release of 8 real patients (links), the test patients with their labels, and its own cache."""
    if not (ACDC / "training").is_dir():
        pytest.skip(f"real ACDC data not found at {ACDC}")
    root = tmp_path_factory.mktemp("real-acdc")
    for part, patients in (("training", TRAINING), ("testing", TESTING)):
        (root / part).mkdir()
        for patient in patients:
            (root / part / patient).symlink_to(ACDC / "training" / patient)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGNET_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield root, load_dataset(str(root))


def test_real_volumes_load_in_both_orientations_and_the_largest_grid(real_acdc):
    root, data = real_acdc
    assert len(data.volumes) == 16 and data.test.masks is not None
    shapes = {v.patient: v.shape for v in data.volumes.values()}
    assert shapes["patient005"][0] > shapes["patient005"][1]  # 256 x 216: the other orientation
    assert shapes["patient001"][0] < shapes["patient001"][1]
    assert shapes["patient057"][:2] == (428, 512)
    for split in (data.train, data.val, data.test):
        assert split.images.shape[1:] == (192, 192)
        assert 0.0 <= split.images.min() and split.images.max() <= 1.0
        assert set(np.unique(split.masks)) <= {0, 1, 2, 3}
    # apical and basal slices where a structure is absent are kept, not dropped
    masks = np.concatenate([data.train.masks, data.val.masks])
    assert ((masks == 1).sum((1, 2)) == 0).any() and ((masks == 3).sum((1, 2)) > 0).any()
    assert {v.group for v in data.volumes.values()} == {"DCM", "HCM", "MINF", "NOR", "RV"}


@pytest.mark.slow
def test_labels_go_back_onto_the_source_grid_without_losing_a_voxel_to_the_crop(real_acdc):
    """Each volume's preprocessed label slices, put back by ``assemble``, give its label file:
    exactly where the grid is already at the target spacing, and within the resampling's own
    loss where it is not (patient057's 0.78 mm pixels are halved, then restored by nearest)."""
    _, data = real_acdc
    for split in (data.train, data.val, data.test):
        for case, idx in split.case_indices().items():
            volume = data.volumes[case]
            truth = read_truth(volume)
            back = assemble(volume, split.masks[idx])
            assert back.shape == truth.shape == volume.shape
            if np.allclose(volume.spacing[:2], volume.target_spacing):
                np.testing.assert_array_equal(back, truth)
            else:
                scores = case_metrics(back, truth, volume_spacing(volume))
                assert min(scores["dice_rv"], scores["dice_myo"], scores["dice_lv"]) > 0.9
            # no labelled voxel lies outside the crop: every structure keeps its voxel count to within resampling
            for label in (1, 2, 3):
                assert abs(int((back == label).sum()) - int((truth == label).sum())) <= 0.1 * (truth == label).sum() + 50


def test_truth_against_itself_scores_perfectly_on_real_geometry(real_acdc):
    _, data = real_acdc
    volume = data.volumes["patient057_frame01"]
    truth = read_truth(volume)
    scores = case_metrics(truth, truth, volume_spacing(volume))
    assert scores["dice_rv"] == scores["dice_myo"] == scores["dice_lv"] == 1.0
    assert scores["hd95_lv"] == 0.0 and scores["assd_myo"] == 0.0
    shifted = np.roll(truth, 4, axis=0)  # 4 voxels of 0.78 mm along X
    moved = case_metrics(shifted, truth, volume_spacing(volume))
    # no surface point is further than the shift, and most move by more than a voxel
    assert 0.0 < moved["dice_lv"] < 1.0 and 0.78125 < moved["hd95_lv"] <= 4 * 0.78125 + 1e-6


@pytest.mark.slow
def test_sweep_and_ship_on_real_patients(real_acdc, in_tmp, capsys):
    root, _ = real_acdc
    assert main(["run", "--data", str(root), "--trials", "1", "--epochs", "2", "--quiet", "--enqueue", "small",
                 "--epoch-slices", "24", "--val-slices", "8", "--patch", "96"]) == 0
    capsys.readouterr()
    assert main(["best", "--evaluate", "--seeds", "1", "--quiet", "--json", "--epochs", "1"]) == 0
    result = json.loads(capsys.readouterr().out)

    assert result["training"] == {"epochs": [1], "epoch_slices": 24, "val_slices": 8, "patch": 96}
    volumes = result["volumes"]
    assert sorted(c["patient"] for c in volumes["cases"]) == sorted([p for p in TESTING for _ in range(2)])
    for case in volumes["cases"]:
        mask = nib.load(in_tmp / "best" / "masks" / f"{case['case']}.nii.gz")
        source = nib.load(root / "testing" / case["patient"] / f"{case['case']}.nii.gz")
        assert mask.shape == source.shape
        np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
        assert case["dice_fg"] == pytest.approx(np.mean([case["dice_rv"], case["dice_myo"], case["dice_lv"]]), abs=1e-4)
    assert set(volumes["groups"]) == {"MINF", "RV"}
    assert volumes["groups"]["MINF"]["n"] == 2 and set(volumes["groups"]["MINF"]["dice_fg"]) == {"ED", "ES", "all"}
    assert set(volumes["dice_fg"]) == {"ED", "ES", "all"}
    # the estimate scored on held-out train patients' volumes, on their source grid
    estimate = result["estimate"]["volumes"]
    assert estimate["n_volumes"] >= 2 and estimate["n_volumes"] % 2 == 0
    low, high = estimate["dice_fg_ci95"]
    assert low - 1e-4 <= estimate["dice_fg"]["all"][0] <= high + 1e-4  # (the mean is rounded to 4 digits)
