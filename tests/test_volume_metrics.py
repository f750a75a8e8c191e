"""Volume metrics and ACDC clinical indices on small hand-built volumes with known answers."""

import math

import numpy as np
import pytest

from sweep.nn.volume_metrics import (
    CLINICAL_KEYS,
    METRIC_KEYS,
    case_metrics,
    clinical_agreement,
    clinical_indices,
    physical_diagonal_mm,
    summarize_cases,
    volumes_ml,
)

RV, MYO, LV = 1, 2, 3
# Three different spacings, so a distance along one axis cannot pass with another axis's
# spacing (axes swapped) or with none (spacing ignored, every step 1).
SPACING = (10.0, 2.5, 1.5)


def test_keys_and_types():
    vol = np.zeros((4, 4, 4), dtype=np.int16)
    vol[1:3, 1:3, 1:3] = LV
    m = case_metrics(vol, vol, SPACING)
    assert tuple(m) == METRIC_KEYS == (
        "dice_rv", "dice_myo", "dice_lv", "hd95_rv", "hd95_myo", "hd95_lv", "assd_rv", "assd_myo", "assd_lv",
    )
    assert all(type(v) is float for v in m.values())
    assert m["dice_lv"] == 1.0 and m["hd95_lv"] == 0.0 and m["assd_lv"] == 0.0


def test_dice_of_known_overlaps():
    truth = np.zeros((4, 4, 2), dtype=np.uint8)
    pred = np.zeros_like(truth)
    # LV: truth 8 voxels, pred 4 of them plus 4 others -> overlap 4, Dice 2*4/(8+8) = 0.5
    truth[0:2, 0:2, :] = LV
    pred[0:2, 0:1, :] = LV
    pred[2:4, 0:1, :] = LV
    # RV: truth 4 voxels, pred 2 of them -> 2*2/(4+2) = 2/3
    truth[0:2, 2:4, 0] = RV
    pred[0:1, 2:4, 0] = RV
    # Myo: truth 3 voxels, pred those 3 -> 1.0
    truth[2, 2:4, 1] = MYO
    truth[3, 3, 1] = MYO
    pred[truth == MYO] = MYO
    m = case_metrics(pred, truth, SPACING)
    assert m["dice_lv"] == pytest.approx(0.5)
    assert m["dice_rv"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["dice_myo"] == 1.0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_parallel_planes_two_voxels_apart_use_that_axis_spacing(axis):
    # Two full planes perpendicular to `axis`, two voxels apart: every surface voxel's nearest
    # counterpart is straight across, so every distance (hence HD95 and ASSD) is 2 * spacing.
    truth = np.zeros((5, 5, 5), dtype=np.int64)
    pred = np.zeros_like(truth)
    np.moveaxis(truth, axis, 0)[1] = LV
    np.moveaxis(pred, axis, 0)[3] = LV
    m = case_metrics(pred, truth, SPACING)
    expected = 2 * SPACING[axis]  # 20, 5, 3 mm
    assert m["hd95_lv"] == pytest.approx(expected)
    assert m["assd_lv"] == pytest.approx(expected)
    assert m["dice_lv"] == 0.0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slabs_shifted_one_voxel(axis):
    # Slabs two voxels thick along `axis` (4 x 4 across), the prediction shifted one voxel
    # along `axis`. Every voxel of a 2-thick slab is a surface voxel. Per direction, the 16
    # voxels of the shared layer are at 0 and the 16 of the other layer at one spacing, so
    # ASSD = spacing / 2 and the 95th percentile (and HD95) = spacing.
    shape = [6, 6, 6]
    truth = np.zeros(shape, dtype=np.int64)
    pred = np.zeros_like(truth)
    np.moveaxis(truth, axis, 0)[1:3, 1:5, 1:5] = MYO
    np.moveaxis(pred, axis, 0)[2:4, 1:5, 1:5] = MYO
    m = case_metrics(pred, truth, SPACING)
    assert m["hd95_myo"] == pytest.approx(SPACING[axis])  # along axis 0: 10 mm
    assert m["assd_myo"] == pytest.approx(SPACING[axis] / 2)
    assert m["dice_myo"] == pytest.approx(0.5)  # 16 shared of 32 + 32


def test_empty_structures(recwarn):
    shape = (6, 6, 4)
    diagonal = math.sqrt((6 * 10.0) ** 2 + (6 * 2.5) ** 2 + (4 * 1.5) ** 2)  # sqrt(3861) = 62.14 mm
    assert physical_diagonal_mm(shape, SPACING) == pytest.approx(diagonal)
    truth = np.zeros(shape, dtype=np.int64)
    pred = np.zeros_like(truth)
    truth[1:3, 1:3, 1:3] = LV  # LV missed by the prediction
    pred[3:5, 3:5, 1:3] = RV  # RV predicted where the truth has none
    # myocardium absent from both
    m = case_metrics(pred, truth, SPACING)
    assert (m["dice_lv"], m["hd95_lv"], m["assd_lv"]) == (0.0, round(diagonal, 2), round(diagonal, 2))
    assert (m["dice_rv"], m["hd95_rv"], m["assd_rv"]) == (0.0, round(diagonal, 2), round(diagonal, 2))
    assert (m["dice_myo"], m["hd95_myo"], m["assd_myo"]) == (1.0, 0.0, 0.0)
    assert all(math.isfinite(v) for v in m.values())
    # Empty masks never reach MONAI, whose answer for them is nan/inf with a warning.
    assert not [w for w in recwarn if "is all 0" in str(w.message)]


def test_rejects_mismatched_input():
    vol = np.zeros((3, 3, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="shapes differ"):
        case_metrics(vol, np.zeros((3, 3, 4), dtype=np.int64), SPACING)
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(vol, vol, (1.0, 1.0))
    with pytest.raises(ValueError, match="3-D"):
        case_metrics(vol[0], vol[0], SPACING)


def _patient():
    """ED and ES volumes of boxes of known voxel counts, each phase with its own spacing."""
    ed = np.zeros((40, 40, 8), dtype=np.int16)
    es = np.zeros_like(ed)
    ed[0:20, 0:20, 0:5] = LV  # 2000 voxels
    es[0:20, 0:10, 0:5] = LV  # 1000
    ed[25:35, 0:10, 0:6] = RV  # 600
    es[25:35, 0:10, 0:4] = RV  # 400
    ed[0:10, 25:29, 0:5] = MYO  # 200
    es[0:10, 25:35, 0:5] = MYO  # 500: must not enter the mass, which is taken at ED
    return ed, es


SPACING_ED = (2.0, 2.5, 10.0)  # 50 mm^3 = 0.05 ml per voxel
SPACING_ES = (1.0, 2.5, 10.0)  # 25 mm^3 = 0.025 ml per voxel


def test_volumes_ml():
    ed, es = _patient()
    assert volumes_ml(ed, SPACING_ED) == {"lv": 100.0, "rv": 30.0, "myo": 10.0}
    assert volumes_ml(es, SPACING_ES) == {"lv": 25.0, "rv": 10.0, "myo": 12.5}


def test_clinical_indices_of_boxes():
    ed, es = _patient()
    ci = clinical_indices(ed, es, SPACING_ED, SPACING_ES)
    assert tuple(ci) == CLINICAL_KEYS
    assert ci["lv_edv"] == 100.0 and ci["lv_esv"] == 25.0
    assert ci["lv_ef"] == pytest.approx(75.0)  # 100 * (100 - 25) / 100
    assert ci["rv_edv"] == 30.0 and ci["rv_esv"] == 10.0
    assert ci["rv_ef"] == pytest.approx(66.67)  # 100 * 20 / 30
    assert ci["myo_mass"] == pytest.approx(10.5)  # 10 ml at ED x 1.05 g/ml


def test_ejection_fraction_undefined_without_edv():
    ed, es = _patient()
    ed[ed == RV] = 0
    ci = clinical_indices(ed, es, SPACING_ED, SPACING_ES)
    assert ci["rv_edv"] == 0.0 and ci["rv_ef"] is None
    assert ci["lv_ef"] == pytest.approx(75.0)


def _indices(**values):
    row = dict.fromkeys(CLINICAL_KEYS, 0.0)
    row.update(values)
    return row


def test_clinical_agreement_hand_computed():
    pred = [_indices(lv_edv=1.0, lv_esv=3.0, lv_ef=1.0, rv_edv=5.0, rv_ef=None),
            _indices(lv_edv=2.0, lv_esv=2.0, lv_ef=2.0, rv_edv=5.0, rv_ef=40.0),
            _indices(lv_edv=3.0, lv_esv=1.0, lv_ef=4.0, rv_edv=5.0, rv_ef=50.0)]
    truth = [_indices(lv_edv=2.0, lv_esv=1.0, lv_ef=1.0, rv_edv=4.0, rv_ef=30.0),
             _indices(lv_edv=4.0, lv_esv=2.0, lv_ef=3.0, rv_edv=5.0, rv_ef=45.0),
             _indices(lv_edv=6.0, lv_esv=3.0, lv_ef=2.0, rv_edv=6.0, rv_ef=60.0)]
    a = clinical_agreement(pred, truth)
    assert tuple(a) == CLINICAL_KEYS
    assert a["lv_edv"] == {"r": 1.0, "bias": -2.0}  # pred = truth / 2
    assert a["lv_esv"] == {"r": -1.0, "bias": 0.0}  # reversed order, same mean
    # x = 1, 2, 4; y = 1, 3, 2: sum dx*dy = 1, sum dx^2 = 14/3, sum dy^2 = 2 -> r = sqrt(3/28)
    assert a["lv_ef"]["r"] == pytest.approx(math.sqrt(3 / 28), abs=1e-4)
    assert a["lv_ef"]["bias"] == pytest.approx(1 / 3, abs=0.01)
    assert a["rv_edv"] == {"r": None, "bias": 0.0}  # constant prediction: no correlation
    # The first patient's undefined EF drops out of rv_ef only: pairs (40, 45), (50, 60).
    assert a["rv_ef"] == {"r": 1.0, "bias": -7.5}
    assert a["myo_mass"] == {"r": None, "bias": 0.0}  # all zero: no variance


def test_clinical_agreement_small_and_mismatched():
    one = clinical_agreement([_indices(lv_edv=110.0)], [_indices(lv_edv=100.0)])
    assert one["lv_edv"] == {"r": None, "bias": 10.0}
    assert clinical_agreement([], [])["lv_ef"] == {"r": None, "bias": None}
    with pytest.raises(ValueError, match="numbers of patients"):
        clinical_agreement([_indices()], [])


def _case(name, phase, dice_lv, hd95_lv=5.0):
    row = {"case": name, "patient": name.split("_")[0], "phase": phase, **dict.fromkeys(METRIC_KEYS, 1.0)}
    row.update(dice_lv=dice_lv, hd95_lv=hd95_lv)
    return row


def test_summarize_cases_by_phase():
    cases = [_case("p1_ED", "ED", 0.8, hd95_lv=4.0), _case("p2_ED", "ED", 0.9, hd95_lv=6.0),
             _case("p1_ES", "ES", 0.7), _case("x_vol", None, 0.6)]
    s = summarize_cases(cases)
    assert list(s) == ["ED", "ES", "all"]
    assert all(set(group) == set(METRIC_KEYS) for group in s.values())
    # sample std (ddof=1): ED dice_lv 0.8, 0.9 -> sqrt(2 * 0.05^2 / 1) = 0.0707
    assert s["ED"]["dice_lv"] == pytest.approx([0.85, 0.0707], abs=1e-4)
    assert s["ED"]["hd95_lv"] == pytest.approx([5.0, math.sqrt(2)], abs=1e-4)
    assert s["ES"]["dice_lv"] == [0.7, 0.0]  # one case: no spread
    # all four, the phase-less one included: deviations +-0.05, +-0.15 -> sqrt(0.05 / 3)
    assert s["all"]["dice_lv"] == pytest.approx([0.75, math.sqrt(0.05 / 3)], abs=1e-4)
    assert s["all"]["dice_rv"] == [1.0, 0.0]


def test_summarize_omits_absent_phases():
    s = summarize_cases([_case("p1_ED", "ED", 0.8), _case("v", None, 0.6)])
    assert list(s) == ["ED", "all"]
    assert list(summarize_cases([_case("v", None, 0.6)])) == ["all"]
    assert summarize_cases([]) == {}


def test_summary_of_real_case_metrics_round_trip():
    # case_metrics rows feed summarize_cases directly, as `best --evaluate` uses them.
    vol = np.zeros((5, 5, 5), dtype=np.int64)
    vol[1:4, 1:4, 1:4] = LV
    shifted = np.roll(vol, 1, axis=2)
    rows = [{"case": "a", "patient": "a", "phase": "ED", **case_metrics(vol, vol, SPACING)},
            {"case": "b", "patient": "b", "phase": "ED", **case_metrics(shifted, vol, SPACING)}]
    s = summarize_cases(rows)
    assert s["ED"]["dice_lv"][0] == pytest.approx((1.0 + 2 / 3) / 2, abs=1e-4)  # 18 of 27 + 27
    assert s["ED"]["hd95_lv"][0] == pytest.approx(1.5 / 2)  # 1.5 mm shift along axis 2, and 0
