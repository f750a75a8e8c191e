"""``python -m sweep predict``: run a saved ``model.pt`` on new PNG slices or NIfTI volumes, or export
it (``sweep.nn.model_export``).

PNG inputs give ``OUT/NAME_mask.png`` (class ids as pixel values, the coursework encoding) and,
with ``--overlay``, ``OUT/NAME_overlay.png``; NIfTI inputs give ``OUT/CASE.nii.gz`` on the
volume's own grid. Paths, output names and folders are checked, and every PNG is decoded, before
anything is written, so a bad PNG costs no half-written output folder (a NIfTI file's header is
checked first, its voxels as they are read; a failure then leaves no folder predict made and
wrote nothing into).

The output folder lists what predict wrote there (``sweep.core.outputs.OwnedFiles``): a rerun
replaces its own masks, and refuses a file of the same name it did not write, such as a ground
truth ``cmr1_mask.png`` or an nnU-Net ``labelsTs/`` volume.

Its parser is ``sweep.cli``'s, with every command's; this module loads only when ``predict`` runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data import read_image, write_mask
from data.io import png_files
from data.nifti import grid_shape, is_nifti, load_header, nifti_stem
from sweep.core import artifacts
from sweep.core.errors import UsageError
from sweep.core.flags import PredictOptions
from sweep.core.outputs import OwnedFiles, check_can_write, refuse_outputs
from sweep.core.records import MODEL_FILE
from sweep.core.study import open_study_readonly, sqlite_path, sweep_command
from sweep.nn import threads
from sweep.nn.model_export import EXPORT_FORMATS, export_model
from sweep.nn.model_file import ModelBundle, Segmenter, load_bundle
from sweep.nn.pictures import overlay_png


def run_predict(args: PredictOptions) -> dict:
    """Segment ``args.inputs`` with ``args.model`` into ``args.out``; export with ``args.export``.

    Returns ``{"model", "inputs", "images", "volumes", "outputs", "out", "notes", "export"}``.
    Raises UsageError or DataError (one line naming the flag or file) for bad input.
    """
    if args.export is not None and args.export[0] not in EXPORT_FORMATS:
        raise UsageError(f"--export {args.export[0]}: expected one of {', '.join(EXPORT_FORMATS)}")
    if not args.inputs and args.export is None:
        raise UsageError("predict: give at least one INPUT (a PNG or NIfTI file, or a folder), or --export")
    study = open_study_readonly(args.storage, args.study) if args.model is None else recorded_study(args.storage, args.study)
    model = args.model if args.model is not None else str(study_model(study, args.storage))
    bundle = load_bundle(model)
    pngs, volumes, skipped = resolve_inputs(args.inputs)
    out = Path(args.out)
    reads = [*pngs, *volumes, Path(model)]
    owned = None
    if pngs or volumes:
        check_unique_outputs(pngs, volumes, args.overlay)
        names = [name for _, name in output_names(pngs, volumes, args.overlay)]
        refuse_outputs(f"--out {out}", [out, *(out / n for n in names)], storage=args.storage, study=study, inputs=reads)
        check_can_write(out, f"--out {out}")
        owned = OwnedFiles(out, f"--out {out}", "predict")
        owned.refuse_others(names)
    if args.export is not None:
        refuse_outputs(f"--export {args.export[0]}", [args.export[1]], storage=args.storage, study=study, inputs=reads)
        check_can_write(Path(args.export[1]).parent, f"--export {args.export[0]} {args.export[1]}")
    shapes = [read_image(p).shape for p in pngs]  # decodes and checks every PNG before any output
    for volume in volumes:  # and every volume's header: a 4-D cine among them is refused before any output
        grid_shape(load_header(volume), volume)
    segmenter = Segmenter(bundle, device=args.device) if pngs or volumes else None
    if segmenter is not None:
        threads.start(segmenter.device)  # as training chooses them (sweep.nn.threads)
    summary = {"model": model, "inputs": len(pngs) + len(volumes), "images": len(pngs),
               "volumes": len(volumes), "outputs": [], "out": str(out),
               "notes": skipped_notes(skipped) + png_notes(bundle, shapes) + volume_notes(bundle, volumes),
               "skipped": len(skipped), "export": None}
    if owned is not None:
        owned.claim(names)
        try:
            with tqdm(total=len(pngs) + len(volumes), desc="predict", unit="file", file=sys.stderr,
                      disable=args.quiet) as bar:
                summary["outputs"] += predict_pngs(segmenter, pngs, shapes, out, args.overlay, bar)
                summary["outputs"] += predict_volumes(segmenter, volumes, out, args.overlay, bar)
        finally:
            owned.close()  # lists what was written; a failure before any output leaves no folder it made
    if args.export is not None:
        summary["export"] = export_model(bundle, args.export[0], args.export[1])
    return summary


def study_model(study, storage_url: str) -> Path:
    """The model.pt of the study's latest ``best --evaluate``, from its artifact location (a
    machine with no local files gets it there)."""
    path = artifacts.fetch(study, storage_url, MODEL_FILE)
    if path is None:
        raise UsageError(f"--model: not given, and study {study.study_name!r} has no evaluated model.pt "
                         f"(run `{sweep_command('best --evaluate', storage_url, study.study_name)}` first)")
    return path


def recorded_study(storage_url: str, study_name: str):
    """With ``--model``, the study of ``--storage``/``--study`` where it is an SQLite file here, so
    that its data folder and artifact store are kept from outputs too; else None (a server is not
    asked, and a missing or unreadable study only means less is known)."""
    try:
        db = sqlite_path(storage_url)
        return open_study_readonly(storage_url, study_name) if db is not None and db.is_file() else None
    except Exception:  # noqa: BLE001 - best effort: predict needs no study
        return None


LABEL_FOLDERS = ("labelsTr", "labelsTs")  # nnU-Net's label folders: every file in them is a label
LABEL_ENDINGS = ("_gt", "_4d", "_mask", "_overlay")  # ACDC labels and cine, coursework masks, our own overlays


def is_label_file(path: Path) -> bool:
    """A file found in a folder that is no image to segment: a label volume (ACDC's ``_gt``, anything
    in nnU-Net's ``labelsTr/``), a 4-D cine (``_4d``), a coursework mask or an overlay picture."""
    stem = nifti_stem(path) if is_nifti(path) else path.stem
    return path.parent.name in LABEL_FOLDERS or stem.endswith(LABEL_ENDINGS)


def resolve_inputs(inputs: list[str]) -> tuple[list[Path], list[Path], list[Path]]:
    """PNG and NIfTI files named directly or found directly inside the named folders, and the
    label files skipped in those folders (``is_label_file``).

    Inside folders, hidden files and other file types are skipped; a named file must be one of the
    two kinds (it is segmented as named), and a folder must hold at least one image.
    """
    pngs: list[Path] = []
    volumes: list[Path] = []
    skipped: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = png_files(path) + sorted(p for p in path.iterdir() if is_nifti(p) and not p.name.startswith("."))
            labels = [p for p in found if is_label_file(p)]
            found = [p for p in found if not is_label_file(p)]
            if not found:
                what = f"only label files ({len(labels)})" if labels else "no PNG or NIfTI (.nii, .nii.gz) files"
                raise UsageError(f"{path}: folder holds {what}; give the folder of the images to segment")
            skipped += labels
            pngs += [p for p in found if not is_nifti(p)]
            volumes += [p for p in found if is_nifti(p)]
        elif path.is_file():
            if path.suffix.lower() == ".png":
                pngs.append(path)
            elif is_nifti(path):
                volumes.append(path)
            else:
                raise UsageError(f"{path}: not a PNG or NIfTI (.nii, .nii.gz) file")
        else:
            raise UsageError(f"{path}: no such file or folder")
    return pngs, volumes, skipped


def skipped_notes(skipped: list[Path]) -> list[str]:
    """One note counting the label and cine files left out of the folders given."""
    if not skipped:
        return []
    return [f"skipped {len(skipped)} label, cine or overlay file(s) in the input folders "
            f"(e.g. {skipped[0].name}); name a file to segment it anyway"]


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
            if seen[key].resolve() == path.resolve():  # named twice, or named and found in a folder named too
                same = "" if str(seen[key]) == str(path) else f" (as {seen[key]} too)"
                raise UsageError(f"{path}: given twice{same}; name each input once")
            raise UsageError(f"{path}: writes {key}, as {seen[key]} does; predict them into different --out folders")
        seen[key] = path


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
    if not pngs:  # (no segmenter either, where --export alone was asked for)
        return []
    written = []
    for batch in _batches(pngs, shapes, segmenter.batch_size):
        images = np.stack([read_image(p) for p in batch])  # (B, H, W) in [0, 1]
        masks = segmenter.predict(images)
        for path, image, mask in zip(batch, images, masks):
            write_mask(out / f"{path.stem}_mask.png", mask)  # each output whole or absent (data.files.output_file)
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

