"""Inputs checked, one line, no secret printed (docs/RELIABILITY.md, "One line, no secrets, inputs
checked"): voxel sizes and model values that cannot segment, messages in this tool's words, a
reader that closes the pipe, a dead worker's trial in ``status``, a rerun without ``--space``,
and no password on screen or in a printed command."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import optuna
import pytest
import sqlalchemy
import torch
from sqlalchemy.engine import make_url

from data import DataError, write_nnunet_phantom
from data.volumes import preprocess_volume
from model import SegNet, SegNetConfig
from sweep.cli import build_parser, main
from sweep.core import study as st
from sweep.core.records import StudyKey
from sweep.nn.model_file import ModelBundle, current_versions, save_bundle
from sweep.search.presets import preset
from tests.helpers import one_error_line, random_image, write_png

ROOT = Path(__file__).resolve().parents[1]
CONFIG = SegNetConfig(depth=2, base_width=4, convs_per_stage=(1, 1))
PASSWORD = "s3cret-pw-9"



def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sweep(*argv: str, cwd: Path, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweep", *argv], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, **kwargs)


# --- 12: a NIfTI whose header gives a voxel size of 0 ---------------------------------------------


def nifti_with_pixdim(path: Path, pixdim: tuple[float, float, float], shape=(24, 20, 3)) -> Path:
    """A small image volume whose header stores ``pixdim`` (its sform says 1.5 x 1.5 x 10 mm)."""
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    img = nib.Nifti1Image(np.random.default_rng(0).random(shape, dtype=np.float32), affine)
    img.header["pixdim"][1:4] = pixdim
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    with nib.openers.ImageOpener(str(path)) as f:  # stored as asked, before nibabel's own fixes on reading
        raw = nib.Nifti1Header.from_fileobj(f, check=False)["pixdim"][1:4]
    assert np.array_equal(raw, np.asarray(pixdim, np.float32), equal_nan=True)
    return path


@pytest.mark.parametrize("pixdim, shown", [((1.5, 0.0, 10.0), "pixdim[2] = 0"), ((1.5, 1.5, 0.0), "pixdim[3] = 0"),
                                           ((-1.5, 1.5, 10.0), "pixdim[1] = -1.5"),
                                           ((1.5, float("nan"), 10.0), "pixdim[2] = nan")])
def test_a_voxel_size_of_zero_is_refused_naming_the_file_and_pixdim(tmp_path, capfd, pixdim, shown):
    path = nifti_with_pixdim(tmp_path / "case_0000.nii.gz", pixdim)
    with pytest.raises(DataError) as info:
        preprocess_volume(path)  # was read as 1 mm (0) or 1.5 mm (-1.5) and resampled at that scale
    line = str(info.value)
    assert "\n" not in line and str(path) in line and shown in line, line
    assert "1.5 x 1.5 x 10 mm" in line  # what the sform says, for the header to be fixed
    assert "pixdim[1,2,3]" not in capfd.readouterr().err  # nibabel's own warning, printed twice before


def test_a_single_slice_keeps_its_unknown_thickness(tmp_path):
    """A 2-D file has no through-plane size: a pixdim[3] of 0 there is no fault."""
    path = nifti_with_pixdim(tmp_path / "one.nii.gz", (1.5, 1.5, 0.0), shape=(24, 20))
    images, _, volume = preprocess_volume(path)
    assert images.shape[0] == 1 and volume.spacing[:2] == (1.5, 1.5)


def test_run_on_a_volume_with_a_voxel_size_of_zero_is_one_line(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("SEGNET_CACHE_DIR", str(tmp_path / "cache"))
    root = write_nnunet_phantom(tmp_path / "nn", 4, n_test=0, size_range=(48, 56))
    bad = sorted((root / "imagesTr").iterdir())[1]
    source = nib.load(str(bad))
    affine = source.affine
    img = nib.Nifti1Image(np.asanyarray(source.dataobj), affine)
    img.header["pixdim"][1:4] = (0.0, *np.abs(np.diag(affine))[1:3])
    nib.save(img, str(bad))
    monkeypatch.chdir(tmp_path)
    capfd.readouterr()
    assert main(["run", "--data", str(root), "--trials", "1", "--epochs", "1", "--quiet"]) == 2
    err = capfd.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "pixdim[1] = 0" in err, err
    assert not (tmp_path / "studies.db").exists()


# --- 13: a model file whose values cannot segment -------------------------------------------------


def bundle(prep: dict | None = None, nan: bool = False) -> ModelBundle:
    torch.manual_seed(0)
    state = SegNet.from_config(CONFIG).state_dict()
    if nan:
        name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
        state[name][0, 0, 0, 0] = float("nan")
    return ModelBundle(members=[[state]], model_config=CONFIG.to_dict(), tta=False, largest_component=False,
                       preprocessing=prep or {"kind": "slices", "image_size": [32, 32]}, params={},
                       data_fingerprint="x", study="segnet", trial=0, versions=current_versions())


@pytest.mark.parametrize("spacing", [1e-4, 0.01, 500.0])
def test_a_target_spacing_no_scanner_gives_is_refused_before_predicting(tmp_path, capsys, spacing):
    model = save_bundle(bundle({"kind": "volumes", "target_spacing_mm": spacing, "slice_size": 64}), tmp_path / "m.pt")
    volume = nifti_with_pixdim(tmp_path / "in" / "case_0000.nii.gz", (1.5, 1.5, 10.0))
    assert main(["predict", "--model", str(model), str(volume), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert f"target_spacing_mm {spacing!r}" in line and "0.05-20 mm" in line, line
    assert not (tmp_path / "o" / "case.nii.gz").exists()


def test_nan_weights_are_refused_before_predicting(tmp_path, capsys):
    model = save_bundle(bundle(nan=True), tmp_path / "m.pt")
    image = write_png(tmp_path / "in" / "a.png", random_image(1, (32, 32)))
    assert main(["predict", "--model", str(model), str(image), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert str(model) in line and "NaN or infinite" in line and "seed 1, model 1" in line, line
    assert not (tmp_path / "o" / "a_mask.png").exists()  # all background, with exit 0, before


# --- 14: a reader that closes the pipe ------------------------------------------------------------


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["export", "--csv", "t.csv"], ["--help"]])
def test_output_cut_short_by_its_reader_ends_without_a_traceback(tmp_path, argv):
    """``status | head -1``: the reader went away before the output was written."""
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'studies.db'}", study_name="segnet", direction="maximize")
    proc = sweep(*argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # as `head -1` does once it has its line
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert proc.returncode in (0, 141), err  # 141: 128 + SIGPIPE, what a shell shows for `yes | head -1`


# --- 17: a rerun without --space ------------------------------------------------------------------


@pytest.mark.slow
def test_a_rerun_without_space_continues_the_studys_space(in_tmp, capsys):
    assert main(["run", "--trials", "1", "--epochs", "1", "--quiet", "--space", "local", "--enqueue", "small"]) == 0
    storage = "sqlite:///studies.db"
    recorded = optuna.load_study(study_name="segnet", storage=storage).user_attrs[StudyKey.SPACE]
    capsys.readouterr()
    assert main(["run", "--trials", "1", "--epochs", "1", "--quiet"]) == 0  # refused as "--space full" before
    assert "is complete" in capsys.readouterr().out
    assert main(["run", "--trials", "1", "--epochs", "1", "--quiet", "--space", "full"]) == 2  # typed: refused
    line = one_error_line(capsys)
    assert "--space full" in line and "--space local" in line
    assert optuna.load_study(study_name="segnet", storage=storage).user_attrs[StudyKey.SPACE] == recorded


def test_the_resume_command_leaves_space_to_the_study():
    from sweep.search.options import RunOptions, resume_command

    opts = RunOptions.from_args(build_parser().parse_args(["run", "--trials", "3"]))
    assert opts.space is None and "--space" not in resume_command(opts)


# --- 18: a dead worker's trial in status ----------------------------------------------------------


def test_status_says_a_trial_without_heartbeat_is_stale_and_changes_nothing(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    storage = st.make_storage(url)
    study = optuna.create_study(storage=storage, study_name="segnet", direction="maximize")
    trial = study.ask()
    trial.set_user_attr("worker", "box:4242")
    trial.set_user_attr("progress", {"epoch": 2, "epochs": 10, "seconds": 20.0, "last": 0.5, "best": 0.6})
    storage.record_heartbeat(trial._trial_id)
    capsys.readouterr()
    assert main(["status", "--storage", url]) == 0
    assert "~1m 20s left" in capsys.readouterr().out  # beating: running, with its time left
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as con:  # the worker was killed 5 minutes ago
        con.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-300 seconds')"))
    engine.dispose()
    before = digest(tmp_path / "studies.db")
    assert main(["status", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "stale: trial 0 on box:4242: no heartbeat for 5m 00s" in out and "the next run retries it" in out, out
    assert "left" not in out
    assert main(["status", "--json", "--storage", url]) == 0
    [running] = json.loads(capsys.readouterr().out)["running"]
    assert running["stale"] is True and running["remaining_s"] is None and running["heartbeat_age_s"] >= 290
    assert digest(tmp_path / "studies.db") == before  # status only reads
    assert optuna.load_study(study_name="segnet", storage=url).trials[0].state == optuna.trial.TrialState.RUNNING


# --- 20: messages in this tool's words, one line --------------------------------------------------


def test_a_partial_enqueue_names_what_is_missing_in_this_tools_words(in_tmp, capsys):
    assert main(["run", "--trials", "1", "--enqueue", '{"lr": 0.5}']) == 2
    line = one_error_line(capsys)
    assert "FixedTrial" not in line and "missing 14 of its 21 parameters: depth," in line, line  # (the 6 added later are off)
    assert "name a preset: original, small, acdc" in line
    assert main(["run", "--trials", "1", "--enqueue", json.dumps(preset("small", lr=0.5))]) == 2
    line = one_error_line(capsys)
    assert "lr 0.5 is outside 0.0001..0.01" in line and "FixedTrial" not in line and "distribution" not in line, line
    assert not (in_tmp / "studies.db").exists()


def test_a_study_name_longer_than_optunas_column_is_refused_before_the_server(in_tmp, capsys):
    # Nothing listens on port 1: the name is refused before any connection is tried.
    url = f"postgresql://u:{PASSWORD}@127.0.0.1:1/x"
    assert main(["run", "--trials", "1", "--study", "s" * 600, "--storage", url]) == 2
    line = one_error_line(capsys)
    assert "600 characters" in line and "512" in line and PASSWORD not in line, line


def test_the_same_file_given_twice_to_predict_is_named_so(tmp_path, capsys):
    model = save_bundle(bundle(), tmp_path / "m.pt")
    image = write_png(tmp_path / "in" / "a.png", random_image(1, (32, 32)))
    assert main(["predict", "--model", str(model), str(image), str(image), "--out", str(tmp_path / "o")]) == 2
    assert one_error_line(capsys) == f"error: {image}: given twice; name each input once"
    other = tmp_path / "in" / ".." / "in" / "a.png"  # found in the folder, and named by another path
    assert main(["predict", "--model", str(model), str(image.parent), str(other), "--out", str(tmp_path / "o")]) == 2
    assert one_error_line(capsys) == f"error: {other}: given twice (as {image} too); name each input once"
    assert not (tmp_path / "o").exists()


def test_an_invalid_bucket_name_is_one_line(in_tmp, capsys):
    pytest.importorskip("boto3")
    assert main(["run", "--trials", "1", "--artifacts", "s3://Bad_Bucket!"]) == 2
    line = one_error_line(capsys)
    assert "not a bucket name" in line and "regex" not in line
    assert not (in_tmp / "studies.db").exists()


# --- 11, 20: no password printed; the printed next step runs as printed ----------------------------


def test_a_printed_command_refers_to_a_password_by_a_variable():
    url = f"postgresql://u:{PASSWORD}@db:5432/x"
    for line in (st.sweep_command("best --evaluate", url, "s 1"), st.command_line("run", f"--storage={url}")):
        assert PASSWORD not in line and '"$SEGNET_STORAGE"' in line
        assert line.endswith("# SEGNET_STORAGE: your --storage URL (not printed: it holds a password)")
    # Without a password the URL itself is printed, as before.
    assert st.sweep_command("status", "sqlite:///other.db", "s") == "python -m sweep status --storage sqlite:///other.db --study s"


def test_a_url_that_does_not_parse_is_shown_without_its_password(capsys):
    assert main(["status", "--storage", f"postgresql://u:{PASSWORD}@db:port/x"]) == 2
    line = one_error_line(capsys)
    assert PASSWORD not in line and "u:***@db:port" in line, line
    assert main(["status", "--storage", ""]) == 2  # "$SEGNET_STORAGE" not exported: said so
    assert "SEGNET_STORAGE" in one_error_line(capsys)


def test_the_printed_status_command_runs_with_the_variable_exported(tmp_path, postgres_url):
    """The shell expands ``"$SEGNET_STORAGE"``: the line runs as printed, pasted whole, comment and all."""
    url = make_url(postgres_url).set(password=PASSWORD).render_as_string(hide_password=False)  # (trust: any will do)
    name = f"pw{uuid.uuid4().hex[:10]}"
    optuna.create_study(study_name=name, storage=url, direction="maximize")
    try:
        line = st.sweep_command("status", url, name)
        assert PASSWORD not in line and '"$SEGNET_STORAGE"' in line
        bin_dir = str(Path(sys.executable).parent)  # the `python` of the line is this one
        result = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PYTHONPATH": str(ROOT), "SEGNET_STORAGE": url,
                                     "PATH": f"{bin_dir}:{os.environ['PATH']}"})
        assert result.returncode == 0, result.stderr
        assert f"study {name!r} in " in result.stdout and PASSWORD not in result.stdout + result.stderr
    finally:
        optuna.delete_study(study_name=name, storage=url)


@pytest.mark.slow
def test_run_and_dashboard_print_no_password(tmp_path, postgres_url):
    url = make_url(postgres_url).set(password=PASSWORD).render_as_string(hide_password=False)
    name = f"pw{uuid.uuid4().hex[:10]}"
    try:
        proc = sweep("run", "--trials", "1", "--epochs", "1", "--enqueue", "small", "--storage", url, "--study", name,
                     cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert PASSWORD not in out + err  # the banner ("study ... in URL") printed it before
        assert f"study {name!r} in postgresql://postgres:***@" in err
        [hint] = [line for line in out.splitlines() if line.startswith("next: ")]
        assert hint == f"next: {st.sweep_command('best --evaluate', url, name)}"
        argv = shlex.split(hint[len("next: "):].replace('"$SEGNET_STORAGE"', shlex.quote(url)), comments=True)
        args = build_parser().parse_args(argv[3:])  # with the variable exported: the study's own storage
        assert (args.command, args.evaluate, args.storage, args.study) == ("best", True, url, name)

        proc = sweep("run", "--trials", "1", "--epochs", "1", "--storage", url, "--study", name, "--json",
                     cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert PASSWORD not in out + err and "***" in json.loads(out)["storage"]

        proc = sweep("dashboard", "--port", "0", "--storage", url, cwd=tmp_path, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
        try:
            first = proc.stdout.readline()
        finally:
            proc.terminate()
            proc.communicate(timeout=60)
        assert "optuna-dashboard: http://" in first and PASSWORD not in first and "***" in first, first
    finally:
        if name in [s.study_name for s in optuna.get_all_study_summaries(url)]:
            optuna.delete_study(study_name=name, storage=url)
