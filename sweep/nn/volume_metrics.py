"""Per-volume segmentation metrics and ACDC clinical indices (docs/FORMATS.md, "Metrics").

Everything here is a pure function of numpy label volumes ``(X, Y, Z)`` holding class ids
0 background, 1 RV, 2 myocardium, 3 LV, and of a voxel spacing ``(sx, sy, sz)`` in mm given
in the order of those array axes (for NIfTI, ``header.get_zooms()[:3]``). Distances are in
mm, volumes in ml, masses in g, ejection fractions in %. MONAI is imported only inside
``case_metrics`` because importing it costs seconds.

Surface distances come from MONAI (``compute_hausdorff_distance`` with ``percentile=95`` and
``compute_average_surface_distance`` with ``symmetric=True``, both given the spacing). In
MONAI's definitions HD95 is the larger of the two directed 95th percentiles, and ASSD the
mean over the distances of both surfaces' edge voxels taken together (medpy's ``hd95`` takes
one percentile of the pooled distances and its ``assd`` averages the two directed means, so
numbers from medpy-based code can differ slightly).

Empty structures (a structure absent from the prediction, the ground truth, or both):

- both empty: Dice 1.0, HD95 0.0, ASSD 0.0 (nothing to find and nothing found: perfect),
  as ``sweep.nn.metrics`` scores a class absent from both.
- exactly one empty: Dice 0.0, and HD95 = ASSD = the volume's physical diagonal,
  ``sqrt(sum((n_i * s_i)^2))`` mm over the array's shape and spacing: a finite penalty that
  is at least as large as any distance measurable inside that volume, so per-phase means and
  stds stay defined and a missed structure ranks below any found one.

What others do: MONAI returns non-finite values with a warning when either mask is empty
(in 1.6, HD95 nan and ASSD inf for one empty mask, nan for both) and leaves the choice to
the caller. The ACDC challenge defines no rule: it ranks Dice and the maximum Hausdorff
distance, computed by its evaluation code (``metrics_acdc.py``) with medpy, whose distances
raise on an empty mask; every ACDC ground truth at ED and ES contains all three structures,
so the case only arises from predictions. The diagonal penalty is one common convention;
papers also drop such cases (NaN-and-skip, which flatters a model that misses structures)
or use another fixed constant, so say which was used when comparing with published numbers.

Clinical indices follow the ACDC challenge (Bernard et al., IEEE TMI 2018): LV and RV
end-diastolic and end-systolic cavity volumes (EDV, ESV, ml), ejection fraction
``EF = 100 * (EDV - ESV) / EDV`` (%), and myocardial mass at ED, ``1.05 g/ml x`` myocardium
volume (g). Agreement with the ground truth is Pearson's r and the mean bias (pred - truth)
over patients.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from sweep.nn.metrics import CLASS_NAMES, FOREGROUND

# Structure name -> class id, in the order the case keys are listed (rv, myo, lv).
STRUCTURES: dict[str, int] = {CLASS_NAMES[c]: c for c in FOREGROUND}
METRIC_KEYS: tuple[str, ...] = tuple(
    f"{metric}_{name}" for metric in ("dice", "hd95", "assd") for name in STRUCTURES
)
CLINICAL_KEYS: tuple[str, ...] = ("lv_edv", "lv_esv", "lv_ef", "rv_edv", "rv_esv", "rv_ef", "myo_mass")
PHASES: tuple[str, ...] = ("ED", "ES")
MYOCARDIUM_DENSITY_G_PER_ML = 1.05  # ACDC's (and the CMR literature's) myocardial density

# Output precision: far below what the measurements resolve (a voxel is ~1.5 x 1.5 x 5-10 mm,
# a ventricle ~100 ml), so rounding hides float noise without hiding any real difference.
DICE_DIGITS = 4
MM_DIGITS = 2  # distances, mm
ML_DIGITS = 2  # volumes, ml; EF in %; mass in g
STAT_DIGITS = 4  # Pearson r and summary means/stds


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be three positive mm values (sx, sy, sz), got {tuple(spacing)}")
    return sp  # type: ignore[return-value]


def _check_volume(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"{name} must be a 3-D label volume (X, Y, Z), got shape {labels.shape}")
    return labels


def physical_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the diagonal of a volume of ``shape`` voxels ``(X, Y, Z)`` at ``spacing`` mm.

    This is the penalty HD95 and ASSD take when exactly one of prediction and truth is empty.
    """
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, _check_spacing(spacing)))))


def dice_3d(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice ``2|P ∩ G| / (|P| + |G|)`` of two boolean masks of one shape; 1.0 when both are empty."""
    n_pred, n_true = int(pred.sum()), int(truth.sum())
    if n_pred + n_true == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / (n_pred + n_true)


def surface_distances_mm(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """``(hd95, assd)`` in mm between two non-empty boolean masks ``(X, Y, Z)`` at ``spacing`` mm.

    Empty masks are the caller's business (``case_metrics`` scores them before calling this):
    MONAI would return nan or inf for them.
    """
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
    )

    # MONAI wants one-hot (batch, channel, X, Y, Z); one channel, kept because it is the
    # structure itself, not background.
    p = pred[None, None].astype(np.float32)
    t = truth[None, None].astype(np.float32)
    sp = list(_check_spacing(spacing))
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about its own internal use of a deprecated argument on every call.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        hd95 = compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=sp)
        assd = compute_average_surface_distance(p, t, include_background=True, symmetric=True, spacing=sp)
    return float(hd95.reshape(-1)[0]), float(assd.reshape(-1)[0])


def case_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Dice, HD95 (mm) and ASSD (mm) of RV, myocardium and LV for one volume.

    ``pred`` and ``truth`` are integer label volumes ``(X, Y, Z)`` of one shape; ``spacing`` is
    ``(sx, sy, sz)`` in mm along those axes. Returns the keys of ``METRIC_KEYS``:
    ``dice_rv, dice_myo, dice_lv, hd95_rv, hd95_myo, hd95_lv, assd_rv, assd_myo, assd_lv``,
    as Python floats. Empty structures are scored as the module docstring says.
    """
    pred = _check_volume(pred, "pred")
    truth = _check_volume(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth shapes differ: {pred.shape} vs {truth.shape}")
    sp = _check_spacing(spacing)
    penalty = physical_diagonal_mm(pred.shape, sp)
    out: dict[str, float] = {}
    for name, cls in STRUCTURES.items():
        p, t = pred == cls, truth == cls
        p_any, t_any = bool(p.any()), bool(t.any())
        if p_any and t_any:
            hd95, assd = surface_distances_mm(p, t, sp)
        elif p_any or t_any:
            hd95 = assd = penalty
        else:
            hd95 = assd = 0.0
        out[f"dice_{name}"] = round(dice_3d(p, t), DICE_DIGITS)
        out[f"hd95_{name}"] = round(hd95, MM_DIGITS)
        out[f"assd_{name}"] = round(assd, MM_DIGITS)
    return {key: out[key] for key in METRIC_KEYS}


def _volumes_ml(labels: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    labels = _check_volume(labels, "labels")
    voxel_ml = math.prod(_check_spacing(spacing)) / 1000.0  # mm^3 -> ml
    counts = np.bincount(labels.reshape(-1).astype(np.int64), minlength=len(CLASS_NAMES))
    return {name: float(counts[STRUCTURES[name]]) * voxel_ml for name in ("lv", "rv", "myo")}


def volumes_ml(labels: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Volumes in ml of ``{"lv", "rv", "myo"}`` in a label volume ``(X, Y, Z)`` at ``spacing`` mm.

    Voxel count x voxel volume (``sx * sy * sz`` mm^3) / 1000, as ACDC computes them.
    """
    return {k: round(v, ML_DIGITS) for k, v in _volumes_ml(labels, spacing).items()}


def _ejection_fraction(edv: float, esv: float) -> float | None:
    # Undefined without an end-diastolic volume; None rather than nan keeps JSON valid and
    # makes clinical_agreement leave that patient out of that index.
    return None if edv <= 0 else 100.0 * (edv - esv) / edv


def clinical_indices(
    ed_labels: np.ndarray,
    es_labels: np.ndarray,
    spacing_ed: Sequence[float],
    spacing_es: Sequence[float],
) -> dict[str, float | None]:
    """ACDC clinical indices of one patient from its ED and ES label volumes ``(X, Y, Z)``.

    Returns ``lv_edv, lv_esv, rv_edv, rv_esv`` (ml), ``lv_ef, rv_ef`` (%, None when the EDV is 0)
    and ``myo_mass`` (g, myocardium volume at ED x 1.05 g/ml), in the order of ``CLINICAL_KEYS``.
    Each phase has its own spacing since ACDC frames are separate files.
    """
    ed = _volumes_ml(ed_labels, spacing_ed)
    es = _volumes_ml(es_labels, spacing_es)
    raw: dict[str, float | None] = {
        "lv_edv": ed["lv"],
        "lv_esv": es["lv"],
        "lv_ef": _ejection_fraction(ed["lv"], es["lv"]),
        "rv_edv": ed["rv"],
        "rv_esv": es["rv"],
        "rv_ef": _ejection_fraction(ed["rv"], es["rv"]),
        "myo_mass": ed["myo"] * MYOCARDIUM_DENSITY_G_PER_ML,
    }
    return {k: None if v is None else round(v, ML_DIGITS) for k, v in raw.items()}


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation of two equal-length sequences; None for fewer than 2 points or zero variance."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size < 2:
        return None
    da, db = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(da @ da) * float(db @ db))
    if denom == 0.0:
        return None
    return float(da @ db) / denom


def clinical_agreement(
    pred: Sequence[Mapping[str, float | None]], truth: Sequence[Mapping[str, float | None]]
) -> dict[str, dict[str, float | None]]:
    """Agreement of predicted with true clinical indices over patients.

    ``pred[i]`` and ``truth[i]`` are ``clinical_indices`` of the same patient. Returns, for each
    of ``CLINICAL_KEYS``, ``{"r": Pearson r, "bias": mean(pred - truth)}`` (bias in the index's
    unit). A patient whose value is None on either side (an EF with no EDV) is left out of that
    index only. ``r`` is None for fewer than 2 patients or zero variance; ``bias`` None for none.
    """
    if len(pred) != len(truth):
        raise ValueError(f"pred and truth list different numbers of patients: {len(pred)} vs {len(truth)}")
    out: dict[str, dict[str, float | None]] = {}
    for key in CLINICAL_KEYS:
        pairs = [(p[key], t[key]) for p, t in zip(pred, truth) if p[key] is not None and t[key] is not None]
        xs = [float(p) for p, _ in pairs]
        ys = [float(t) for _, t in pairs]
        r = pearson_r(xs, ys)
        bias = float(np.mean(np.subtract(xs, ys))) if pairs else None
        out[key] = {
            "r": None if r is None else round(r, STAT_DIGITS),
            "bias": None if bias is None else round(bias, ML_DIGITS),
        }
    return out


def _mean_std(values: Sequence[float]) -> list[float]:
    # Sample std (ddof=1) as best.py's spread over seeds; one value has no spread, so 0.0.
    v = np.asarray(values, dtype=float)
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return [round(float(v.mean()), STAT_DIGITS), round(std, STAT_DIGITS)]


def summarize_cases(cases: Sequence[Mapping[str, object]]) -> dict[str, dict[str, list[float]]]:
    """Per-phase summary of ``case_metrics`` rows.

    ``cases`` are dicts with ``case``, ``patient``, ``phase`` ("ED", "ES" or None) and the nine
    ``METRIC_KEYS``. Returns ``{"ED": ..., "ES": ..., "all": ...}``, each mapping every metric
    key to ``[mean, std]`` over its cases, std the sample std (ddof=1; 0.0 for one case).
    "ED"/"ES" are omitted when no case has that phase; cases with phase None count in "all"
    only. An empty ``cases`` gives ``{}``.
    """
    groups: dict[str, list[Mapping[str, object]]] = {
        phase: [c for c in cases if c.get("phase") == phase] for phase in PHASES
    }
    groups["all"] = list(cases)
    return {
        name: {key: _mean_std([float(c[key]) for c in members]) for key in METRIC_KEYS}  # type: ignore[arg-type]
        for name, members in groups.items()
        if members
    }


def case_dice_fg(case: Mapping[str, object]) -> float:
    """A volume's foreground Dice: the mean of its RV, myocardium and LV Dice (the figure the
    ACDC literature averages over volumes)."""
    return round(float(np.mean([float(case[f"dice_{name}"]) for name in STRUCTURES])), STAT_DIGITS)  # type: ignore[arg-type]


def fg_summary(cases: Sequence[Mapping[str, object]]) -> dict[str, list[float]]:
    """``[mean, std]`` over volumes of ``case_dice_fg``, per phase ("ED", "ES" where present) and "all"."""
    out = {phase: [case_dice_fg(c) for c in cases if c.get("phase") == phase] for phase in PHASES}
    out["all"] = [case_dice_fg(c) for c in cases]
    return {name: _mean_std(values) for name, values in out.items() if values}


def group_summaries(cases: Sequence[Mapping[str, object]]) -> dict[str, dict]:
    """Per pathology group (the cases' ``group``, where known): ``summarize_cases`` of its volumes,
    with ``dice_fg`` (``fg_summary``) and the number of volumes ``n``."""
    names = sorted({str(c["group"]) for c in cases if c.get("group")})
    out = {}
    for name in names:
        members = [c for c in cases if c.get("group") == name]
        out[name] = {"n": len(members), "dice_fg": fg_summary(members), **summarize_cases(members)}
    return out
