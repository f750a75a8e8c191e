"""``python -m sweep predict``: run a saved ``model.pt`` on new PNG slices or NIfTI volumes, or export it.

PNG inputs give ``OUT/NAME_mask.png`` (class ids as pixel values, the coursework encoding) and,
with ``--overlay``, ``OUT/NAME_overlay.png``; NIfTI inputs give ``OUT/CASE.nii.gz`` on the
volume's own grid. Paths, output names and folders are checked, and every PNG is decoded, before
anything is written, so a bad PNG costs no half-written output folder (a NIfTI file is checked
as it is read).

torch and the model are imported inside the functions that run them: the CLI builds its parser
from ``add_predict_parser`` for every command, and read-only commands must not load torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from data import read_image, write_mask
from data.io import png_files
from data.nifti import is_nifti
from sweep.errors import UsageError
from sweep.pictures import overlay_png
from sweep.study import DEFAULT_STORAGE, DEFAULT_STUDY

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sweep.model_file import ModelBundle, Segmenter

EXPORT_FORMATS = ("onnx", "torchscript")
# Max |probability difference| allowed between an export and PyTorch, both float32 on the CPU:
# the two run the same float32 operations in different kernels (~1e-6 apart); 1e-4 leaves room
# for that and still catches a wrong layer, a missing normalisation or mis-ordered unpooling.
EXPORT_TOLERANCE = 1e-4
DEFAULT_EXPORT_SIZE = (96, 96)  # the phantom's and the coursework's slice size


def add_predict_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``predict`` to the CLI's subparsers (their ``parser_class`` makes errors one line)."""
    p = subparsers.add_parser("predict", help="segment PNG slices or NIfTI volumes with a saved model.pt")
    p.add_argument("--model", default=None, metavar="FILE",
                   help="model.pt written by `best --evaluate` (default: the evaluated model of --study, "
                        "fetched from the study's artifact location)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL, where --model is not given (default %(default)s)")
    p.add_argument("--study", default=DEFAULT_STUDY, help="study name, where --model is not given (default %(default)s)")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="PNG or NIfTI (.nii, .nii.gz) files, or folders of them")
    p.add_argument("--out", default="predictions", metavar="DIR", help="output folder (default %(default)s)")
    p.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png pictures")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--export", nargs=2, metavar=("onnx|torchscript", "FILE"), default=None,
                   help="also write the ensemble (without TTA and cleaning) as ONNX or TorchScript, checked against PyTorch")
    return p


def run_predict(args: argparse.Namespace) -> dict:
    """Segment ``args.inputs`` with ``args.model`` into ``args.out``; export with ``args.export``.

    Returns ``{"model", "inputs", "images", "volumes", "outputs", "out", "notes", "export"}``.
    Raises UsageError or DataError (one line naming the flag or file) for bad input.
    """
    if args.export is not None and args.export[0] not in EXPORT_FORMATS:
        raise UsageError(f"--export {args.export[0]}: expected one of {', '.join(EXPORT_FORMATS)}")
    if not args.inputs and args.export is None:
        raise UsageError("predict: give at least one INPUT (a PNG or NIfTI file, or a folder), or --export")
    from sweep.model_file import Segmenter, load_bundle

    if args.model is None:
        args.model = str(study_model(args.storage, args.study))
    bundle = load_bundle(args.model)
    pngs, volumes = resolve_inputs(args.inputs)
    out = Path(args.out)
    if pngs or volumes:
        check_unique_outputs(pngs, volumes, args.overlay)
        check_writable(out, f"--out {out}")
    if args.export is not None:
        check_writable(Path(args.export[1]).parent, f"--export {args.export[0]} {args.export[1]}")
    shapes = [read_image(p).shape for p in pngs]  # decodes and checks every PNG before any output
    segmenter = Segmenter(bundle, device=args.device) if pngs or volumes else None
    summary = {"model": str(args.model), "inputs": len(pngs) + len(volumes), "images": len(pngs),
               "volumes": len(volumes), "outputs": [], "out": str(out),
               "notes": png_notes(bundle, shapes) + volume_notes(bundle, volumes), "export": None}
    with tqdm(total=len(pngs) + len(volumes), desc="predict", unit="file", file=sys.stderr, disable=args.quiet) as bar:
        summary["outputs"] += predict_pngs(segmenter, pngs, shapes, out, args.overlay, bar)
        summary["outputs"] += predict_volumes(segmenter, volumes, out, args.overlay, bar)
    if args.export is not None:
        summary["export"] = export_model(bundle, args.export[0], args.export[1])
    return summary


def study_model(storage_url: str, study_name: str) -> Path:
    """The model.pt of the study's latest ``best --evaluate``, from its artifact location (a
    machine with no local files gets it there)."""
    from sweep import artifacts
    from sweep.study import open_study_readonly, sweep_command

    path = artifacts.fetch(open_study_readonly(storage_url, study_name), storage_url, "model.pt")
    if path is None:
        raise UsageError(f"--model: not given, and study {study_name!r} has no evaluated model.pt "
                         f"(run `{sweep_command('best --evaluate', storage_url, study_name)}` first)")
    return path


def resolve_inputs(inputs: list[str]) -> tuple[list[Path], list[Path]]:
    """PNG and NIfTI files named directly or found directly inside the named folders.

    Inside folders, hidden files and other file types are skipped; a named file must be one of the
    two kinds, and a folder must hold at least one.
    """
    pngs: list[Path] = []
    volumes: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found_png = png_files(path)
            found_nii = sorted(p for p in path.iterdir() if is_nifti(p))
            if not found_png and not found_nii:
                raise UsageError(f"{path}: folder holds no PNG or NIfTI (.nii, .nii.gz) files")
            pngs += found_png
            volumes += found_nii
        elif path.is_file():
            if path.suffix.lower() == ".png":
                pngs.append(path)
            elif is_nifti(path):
                volumes.append(path)
            else:
                raise UsageError(f"{path}: not a PNG or NIfTI (.nii, .nii.gz) file")
        else:
            raise UsageError(f"{path}: no such file or folder")
    return pngs, volumes


def case_name(path: Path) -> str:
    """``patient001_frame01.nii.gz`` -> ``patient001_frame01``; nnU-Net's ``CASE_0000.nii.gz`` -> ``CASE``.

    The case id ``data.volumes`` gives the volume, so ``predict`` and ``best --evaluate`` name
    one case's file alike.
    """
    from data.volumes import case_id

    return case_id(path)


def output_names(pngs: list[Path], volumes: list[Path], overlay: bool) -> list[tuple[Path, str]]:
    """(input, output file name) for every file ``predict`` writes into ``--out``."""
    names = [(p, f"{p.stem}_mask.png") for p in pngs] + [(v, f"{case_name(v)}.nii.gz") for v in volumes]
    if overlay:
        names += [(p, f"{p.stem}_overlay.png") for p in pngs] + [(v, f"{case_name(v)}_overlay.png") for v in volumes]
    return names


def check_unique_outputs(pngs: list[Path], volumes: list[Path], overlay: bool = False) -> None:
    """Two inputs with one name would silently overwrite one output: refuse before writing."""
    seen: dict[str, Path] = {}
    for path, key in output_names(pngs, volumes, overlay):
        if key in seen:
            raise UsageError(f"{path}: writes {key}, as {seen[key]} does; predict them into different --out folders")
        seen[key] = path


def check_writable(out: Path, label: str) -> None:
    """Create ``out`` and a temporary file in it, so an unwritable folder fails before any work."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{label}: {out} is a file, expected a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UsageError(f"{label}: cannot write in folder {out} ({err.strerror or err})") from None


def png_notes(bundle: ModelBundle, shapes: list[tuple[int, int]]) -> list[str]:
    """What differs between the PNG inputs and the slices the model was trained on (segmented anyway)."""
    if not shapes:
        return []
    prep = bundle.preprocessing or {}
    if prep.get("kind", "slices") != "slices":
        spacing = f" resampled to {prep['target_spacing_mm']} mm" if "target_spacing_mm" in prep else ""
        return [(f"model trained on slices of NIfTI volumes{spacing}; PNG slices carry no spacing and are "
                "segmented as they are")]
    size = tuple(prep.get("image_size") or ())
    other = sum(1 for s in shapes if size and tuple(s) != size)
    if other:
        return [(f"{other} of {len(shapes)} PNG images are not {size[0]} x {size[1]} like the training slices; "
                "segmented at their own size")]
    return []


def volume_options(bundle: ModelBundle) -> dict:
    """Keyword arguments of ``preprocess_volume`` that reproduce the model's recorded preprocessing."""
    prep = bundle.preprocessing or {}
    if prep.get("kind") != "volumes":
        return {}
    options = {"target_spacing": prep.get("target_spacing_mm"), "size": prep.get("slice_size")}
    return {k: v for k, v in options.items() if v is not None}


def volume_notes(bundle: ModelBundle, volumes: list[Path]) -> list[str]:
    """Where NIfTI inputs cannot be prepared exactly as the model's training volumes were."""
    if not volumes:
        return []
    prep = bundle.preprocessing or {}
    if prep.get("kind", "slices") != "volumes":
        return ["model trained on PNG slices; NIfTI volumes are preprocessed with data.volumes' defaults"]
    from data.volumes import preprocessing

    current = preprocessing()
    # Spacing and slice size are passed to preprocess_volume; anything else is fixed in data.volumes.
    differ = [k for k in current if k not in ("target_spacing_mm", "slice_size") and k in prep and prep[k] != current[k]]
    return [f"model file records volume preprocessing {k}={prep[k]}, this version uses {current[k]}" for k in differ]


def _batches(pngs: list[Path], shapes: list[tuple[int, int]], size: int) -> list[list[Path]]:
    """Files grouped by shape (one tensor needs one shape), ``size`` at most per group."""
    groups: dict[tuple[int, int], list[Path]] = {}
    for path, shape in zip(pngs, shapes):
        groups.setdefault(tuple(shape), []).append(path)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


def predict_pngs(segmenter: Segmenter, pngs: list[Path], shapes, out: Path, overlay: bool, bar) -> list[str]:
    """Write ``NAME_mask.png`` (and ``NAME_overlay.png``) per PNG; returns the written paths."""
    written = []
    for batch in _batches(pngs, shapes, segmenter.batch_size):
        images = np.stack([read_image(p) for p in batch])  # (B, H, W) in [0, 1]
        masks = segmenter.predict(images)
        for path, image, mask in zip(batch, images, masks):
            write_mask(out / f"{path.stem}_mask.png", mask)
            written.append(str(out / f"{path.stem}_mask.png"))
            if overlay:
                overlay_png(image[None], None, mask[None], out / f"{path.stem}_overlay.png", max_slices=1)
                written.append(str(out / f"{path.stem}_overlay.png"))
            bar.update(1)
    return written


def predict_volumes(segmenter: Segmenter, volumes: list[Path], out: Path, overlay: bool, bar) -> list[str]:
    """Write ``CASE.nii.gz`` per volume, on the volume's original grid (``data.volumes`` maps it back)."""
    if not volumes:
        return []
    # Imported here: only volumes need nibabel, and slice users should not pay for it.
    from data.volumes import assemble, preprocess_volume, write_labels_nifti

    written = []
    for path in volumes:
        images, _, volume = preprocess_volume(path, **volume_options(segmenter.bundle))  # (Z, H, W) in [0, 1]
        masks = segmenter.predict(images)  # (Z, H, W) uint8
        target = out / f"{case_name(path)}.nii.gz"
        write_labels_nifti(target, assemble(volume, masks), volume)
        written.append(str(target))
        if overlay:  # drawn on the preprocessed slices, as the network saw them
            overlay_png(images, None, masks, out / f"{case_name(path)}_overlay.png")
            written.append(str(out / f"{case_name(path)}_overlay.png"))
        bar.update(1)
    return written


def format_summary(summary: dict) -> str:
    """What the CLI prints after ``run_predict``: notes, then one line per kind of output."""
    lines = [f"note: {n}" for n in summary["notes"]]
    if summary["inputs"]:
        lines.append(f"segmented {summary['images']} images and {summary['volumes']} volumes into {summary['out']}")
    if summary["export"]:
        e = summary["export"]
        lines.append(f"exported {e['format']} to {e['path']} (input {e['input_shape']}, max |prob diff| "
                     f"{e['max_abs_diff']:.2e} <= {e['tolerance']:g}; no TTA or largest-component cleaning)")
    return "\n".join(lines)


def export_size(bundle: ModelBundle) -> tuple[int, int]:
    """The slice size the model was trained on, where the preprocessing records one."""
    prep = bundle.preprocessing or {}
    if isinstance(prep.get("image_size"), (list, tuple)) and len(prep["image_size"]) == 2:
        return int(prep["image_size"][0]), int(prep["image_size"][1])
    if isinstance(prep.get("slice_size"), int):  # data.volumes.preprocessing(): square slices
        return prep["slice_size"], prep["slice_size"]
    return DEFAULT_EXPORT_SIZE


def export_model(bundle_or_segmenter: ModelBundle | Segmenter, fmt: str, path: str | os.PathLike,
                 example_shape: tuple[int, int, int, int] | None = None) -> dict:
    """Write the ensemble as ONNX or TorchScript to ``path``, run it, and check it against PyTorch.

    The export maps ``(B, 1, H, W)`` float32 images in [0, 1] to ``(B, C, H, W)`` ensemble
    probabilities (``ExportEnsemble``); NOT inside: rotation TTA and largest-component cleaning
    (take the argmax and clean outside). Both take any B, H and W; ``example_shape`` (default
    ``(1, 1, *export_size(bundle))``) is the size ONNX is traced at and checks start from.
    The saved file is loaded back (``torch.jit.load`` / onnxruntime) and run on fresh random
    inputs, of another batch size and, for TorchScript, also of an odd size, next to
    ``ensemble_probs`` in float32 on the CPU; beyond ``EXPORT_TOLERANCE`` the file is removed and
    ExportMismatchError raised. Returns ``{"format", "path", "input_shape", "max_abs_diff", "tolerance"}``.
    """
    import torch

    from sweep.model_file import ExportEnsemble, Segmenter, ensemble_probs

    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--export {fmt}: expected one of {', '.join(EXPORT_FORMATS)}")
    bundle = bundle_or_segmenter.bundle if isinstance(bundle_or_segmenter, Segmenter) else bundle_or_segmenter
    n, c, h, w = example_shape or (1, 1, *export_size(bundle))
    path = Path(path)
    check_writable(path.parent, f"--export {fmt} {path}")
    reference = Segmenter(bundle, device="cpu", bf16=False)  # float32: what an export computes
    net = ExportEnsemble(reference).eval()
    generator = torch.Generator().manual_seed(0)
    # Batch 2 at least: torch.export specialises a batch of 1 into a constant.
    example = torch.rand((max(n, 2), c, h, w), generator=generator)
    run = _export_torchscript(net, path) if fmt == "torchscript" else _export_onnx(net, example, path)
    diff = 0.0
    for check_shape in [(n + 2, c, h, w), (2, c, h + 5, w + 3)]:  # another batch size; an odd size
        x = torch.rand(check_shape, generator=generator)
        diff = max(diff, float((run(x) - ensemble_probs(reference.models, x, bf16=False, tta=False)).abs().max()))
    if not diff <= EXPORT_TOLERANCE:
        path.unlink(missing_ok=True)
        raise ExportMismatchError(f"--export {fmt}: exported model differs from PyTorch by {diff:.3g} "
                                  f"(> {EXPORT_TOLERANCE:g}); {path} removed")
    return {"format": fmt, "path": str(path), "input_shape": ["B", c, "H", "W"], "max_abs_diff": diff, "tolerance": EXPORT_TOLERANCE}


class ExportMismatchError(RuntimeError):
    """An export's outputs differ from PyTorch's beyond ``EXPORT_TOLERANCE``: a bug, not bad input."""


def _export_torchscript(net: nn.Module, path: Path):
    """Script (not trace: a trace would freeze the unpooling and padding sizes of one input size)."""
    import torch

    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the format still serves C++ and mobile users
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(net).save(str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded(x)

    return run


def _export_onnx(net: nn.Module, example: torch.Tensor, path: Path):
    """``torch.onnx.export`` (the torch.export-based exporter; it maps max-unpooling to ONNX MaxUnpool)."""
    import torch

    try:
        import onnxruntime
    except ImportError:
        raise UsageError("--export onnx: needs the onnx extra (pip install 'segnet-sweep[onnx]')") from None
    dynamic = torch.export.Dim.DYNAMIC
    try:
        with _quiet_exporter():
            torch.onnx.export(net, (example,), str(path), input_names=["images"], output_names=["probs"],
                              dynamic_shapes=({0: dynamic, 2: dynamic, 3: dynamic},), dynamo=True, verbose=False)
    except ImportError as err:
        raise UsageError(f"--export onnx: needs the onnx extra (pip install 'segnet-sweep[onnx]'): {err}") from None
    except Exception as err:  # noqa: BLE001 -- the exporter fails through many types
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UsageError(f"--export onnx: the ONNX exporter cannot export this model ({reason}); "
                         "use --export torchscript") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])

    return run


@contextmanager
def _quiet_exporter():
    """The exporter and its ONNX libraries log and warn about optional dependencies (torchvision),
    deprecations and attribute defaults, none of which says anything about this model."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
