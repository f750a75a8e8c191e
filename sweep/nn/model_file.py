"""The evaluated model as one file (``best --evaluate`` writes ``model.pt``), and running it.

The file is a plain dict of tensors, dicts, lists, str, int, float, bool and None, so
``torch.load(path, weights_only=True)`` reads it without unpickling any class: a model file from
someone else cannot run code on load. It holds every ensemble member's weights grouped by seed,
the SegNetConfig that built them, the test-time choices made on validation (rotation TTA,
largest-component cleaning), the preprocessing, class names, params, and provenance.

``ensemble_probs`` is the ensemble's arithmetic exactly as ``best --evaluate`` computes its test
masks, meant to be the one copy both call: then ``predict`` on the test images writes the masks
``best`` wrote, bit for bit, on the same machine and device (bf16 and kernels differ elsewhere).
"""

from __future__ import annotations

import math
import os
import platform
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from model import SegNet, SegNetConfig
from data.files import output_file
from sweep.core.errors import UsageError
from sweep.nn.postprocess import apply_postprocessing, predict_probs
from sweep.nn.runtime import EVAL_BATCH, load_model, resolve_device_or_fail, use_bf16

FORMAT = "segnet-sweep-model"  # the marker that tells this tool's files from any other torch file
FORMAT_VERSION = 1  # bump when a field changes meaning; load_bundle refuses newer versions
PAD_MODE = "replicate"  # see PadToMultiple


@dataclass(eq=False)  # holds tensors: compare fields, not bundles
class ModelBundle:
    """Everything ``predict`` needs to reproduce ``best --evaluate``'s masks."""

    members: list[list[dict]]  # state_dicts grouped by seed: members[seed][fold] (with top-k: per trial and seed)
    model_config: dict  # SegNetConfig.to_dict() of the (first) configuration
    tta: bool  # rotation test-time augmentation (sweep.nn.postprocess.TTA_ANGLES)
    largest_component: bool  # keep the largest 8-connected island per class and slice
    preprocessing: dict  # how inputs became network inputs, as the data source recorded it
    class_names: list[str] = field(default_factory=lambda: ["background", "RV", "myocardium", "LV"])
    params: dict = field(default_factory=dict)  # the trial's hyperparameters
    data_fingerprint: str = ""
    study: str = ""
    trial: int = -1
    versions: dict = field(default_factory=dict)  # package versions that trained it (current_versions())
    # One SegNetConfig dict per group of ``members`` where the ensemble mixes configurations
    # (the top-k trials); empty: every group is ``model_config``. Files without it read as empty.
    group_configs: list[dict] = field(default_factory=list)

    @property
    def config(self) -> SegNetConfig:
        return SegNetConfig.from_dict(self.model_config)

    def configs(self) -> list[SegNetConfig]:
        """The configuration of each group of ``members``."""
        return [SegNetConfig.from_dict(c) for c in self.group_configs] or [self.config] * len(self.members)


def current_versions() -> dict:
    """Versions worth recording next to weights: what produced them, should they ever disagree."""
    from sweep import __version__

    return {"segnet-sweep": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _plain(value, where: str):
    """``value`` as only what ``torch.load(weights_only=True)`` accepts: tuples become lists."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    # Exact builtin types: a subclass (torch.__version__ is a TorchVersion) would be pickled as its class.
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if value is None:
        return None
    raise TypeError(f"model file: {where} is a {type(value).__name__}, which weights_only loading refuses")


def save_bundle(bundle: ModelBundle, path: str | os.PathLike) -> Path:
    """Write ``bundle`` to ``path`` (one file; parents created). Returns the path.

    Written to a temporary file in the same folder and renamed, so an interrupted save never
    leaves a truncated model where a good one was.
    """
    path = Path(path)
    record = {"format": FORMAT, "format_version": FORMAT_VERSION}
    record.update({f.name: _plain(getattr(bundle, f.name), f.name) for f in fields(bundle)})
    with output_file(path) as tmp:
        torch.save(record, tmp)
    return path


REQUIRED = ("members", "model_config", "tta", "largest_component", "preprocessing")  # later fields have defaults


def load_bundle(path: str | os.PathLike) -> ModelBundle:
    """Read a file written by ``save_bundle``.

    Raises UsageError (one line naming the file) when it is missing, not a torch file, a torch
    file of something else, damaged, or of a newer format version than this tool reads.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--model {path}: {'is a folder' if path.is_dir() else 'file not found'}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; torch's own errors on other
        # files are internals ("pop from empty list", a pickle opcode number), no reason for a person
        raise UsageError(f"--model {path}: not a model file of segnet-sweep (not a PyTorch file)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- torch reports damaged or foreign archives through many types
        raise UsageError(f"--model {path}: not a model file of segnet-sweep (a damaged PyTorch file, "
                         "or one holding pickled code)") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise UsageError(f"--model {path}: not a model file of segnet-sweep (no {FORMAT!r} marker)")
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UsageError(f"--model {path}: model format version {version} is newer than this tool reads "
                         f"({FORMAT_VERSION}); upgrade segnet-sweep")
    names = [f.name for f in fields(ModelBundle) if f.name in record]
    missing = [f.name for f in fields(ModelBundle) if f.name not in record and f.name in REQUIRED]
    if missing:
        raise UsageError(f"--model {path}: damaged model file (missing {', '.join(missing)})")
    bundle = ModelBundle(**{n: record[n] for n in names})
    if not bundle.members or not all(bundle.members):
        raise UsageError(f"--model {path}: damaged model file (a seed without models)")
    problem = preprocessing_problem(bundle.preprocessing)
    if problem:
        raise UsageError(f"--model {path}: invalid preprocessing in the model file ({problem})")
    problem = weights_problem(bundle.members)
    if problem:
        raise UsageError(f"--model {path}: cannot segment ({problem}); retrain it with `best --evaluate`")
    return bundle


def weights_problem(members) -> str | None:
    """Where a member's weights hold a NaN or an infinity (a training run that diverged, a damaged
    copy), or None: every prediction of such a network is NaN, and its masks all background."""
    for s, seed in enumerate(members):
        for m, state in enumerate(seed):
            if not isinstance(state, dict):
                return f"seed {s + 1}, model {m + 1}: not a mapping of weights"
            for name, tensor in state.items():
                if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    return f"seed {s + 1}, model {m + 1}: weights {name} hold NaN or infinite values"
    return None


# The pixel size (mm) volumes are resampled to before the network sees them: cardiac MR is
# acquired at 0.6-3 mm in plane (ACDC 0.7-1.9 mm), small-animal and ex-vivo scanners reach about
# 0.1 mm. Below 0.05 mm a 300 mm field of view would become a 6,000 x 6,000 slice, whose
# centre crop holds a speck of the heart; above 20 mm the whole heart fits in a few pixels. A
# recorded value outside is a damaged or hand-edited file, refused before anything is predicted.
TARGET_SPACING_RANGE_MM = (0.05, 20.0)


def preprocessing_problem(prep) -> str | None:
    """What is wrong with a model file's recorded preprocessing, or None: every size and spacing
    ``predict`` divides by or allocates must be a positive, finite number, and the spacing one
    that some scanner gives (``TARGET_SPACING_RANGE_MM``)."""
    if not isinstance(prep, dict):
        return f"expected a mapping, got {type(prep).__name__}"
    for key, kinds in (("target_spacing_mm", (int, float)), ("slice_size", (int,)), ("image_size", (int,))):
        if prep.get(key) is None:
            continue
        values = prep[key] if isinstance(prep[key], (list, tuple)) else [prep[key]]
        if not values or not all(_positive(v, kinds) for v in values):
            what = "whole numbers of pixels" if kinds == (int,) else "millimetres"
            return f"{key} {prep[key]!r}: must be positive {what}"
    spacing = prep.get("target_spacing_mm")
    low, high = TARGET_SPACING_RANGE_MM
    if spacing is not None and not low <= spacing <= high:
        return (f"target_spacing_mm {spacing!r}: no scanner's pixel size; volumes are resampled to "
                f"{low:g}-{high:g} mm")
    return None


def _positive(value, kinds: tuple[type, ...]) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def ensemble_probs(models_by_seed: list[list[nn.Module]], images: torch.Tensor, bf16: bool, tta: bool) -> torch.Tensor:
    """Ensemble class probabilities ``(N, C, H, W)`` float32 on the CPU, for images ``(N, 1, H, W)`` in [0, 1].

    Per seed, the mean over its fold models (accumulated from zeros on the CPU, one ``/ n_folds``
    per model, as ``best --evaluate`` always did); then the mean over seeds. Keep this order of
    operations: floating-point sums are not associative, and masks must match ``best``'s bit for
    bit. ``images`` is moved to the models' device.
    """
    device = next(models_by_seed[0][0].parameters()).device
    images = images.to(device)
    per_seed = []
    for models in models_by_seed:
        total = None
        for model in models:
            probs = predict_probs(model, images, bf16, tta).cpu()
            if total is None:
                total = torch.zeros(probs.shape)
            total += probs / len(models)
        per_seed.append(total)
    return torch.stack(per_seed).mean(0)


class PadToMultiple(nn.Module):
    """Runs a SegNet on any ``(B, 1, H, W)``: pads H and W up to a multiple of ``2**depth``, crops back.

    The padding happens inside the network's call, after ``predict_logits`` normalised the slice,
    so the per-slice mean and standard deviation are those of the real image (padding first would
    shift them). Mode ``replicate``: it continues the border (usually dark background) without
    inventing an edge, as zeros in normalised units (mid-grey) would, or mirrored anatomy near
    the border, as ``reflect`` would; it also works for images smaller than the pad. The padding
    is split evenly between both sides so the heart stays where training put it. Sizes that need
    no padding go straight to the network, unchanged.
    """

    def __init__(self, model: SegNet, multiple: int) -> None:
        super().__init__()
        self.model = model
        self.multiple = multiple
        self.mode = PAD_MODE  # an attribute, not the global: TorchScript reads no global strings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.multiple == 0 and x.shape[-1] % self.multiple == 0:
            return self.model(x)  # exactly what best --evaluate ran
        return self.padded(x)

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """Pad, run, crop: ``(B, 1, H, W) -> (B, C, H, W)``; free of branches, so exports keep H, W symbolic."""
        h, w = x.shape[-2], x.shape[-1]
        pad_h = (self.multiple - h % self.multiple) % self.multiple
        pad_w = (self.multiple - w % self.multiple) % self.multiple
        top, left = pad_h // 2, pad_w // 2
        x = F.pad(x, [left, pad_w - left, top, pad_h - top], mode=self.mode)
        out = self.model(x.contiguous(memory_format=torch.channels_last))
        return out[:, :, top : top + h, left : left + w]


def as_image_batch(images) -> torch.Tensor:
    """``(N, 1, H, W)`` float32 on the CPU from an array ``(H, W)`` or ``(N, H, W)``.

    Floats are taken as they are ([0, 1] expected; the network normalises each slice anyway);
    uint8 is divided by 255 and uint16 by 65535, as ``data.io.read_image`` does.
    """
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise ValueError(f"expected images (H, W) or (N, H, W), got shape {array.shape}")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / np.float32(255)
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / np.float32(65535)
    elif not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected float images in [0, 1] or uint8/uint16, got {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError("images hold NaN or infinite values")
    batch = torch.from_numpy(array)
    return batch[None, None] if batch.ndim == 2 else batch[:, None]


def _load_members(bundle: ModelBundle, device: torch.device) -> list[list[PadToMultiple]]:
    """Every member on ``device``, grouped by seed, each able to take any slice size."""
    try:
        return [[PadToMultiple(load_model(config, state, device), 2**config.depth).eval() for state in seed]
                for config, seed in zip(bundle.configs(), bundle.members, strict=True)]
    except (TypeError, ValueError, RuntimeError) as err:  # a hand-edited or mismatched file
        reason = str(err).strip().splitlines()[0][:160]
        raise UsageError(f"model file: weights do not fit its model_config ({reason})") from None


class Segmenter:
    """The saved ensemble, ready to segment slices on one device.

    >>> seg = Segmenter.load("best/model.pt")
    >>> masks = seg.predict(image)  # (H, W) float in [0, 1] -> (1, H, W) uint8 class ids
    """

    batch_size = EVAL_BATCH  # slices a pass: the batches ``predict_logits`` makes of a whole set

    def __init__(self, bundle: ModelBundle, device: str = "auto", bf16: bool | None = None) -> None:
        self.bundle = bundle
        self.device = resolve_device_or_fail(device)
        # bf16 where the device runs it fast, as best --evaluate decides: same device, same masks.
        self.bf16 = use_bf16(self.device) if bf16 is None else bf16
        self.models = _load_members(bundle, self.device)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", bf16: bool | None = None) -> Segmenter:
        return cls(load_bundle(path), device=device, bf16=bf16)

    def probabilities(self, images) -> torch.Tensor:
        """Ensemble probabilities ``(N, C, H, W)`` float32 on the CPU (with the bundle's TTA choice).

        ``images``: ``(H, W)`` or ``(N, H, W)``, see ``as_image_batch``. Runs ``batch_size`` slices a
        pass: the same batches ``predict_logits`` makes of a whole set, hence the same floating point.
        """
        batch = as_image_batch(images)
        step = self.batch_size
        chunks = [ensemble_probs(self.models, batch[i : i + step], self.bf16, self.bundle.tta)
                  for i in range(0, batch.shape[0], step)]
        return torch.cat(chunks)

    def predict(self, images) -> np.ndarray:
        """Class ids ``(N, H, W)`` uint8 (0 background, 1 RV, 2 myocardium, 3 LV) for ``(H, W)`` or ``(N, H, W)``."""
        return apply_postprocessing(self.probabilities(images), {"largest_component": self.bundle.largest_component})
